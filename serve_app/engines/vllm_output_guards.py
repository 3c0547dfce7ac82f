"""The guards on constrained output as vLLM's logits processor: the repetition guard (`repetition_guard.py`)
and the closing pressure (`closing_pressure.py`). vLLM loads it by name in its EngineCore (`VLLMEngine` lists
it in `logits_processors`) and calls it on every step of the batch, after the grammar's mask; it acts on the
rows whose `SamplingParams.extra_args` carry `GUARD_ARG` or `CLOSING_ARG`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from vllm import SamplingParams
from vllm.config import VllmConfig
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from serve_app.engines.closing_pressure import CLOSING_ARG, JsonScan, closing_bonus, closing_tokens
from serve_app.engines.repetition_guard import GUARD_ARG, repetition_penalties, run_breakers, token_texts


@dataclass
class _Row:
    """A guarded request in the batch: its settings, and its output tokens (vLLM's live list)."""

    output_tokens: list[int]
    guard: tuple[float, float, int] | None
    closing: tuple[float, float] | None
    max_tokens: int | None
    scan: JsonScan = field(default_factory=JsonScan)
    scanned: int = 0  # output tokens the scan has read

    def scan_to_end(self, texts: list[str]) -> None:
        """Reads the tokens sampled since the last step (up to a placeholder vLLM has not filled in yet)."""
        tokens = self.output_tokens
        while self.scanned < len(tokens) and 0 <= tokens[self.scanned] < len(texts):
            self.scan.feed(texts[tokens[self.scanned]])
            self.scanned += 1


class OutputGuardsProcessor(LogitsProcessor):
    """vLLM's side: per batch row, the settings and the live output tokens of a guarded request."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        extra = sampling_params.extra_args or {}
        if (guard := extra.get(GUARD_ARG)) is not None:
            multiplier, base, allowed_length = guard
            if multiplier < 0 or base < 1 or allowed_length < 1:
                raise ValueError(f"{GUARD_ARG} needs multiplier >= 0, base >= 1, allowed_length >= 1: {guard}")
        if (closing := extra.get(CLOSING_ARG)) is not None:
            start, strength = closing
            if not 0 <= start < 1 or strength < 0:
                raise ValueError(f"{CLOSING_ARG} needs 0 <= start < 1 and strength >= 0: {closing}")

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        from vllm.tokenizers import cached_tokenizer_from_config

        tokenizer = cached_tokenizer_from_config(vllm_config.model_config)
        self._texts = token_texts(tokenizer, vllm_config.model_config.get_vocab_size())
        self._breaks_run = run_breakers(self._texts)
        ends_string, closes_container = closing_tokens(self._texts)
        self._ends_string = torch.tensor(ends_string, dtype=torch.float32, device=device)
        self._closes_container = torch.tensor(closes_container, dtype=torch.float32, device=device)
        self._rows: dict[int, _Row] = {}

    def is_argmax_invariant(self) -> bool:
        return False  # it exists to change the choice

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self._rows.pop(index, None)
        for index, params, _, output_tokens in batch_update.added:
            extra = (params.extra_args or {}) if params is not None else {}
            guard, closing = extra.get(GUARD_ARG), extra.get(CLOSING_ARG)
            if guard is None and closing is None:
                self._rows.pop(index, None)
                continue
            self._rows[index] = _Row(
                output_tokens,
                None if guard is None else (float(guard[0]), float(guard[1]), int(guard[2])),
                None if closing is None else (float(closing[0]), float(closing[1])),
                params.max_tokens if params is not None else None,
            )
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
        for index, row in self._rows.items():
            if row.guard is not None:
                for token, penalty in repetition_penalties(row.output_tokens, self._breaks_run, *row.guard).items():
                    rows.append(index)
                    columns.append(token)
                    amounts.append(-penalty)
            if row.closing is not None:
                row.scan_to_end(self._texts)  # every step, so that each token is read once
                bonus = closing_bonus(len(row.output_tokens), row.max_tokens, *row.closing)
                if bonus > 0 and not row.scan.escaped:
                    closers = self._ends_string if row.scan.in_string else self._closes_container
                    logits[index] += bonus * closers.to(logits.dtype)
        if rows:
            where = (torch.tensor(rows, device=logits.device), torch.tensor(columns, device=logits.device))
            logits.index_put_(where, torch.tensor(amounts, dtype=logits.dtype, device=logits.device), accumulate=True)
        return logits
