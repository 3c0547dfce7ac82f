"""vLLM in-process: `AsyncLLM` (vLLM's V1 async engine), no HTTP server, no subprocess of ours.

vLLM starts its own EngineCore process; with tensor/pipeline parallelism > 1 it uses the Ray executor,
which places its workers in the placement group the Serve replica was started in.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal, cast

from serve_app.config import ClosingPressure, ModelTask, RepetitionGuard, VLLMEngineArgs
from serve_app.engines.base import (
    EmbeddingShape,
    Engine,
    EngineLost,
    GenerationDelta,
    GenerationRequest,
    SamplingOptions,
    TokenChoice,
    TokenLogprob,
    token_bytes,
)
from serve_app.engines.cpu_dtype import fastest_cpu_dtype, read_cpu_flags
from serve_app.engines.cpu_threads import BIND_VARIABLE, cpu_thread_settings
from serve_app.engines.stall_watch import StallWatch
from serve_app.protocol.errors import OpenAIError, invalid_request, replica_lost
from serve_app.reasoning import VLLM_REASONING_PARSERS

logger = logging.getLogger("agent_serve.engine")

STALL_CHECK_INTERVAL_S = 1.0

GUARDS_PROCESSOR = "serve_app.engines.vllm_output_guards:OutputGuardsProcessor"
"""Loaded by vLLM in its EngineCore, by name."""


class VLLMEngine(Engine):
    def __init__(
        self,
        model_path: Path,
        args: VLLMEngineArgs,
        served_model_name: str,
        reasoning_parser: str | None = None,
        task: ModelTask = "generate",
        compact_json: bool = True,
        repetition_guard: RepetitionGuard | None = None,
        closing_pressure: ClosingPressure | None = None,
        num_cpus: float | Literal["auto"] = 1.0,
    ) -> None:
        self._model_path = model_path
        self._num_cpus = num_cpus  # what Ray reserved for the replica: on a CPU, the engine's threads
        self._args = args
        self._task = task
        self._compact_json = compact_json
        self._guard_args = (
            None
            if repetition_guard is None
            else [repetition_guard.multiplier, repetition_guard.base, repetition_guard.allowed_length]
        )
        # The scan that tells an open string from the rest starts at the answer's first token: after reasoning,
        # where the constraint starts, it would not know where the JSON began.
        self._closing_args = (
            None
            if closing_pressure is None or reasoning_parser is not None
            else [closing_pressure.start, closing_pressure.strength]
        )
        self._served_model_name = served_model_name
        self._reasoning_parser = reasoning_parser
        self._llm: Any = None
        self._stall: StallWatch | None = None
        self._stall_task: asyncio.Task[None] | None = None

    def engine_args(self) -> dict[str, Any]:
        args = self._args
        kwargs: dict[str, Any] = {
            "model": str(self._model_path),
            "served_model_name": self._served_model_name,
            "dtype": self._dtype(),
            "enforce_eager": args.enforce_eager,
            "tensor_parallel_size": args.tensor_parallel_size,
            "pipeline_parallel_size": args.pipeline_parallel_size,
            # Our logs carry the request lines; vLLM's per-request logging would double them.
            "enable_log_requests": False,
            # The grammar backend our schema checks compile with (structured_output.py), whose compact mode
            # leaves no free whitespace in constrained JSON.
            "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": self._compact_json},
        }
        optional = {
            "max_model_len": args.max_model_len,
            "gpu_memory_utilization": args.gpu_memory_utilization,
            "max_num_seqs": args.max_num_seqs,
            "max_num_batched_tokens": args.max_num_batched_tokens,
            "long_prefill_token_threshold": args.long_prefill_token_threshold,
        }
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        if (self._guard_args is not None or self._closing_args is not None) and self._task == "generate":
            kwargs["logits_processors"] = [GUARDS_PROCESSOR]
        if args.world_size > 1:
            kwargs["distributed_executor_backend"] = "ray"
        if self._task == "embed":
            kwargs["runner"] = "pooling"
        if self._reasoning_parser is not None:  # JSON constraints then start after the reasoning ends
            kwargs["reasoning_parser"] = VLLM_REASONING_PARSERS[self._reasoning_parser]
        kwargs.update(args.extra)
        return kwargs

    def _dtype(self) -> str:
        """The configured dtype; `auto` on a CPU: the fastest there (`cpu_dtype.py`)."""
        from vllm.platforms import current_platform

        if self._args.dtype != "auto" or not current_platform.is_cpu():
            return self._args.dtype
        dtype, why = fastest_cpu_dtype(read_cpu_flags())
        logger.info("model %r runs in %s: %s (set engine_args.dtype to choose)", self._served_model_name, dtype, why)
        return dtype

    async def start(self) -> None:
        from vllm.platforms import current_platform

        if current_platform.is_cpu():  # read by the EngineCore and its worker, which inherit this environment
            if self._args.kv_cache_space_gib is not None:
                os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(self._args.kv_cache_space_gib)
            if threads := cpu_thread_settings(self._num_cpus, os.environ):
                os.environ.update(threads)
                why = f"{threads['OMP_NUM_THREADS']} thread(s), the replica's Ray CPUs, placed by the OS"
            else:
                why = f"vLLM's binding, {BIND_VARIABLE}={os.environ.get(BIND_VARIABLE, 'auto')!r}"
            logger.info("model %r computes on the CPU with %s", self._served_model_name, why)
        from vllm import AsyncEngineArgs
        from vllm.config import StructuredOutputsConfig
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

        from serve_app.engines.vllm_heartbeat import heartbeat_logger

        # vLLM picks scheduler defaults (batched tokens, sequences per step) by usage context: we serve the
        # OpenAI API, so we take the defaults `vllm serve` takes, and the same engine arguments mean the
        # same engine.
        kwargs = self.engine_args()
        # A plain mapping in `engine_args` (and in a config's `extra`); vLLM takes its config object here.
        kwargs["structured_outputs_config"] = StructuredOutputsConfig(**kwargs["structured_outputs_config"])
        args = AsyncEngineArgs(**kwargs)
        # Opt-in: vLLM's metrics (queue, KV cache use, token latencies) through Ray's metrics agent, which
        # the cluster's Prometheus scrapes with Serve's. Recording them through Ray costs CPU per token.
        loggers: list[Any] = [RayPrometheusStatLogger] if self._args.ray_metrics else []
        if self._args.stall_timeout_s is not None:
            self._stall = StallWatch(self._args.stall_timeout_s)
            loggers.append(heartbeat_logger(self._stall.moved))  # every step, a prefill's too, is progress
        self._llm = AsyncLLM.from_engine_args(
            args, usage_context=UsageContext.OPENAI_API_SERVER, stat_loggers=loggers or None
        )
        self._supported_tasks = await self._llm.get_supported_tasks()
        if self._stall is not None:
            self._stall_task = asyncio.create_task(self._end_a_stalled_engine(self._stall))

    async def _end_a_stalled_engine(self, stall: StallWatch) -> None:
        """A hung EngineCore is killed: vLLM then reports it dead, and what follows is an engine's death
        (the requests end with 503s, the replica leaves and is replaced)."""
        while not stall.stalled(busy=self.num_unfinished_requests() > 0):
            await asyncio.sleep(STALL_CHECK_INTERVAL_S)
            if self.lost():
                return
        manager = self._llm.engine_core.resources.engine_manager
        processes = getattr(manager, "processes", [])
        logger.error(
            "the engine of model %r made no progress for %s s with %d requests in it: killing its EngineCore %s",
            self._served_model_name,
            self._args.stall_timeout_s,
            self.num_unfinished_requests(),
            [process.pid for process in processes],
        )
        for process in processes:
            os.kill(process.pid, signal.SIGKILL)  # also ends a stopped process

    @property
    def max_model_len(self) -> int:
        return int(self._llm.model_config.max_model_len)

    def num_unfinished_requests(self) -> int:
        return int(self._llm.output_processor.get_num_unfinished_requests())

    def refusal(self, request: GenerationRequest) -> OpenAIError | None:
        """vLLM's own checks of the request (sampling parameters against the model, the grammar, the
        prompt), run now by the code `generate` will run, so that what vLLM refuses is a 400 before the
        request waits or streams."""
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import TokensPrompt

        if self.lost():  # refused before the stream starts: a 503 the client retries, elsewhere
            return replica_lost()
        prompt = TokensPrompt(prompt_token_ids=request.prompt_token_ids)
        try:
            params = _sampling_params(request.sampling, self._guard_args, self._closing_args)
            self._llm.input_processor.process_inputs(
                request.request_id, prompt, params, supported_tasks=self._supported_tasks
            )
        except (ValueError, VLLMClientError) as exc:  # the request's fault, as vLLM tells it (some name the field)
            return invalid_request(f"The engine refused this request: {exc}", param=getattr(exc, "parameter", None))
        return None

    def lost(self) -> bool:
        """vLLM's monitor thread marks the engine dead the moment the EngineCore process exits."""
        return self._llm is not None and bool(self._llm.engine_core.resources.engine_dead)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            async for delta in self._generate(request):
                yield delta
        except EngineDeadError as exc:
            raise EngineLost(f"the EngineCore of model {self._served_model_name!r} died") from exc

    async def _generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        from vllm.inputs import TokensPrompt

        completion_tokens: dict[int, int] = {}
        prompt = TokensPrompt(prompt_token_ids=request.prompt_token_ids)
        # Leaving this loop early (client gone) closes vLLM's generator, which aborts the request.
        async for output in self._llm.generate(
            prompt,
            _sampling_params(request.sampling, self._guard_args, self._closing_args),
            request_id=request.request_id,
        ):
            for choice in output.outputs:
                if choice.finish_reason == "abort":
                    raise RuntimeError("the engine aborted the request")
                count = completion_tokens[choice.index] = completion_tokens.get(choice.index, 0) + len(choice.token_ids)
                logprobs = _token_logprobs(choice.token_ids, choice.logprobs, request.sampling.logprobs)
                if logprobs and choice.finish_reason == "stop" and not isinstance(choice.stop_reason, str):
                    # It ended on a stop token (the end of the turn, `<|im_end|>`): a token the answer's text
                    # leaves out, and so does OpenAI's `logprobs.content`, whose tokens spell the content.
                    logprobs = logprobs[:-1]
                yield GenerationDelta(
                    text=choice.text,
                    completion_tokens=count,
                    finish_reason=choice.finish_reason if choice.finish_reason in ("stop", "length") else None,
                    index=choice.index,
                    logprobs=logprobs,
                    cached_tokens=output.num_cached_tokens or 0,
                )

    def embedding_shape(self) -> EmbeddingShape:
        config = self._llm.model_config
        allowed = config.matryoshka_dimensions
        return EmbeddingShape(
            int(config.embedding_size), bool(config.is_matryoshka), tuple(allowed) if allowed else None
        )

    async def embed(self, request_id: str, prompts: list[list[int]], dimensions: int | None) -> list[list[float]]:
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        async def one(index: int, token_ids: list[int]) -> list[float]:
            params = PoolingParams(task="embed", dimensions=dimensions)
            async for output in self._llm.encode(
                TokensPrompt(prompt_token_ids=token_ids), params, f"{request_id}-{index}"
            ):
                if output.finished:
                    return cast(list[float], output.outputs.data.tolist())
            raise RuntimeError("the engine finished without an embedding")

        return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))

    async def check_health(self) -> None:
        await self._llm.check_health()

    async def shutdown(self) -> None:
        if self._stall_task is not None:
            self._stall_task.cancel()
        if self._llm is not None:
            self._llm.shutdown()


def _sampling_params(
    sampling: SamplingOptions, guard_args: list[float] | None, closing_args: list[float] | None
) -> Any:
    """vLLM's parameters. A constrained request carries the repetition guard's settings (`guard_args`); one
    that is JSON from its first token (a JSON schema, not a structural tag), the closing pressure's."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    from serve_app.engines.closing_pressure import CLOSING_ARG
    from serve_app.engines.repetition_guard import GUARD_ARG

    optional: dict[str, Any] = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "min_p": sampling.min_p,
        "repetition_penalty": sampling.repetition_penalty,
    }
    if sampling.json_schema is not None:
        optional["structured_outputs"] = StructuredOutputsParams(json=sampling.json_schema)
    elif sampling.structural_tag is not None:
        optional["structured_outputs"] = StructuredOutputsParams(structural_tag=sampling.structural_tag)
    guards: dict[str, list[float]] = {}
    if "structured_outputs" in optional and guard_args is not None:
        guards[GUARD_ARG] = guard_args
    if sampling.json_schema is not None and closing_args is not None:
        guards[CLOSING_ARG] = closing_args
    if guards:
        optional["extra_args"] = guards
    return SamplingParams(
        n=sampling.n,
        max_tokens=sampling.max_tokens,
        stop=list(sampling.stop) or None,
        seed=sampling.seed,
        presence_penalty=sampling.presence_penalty,
        frequency_penalty=sampling.frequency_penalty,
        logit_bias=sampling.logit_bias or None,
        logprobs=sampling.logprobs,
        min_tokens=sampling.min_tokens,
        ignore_eos=sampling.ignore_eos,
        skip_special_tokens=sampling.skip_special_tokens,
        output_kind=RequestOutputKind.DELTA,
        **{k: v for k, v in optional.items() if v is not None},
    )


def _token_logprobs(token_ids: Any, per_token: Any, top: int | None) -> list[TokenLogprob] | None:
    """vLLM's {token_id: Logprob(logprob, rank, decoded_token)} per position, as plain data.

    vLLM adds the sampled token to the top-`top` candidates when it ranks lower, so the list is cut to `top`.
    """
    if per_token is None or top is None:
        return None
    result = []
    for token_id, candidates in zip(token_ids, per_token, strict=False):
        ranked = sorted(candidates.values(), key=lambda c: c.rank)
        result.append(TokenLogprob(_choice(candidates[token_id]), [_choice(c) for c in ranked[:top]]))
    return result


def _choice(candidate: Any) -> TokenChoice:
    text = candidate.decoded_token or ""
    return TokenChoice(text, max(float(candidate.logprob), -9999.0), token_bytes(text))
