"""The repetition guard (`repetition_guard.py`) as vLLM's logits processor: vLLM loads it by name in its
EngineCore (`VLLMEngine` lists it in `logits_processors`) and calls it on every step of the batch, after the
grammar's mask; it acts on the rows whose `SamplingParams.extra_args` carry `GUARD_ARG`."""

from __future__ import annotations

import torch
from vllm import SamplingParams
from vllm.config import VllmConfig
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from serve_app.engines.repetition_guard import GUARD_ARG, repetition_penalties, run_breakers


class RepetitionGuardProcessor(LogitsProcessor):
    """vLLM's side: per batch row, the settings and the live output tokens of a guarded request."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        settings = (sampling_params.extra_args or {}).get(GUARD_ARG)
        if settings is None:
            return
        multiplier, base, allowed_length = settings
        if multiplier < 0 or base < 1 or allowed_length < 1:
            raise ValueError(f"{GUARD_ARG} needs multiplier >= 0, base >= 1, allowed_length >= 1: {settings}")

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        from vllm.tokenizers import cached_tokenizer_from_config

        tokenizer = cached_tokenizer_from_config(vllm_config.model_config)
        self._breaks_run = run_breakers(tokenizer, vllm_config.model_config.get_vocab_size())
        self._rows: dict[int, tuple[tuple[float, float, int], list[int]]] = {}

    def is_argmax_invariant(self) -> bool:
        return False  # it exists to change the choice

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self._rows.pop(index, None)
        for index, params, _, output_tokens in batch_update.added:
            settings = (params.extra_args or {}).get(GUARD_ARG) if params is not None else None
            if settings is None:
                self._rows.pop(index, None)
            else:
                multiplier, base, allowed_length = settings
                self._rows[index] = ((float(multiplier), float(base), int(allowed_length)), output_tokens)
        for a, b, direction in batch_update.moved:
            row_a, row_b = self._rows.pop(a, None), self._rows.pop(b, None)
            if row_a is not None:
                self._rows[b] = row_a
            if row_b is not None and direction == MoveDirectionality.SWAP:
                self._rows[a] = row_b

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        rows: list[int] = []
        columns: list[int] = []
        amounts: list[float] = []
        for index, ((multiplier, base, allowed_length), output_tokens) in self._rows.items():
            penalties = repetition_penalties(output_tokens, self._breaks_run, multiplier, base, allowed_length)
            for token, penalty in penalties.items():
                rows.append(index)
                columns.append(token)
                amounts.append(penalty)
        if rows:
            where = (torch.tensor(rows, device=logits.device), torch.tensor(columns, device=logits.device))
            logits.index_put_(where, -torch.tensor(amounts, dtype=logits.dtype, device=logits.device), accumulate=True)
        return logits
