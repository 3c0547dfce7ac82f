"""Application configuration: pydantic models loaded from the `args` of a Serve config file.

Every model forbids unknown keys, so a typo in YAML is an error naming the key instead of a setting
that is silently ignored. Host and port are Serve's own `http_options` in the same YAML file; they are
not repeated here. The field descriptions are the configuration reference: docs/configuration.md is
generated from them (`make docs`, serve_app/config_reference.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_CACHE_DIR = Path(os.environ.get("AGENT_SERVE_CACHE", Path.home() / ".cache" / "agent-serve"))


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AutoscalingOptions(StrictModel):
    """Replica autoscaling. Engine deployments scale on their engine's queue (waiting + running requests,
    reported by each replica, plus requests held before any replica took them); the ingress and the
    post-processing deployments on their ongoing requests. See docs/autoscaling.md."""

    min_replicas: int = Field(
        1, ge=0, description="Fewest replicas; 0 scales to zero when idle (the next request is held while one starts)."
    )
    max_replicas: int = Field(4, ge=1, description="Most replicas.")
    initial_replicas: int | None = Field(None, ge=0, description="Replicas at deploy time; none: `min_replicas`.")
    target: float = Field(
        8.0, gt=0, description="Per replica: engine queue depth (engines) or ongoing requests (the others)."
    )
    upscale_delay_s: float = Field(5.0, ge=0, description="The load must stay above target this long to add replicas.")
    downscale_delay_s: float = Field(
        120.0, ge=0, description="The load must stay below target this long to remove replicas."
    )
    downscale_to_zero_delay_s: float | None = Field(
        None, ge=0, description="Idle time before the last replica goes (`min_replicas: 0`); none: `downscale_delay_s`."
    )
    metrics_interval_s: float = Field(2.0, gt=0, description="How often each replica reports its load.")
    look_back_period_s: float = Field(10.0, gt=0, description="The window the reported load is averaged over.")

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingOptions:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        initial = self.initial_replicas
        if initial is not None and not self.min_replicas <= initial <= self.max_replicas:
            raise ValueError(f"initial_replicas ({initial}) must lie between min_replicas and max_replicas")
        return self


ModelTask = Literal["generate", "embed"]
PlacementStrategy = Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]


def machine_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may use, as Ray counts a node's: its CPU affinity, capped by a cgroup's CPU quota
    (a container's `--cpus`)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = None
    try:
        limit, period = (cgroup / "cpu.max").read_text().split()  # cgroup v2: "max 100000" or "200000 100000"
        quota = None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        try:  # cgroup v1
            limit_us = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
            period_us = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
            quota = limit_us / period_us if limit_us > 0 else None
        except (OSError, ValueError):
            pass
    return count if quota is None else max(1, min(count, int(quota)))


class DeploymentOptions(StrictModel):
    """Ray Serve options for one deployment: a fixed `num_replicas`, or `autoscaling` bounds."""

    num_replicas: int = Field(1, ge=1, description="Fixed number of replicas (or set `autoscaling`, not both).")
    autoscaling: AutoscalingOptions | None = Field(None, description="Replicas follow the load between bounds.")
    num_cpus: Annotated[float, Field(ge=0)] | Literal["auto"] = Field(
        1.0,
        description=(
            "Ray CPUs per replica; on a CPU, an engine computes with this many threads (at least one), placed by "
            "the operating system. `auto`: the CPUs of the machine the application is built on less one, and the "
            "engine binds its threads as vLLM does for a lone engine: for a model served from one machine "
            "(docs/deployment.md#cpu-threads-of-an-engine)."
        ),
    )
    num_gpus: float = Field(
        0.0, ge=0, description="Ray GPUs per replica (tensor-parallel engines reserve theirs in a placement group)."
    )
    max_ongoing_requests: int = Field(
        64,
        ge=1,
        description=(
            "Requests one replica accepts at once; more wait at the caller's handle. On an engine deployment: "
            "generations it runs at once (each prompt × `n` of a request counts); more wait in the replica, "
            "already judged, up to the model's `max_queued_requests`."
        ),
    )
    max_queued_requests: int | None = Field(
        None,
        ge=0,
        description=(
            "Requests that may wait at the callers for a replica of this deployment (Serve's "
            "`max_queued_requests`); more are refused at once with 503 and `Retry-After`. None: no bound. "
            "Engines bound their waiting with the model's `max_queued_requests` instead; this one applies to "
            "them only while no replica is up."
        ),
    )
    graceful_shutdown_timeout_s: float = Field(
        600.0, ge=0, description="A replica being removed finishes its requests for up to this long (long streams)."
    )
    accelerator_type: str | None = Field(
        None, description="Ray accelerator type the replica (and its GPU bundles) must run on, e.g. H100, A10G."
    )
    placement_strategy: PlacementStrategy = Field(
        "PACK",
        description=(
            "Tensor/pipeline-parallel engines: how the GPU bundles spread over nodes. PACK fills one node "
            "first and spans nodes only when it must; STRICT_PACK never spans; SPREAD/STRICT_SPREAD spread."
        ),
    )

    @property
    def reserved_cpus(self) -> float:
        """What Ray reserves for a replica: `num_cpus`, `auto` resolved on this machine (the application's
        build) to its CPUs less one, left to the ingress, HAProxy and Ray."""
        return float(max(1, machine_cpus() - 1)) if self.num_cpus == "auto" else self.num_cpus

    @model_validator(mode="after")
    def _replicas_one_way(self) -> DeploymentOptions:
        if self.autoscaling is not None and "num_replicas" in self.model_fields_set:
            raise ValueError("set either num_replicas or autoscaling, not both")
        return self


class VLLMEngineArgs(StrictModel):
    """The vLLM engine arguments we expose by name; `extra` passes anything else verbatim."""

    max_model_len: int | None = Field(None, ge=16, description="Context window in tokens; none: the model's own.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description=(
            "Weights and activations. `auto`: on a GPU the model's own; on a CPU bfloat16 where the CPU computes it "
            "natively (AVX512-BF16, AMX, ARM BF16), else float32 (bfloat16 emulated is ~4x slower to prefill)."
        ),
    )
    enforce_eager: bool = Field(
        False, description="Skip torch.compile and CUDA graphs: a faster start, a slower decode."
    )
    tensor_parallel_size: int = Field(
        1,
        ge=1,
        description=(
            "Above 1 (or with `pipeline_parallel_size`), vLLM's Ray executor runs the workers in a placement group "
            "of one GPU bundle per worker (the replay engine reserves the same group)."
        ),
    )
    pipeline_parallel_size: int = Field(1, ge=1, description="Pipeline stages; workers = tensor × pipeline.")
    kv_cache_space_gib: int | None = Field(
        None, ge=1, description="CPU only: KV cache size in whole GiB (`VLLM_CPU_KVCACHE_SPACE`); none: vLLM's."
    )
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="GPU only: share of GPU memory vLLM may take; none: vLLM's."
    )
    max_num_seqs: int | None = Field(None, ge=1, description="Sequences decoded together at most; none: vLLM's.")
    max_num_batched_tokens: int | None = Field(
        None,
        ge=16,
        description=(
            "Tokens one engine step computes at most: a long prompt is prefilled in chunks of this size, and every "
            "running stream waits for each chunk. Smaller: streams stall less and prompts that arrive together "
            "finish one after another instead of together; larger: a lone long prompt is faster. None: vLLM's "
            "(2048 on a CPU)."
        ),
    )
    long_prefill_token_threshold: int | None = Field(
        None,
        ge=1,
        description=(
            "A prompt's share of one engine step at most, while other requests run or wait. Unset, a long uncached "
            "prompt (a new agent session's first turn) takes whole steps until it is computed, and the next turns "
            "of the conversations already on the replica wait for all of it; set (half the step budget, say), they "
            "are computed beside it, and the long prompt takes longer. Below `max_num_batched_tokens`. None: "
            "vLLM's (no cap)."
        ),
    )
    stall_timeout_s: float | None = Field(
        120,
        gt=0,
        description=(
            "A hung engine: with requests in it and no step done for this long (a long prompt's prefill steps "
            "count, tokens or not), its EngineCore is killed, the requests end with 503s and the replica is "
            "replaced. Longer than the slowest engine step. None: no watch."
        ),
    )
    ray_metrics: bool = Field(
        False,
        description=(
            "Export vLLM's engine metrics to Prometheus through Ray's metrics agent. Off by default: it costs "
            "CPU per token (ITL p50 +12.9 ms at concurrency 1 on the 2-core benchmark machine)."
        ),
    )
    extra: dict[str, Any] = Field(default_factory=dict, description="More AsyncEngineArgs fields, verbatim.")

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @model_validator(mode="after")
    def _threshold_below_the_budget(self) -> VLLMEngineArgs:
        threshold, budget = self.long_prefill_token_threshold, self.max_num_batched_tokens
        if threshold is not None and budget is not None and threshold >= budget:
            raise ValueError(
                f"long_prefill_token_threshold ({threshold}) is not below max_num_batched_tokens ({budget}): "
                "a step never holds more than that, so it would cap nothing"
            )
        return self


class ReplayEngineArgs(StrictModel):
    """The deterministic test engine (`engine: replay`, never the default): scripted text through the model's
    real tokenizer, for tests and overhead benchmarks. The script format: docs/deployment.md."""

    script: Path = Field(description="The replay script (YAML or JSON): which text answers which request.")
    max_model_len: int = Field(8192, ge=16, description="Context window the replay engine enforces.")
    token_delay_s: float | None = Field(None, ge=0, description="Overrides the script's delay.")


class RepetitionGuard(StrictModel):
    """The penalty on a constrained value that repeats itself (`serve_app/engines/repetition_guard.py`): a
    token extending a repeat of `k + 1` tokens inside one value loses `multiplier * base ** (k -
    allowed_length)` from its logit once `k >= allowed_length`."""

    multiplier: float = Field(0.8, ge=0, description="The penalty of the shortest repeat it acts on.")
    base: float = Field(1.75, ge=1, description="How fast the penalty grows with each more token repeated.")
    allowed_length: int = Field(3, ge=1, description="Repeats of up to this many tokens are free.")


class ClosingPressure(StrictModel):
    """The push to close a constrained answer running out of its token budget
    (`serve_app/engines/closing_pressure.py`): once it has used `start` of its `max_tokens`, a token closing
    the open string, object or array gains up to `strength` on its logit, growing linearly to the cap."""

    start: float = Field(0.5, ge=0, lt=1, description="The share of `max_tokens` used before the pressure begins.")
    strength: float = Field(10.0, ge=0, description="The logit bonus of a closing token at the cap.")


class RoutingOptions(StrictModel):
    """How the callers of an engine deployment pick one of its replicas (docs/routing.md)."""

    router: str = Field(
        "prefix_affinity",
        description=(
            "`prefix_affinity`: a conversation's turns go to the replica that holds its prefix in vLLM's cache, "
            "unless another would answer sooner, recomputing it counted (`serve_app/prefix_routing.py`); "
            "`power_of_two`: Serve's default, the shorter queue of two random replicas; or a Serve "
            "`RequestRouter` class by import path (`package.module.Class`)."
        ),
    )
    recompute_weight: float = Field(
        2.0,
        ge=1,
        description=(
            "`prefix_affinity`: a conversation's turn goes to the replica that would answer it soonest (its work "
            "in flight plus what it would compute of the prompt); each prompt character a replica would "
            "recompute because another holds it counts this × as much as one waited for. 1: the soonest answer "
            "for this request alone."
        ),
    )


class ModelConfig(StrictModel):
    """One model, served by its own engine deployment (`LLMServer:<id>`)."""

    id: str = Field(min_length=1, description="The name clients send as `model` and see in `/v1/models`.")
    aliases: list[str] = Field(
        default_factory=list,
        description="More names for the model, listed by `/v1/models`; responses name the model by its `id`.",
    )
    task: ModelTask = Field(
        "generate", description="`generate`: chat and text completions; `embed`: /v1/embeddings (vLLM pooling)."
    )
    source: str = Field(
        min_length=1,
        description=(
            "`pkg:<package>/<file>.gguf` (a GGUF inside an installed Python package, converted once), "
            "`pkg:<package>/<directory>` (a model directory inside a package), a `.gguf` path, a local Hugging "
            "Face directory, or a hub id such as `HuggingFaceTB/SmolLM2-135M-Instruct` (needs network)."
        ),
    )
    engine: Literal["vllm", "replay"] = Field(
        "vllm", description="`vllm`, or `replay`: the deterministic test engine (`replay` section)."
    )
    tool_parser: str = Field(
        "hermes",
        description=(
            "The model's tool-call format: `hermes`, `llama3_json`, `mistral`, `pythonic`, `qwen3_coder`, "
            "`harmony` (docs/tools-and-structured-outputs.md)."
        ),
    )
    reasoning_parser: Literal["think", "harmony"] | None = Field(
        None,
        description=(
            "The model's reasoning format: `think` (`<think>…</think>`) or `harmony` (gpt-oss, with "
            "`tool_parser: harmony`); none: the model does not reason (docs/reasoning.md)."
        ),
    )
    engine_args: VLLMEngineArgs = Field(VLLMEngineArgs(), description="vLLM's engine arguments.")
    replay: ReplayEngineArgs | None = Field(None, description="Only with `engine: replay`: its script.")
    deployment: DeploymentOptions = Field(DeploymentOptions(), description="The engine deployment's Serve options.")
    routing: RoutingOptions = Field(RoutingOptions(), description="How requests pick one of the engine's replicas.")
    compact_json: bool = Field(
        True,
        description=(
            "Constrained JSON (tool arguments, `response_format`) without free whitespace between tokens, so "
            "no token is spent on layout; under `auto` with strict tools, at most one whitespace character at "
            "a time. Turn off for a model that writes worse JSON without its trained layout."
        ),
    )
    repetition_guard: RepetitionGuard | None = Field(
        RepetitionGuard(),
        description=(
            "vLLM engines: on constrained requests (forced or strict tool calls, `response_format`), penalize a "
            "value that repeats itself, so that a looping string ends instead of running into the token cap. "
            "None: off."
        ),
    )
    closing_pressure: ClosingPressure | None = Field(
        ClosingPressure(),
        description=(
            "vLLM engines: on answers constrained from their first token (forced tool calls, `response_format`), "
            "push an answer that has used much of its `max_tokens` to close its open string, object or array, "
            "so that it finishes within the budget instead of being cut by it. None: off."
        ),
    )
    fair_share: bool = Field(
        True,
        description=(
            "When the engine is busy, waiting requests take turns by API key: the next to start is the oldest of "
            "the key with the fewest generations running (keys of a lower `priority` first). False: first come, "
            "first served."
        ),
    )
    max_queued_requests: int | None = Field(
        256,
        ge=0,
        description=(
            "Requests that may wait in one engine replica for room (beyond `deployment.max_ongoing_requests` "
            "generations); more are refused at once with 503 and `Retry-After`. None: no bound."
        ),
    )

    @field_validator("tool_parser")
    @classmethod
    def _known_parser(cls, name: str) -> str:
        from serve_app.tool_parsers import parser_names

        if name not in parser_names():
            raise ValueError(f"unknown tool_parser {name!r}; known: {', '.join(parser_names())}")
        return name

    @model_validator(mode="after")
    def _harmony_is_one_format(self) -> ModelConfig:
        if (self.reasoning_parser == "harmony") != (self.tool_parser == "harmony"):
            raise ValueError(
                f"model {self.id!r}: harmony (gpt-oss) carries reasoning and tool calls in one format; "
                "set both `tool_parser: harmony` and `reasoning_parser: harmony`"
            )
        return self

    @model_validator(mode="after")
    def _embeddings_come_from_vllm(self) -> ModelConfig:
        if self.task == "embed" and self.engine != "vllm":
            raise ValueError(f"model {self.id!r}: task 'embed' needs engine 'vllm' (the replay engine only generates)")
        return self

    @property
    def names(self) -> list[str]:
        return [self.id, *self.aliases]

    @property
    def configured_context_length(self) -> int | None:
        """The context window this config sets (None: the model's own, known once the engine has loaded it)."""
        return self.replay.max_model_len if self.replay is not None else self.engine_args.max_model_len

    @model_validator(mode="after")
    def _replay_needs_script(self) -> ModelConfig:
        if self.engine == "replay" and self.replay is None:
            raise ValueError(f"model {self.id!r}: engine 'replay' needs a `replay: {{script: ...}}` section")
        if self.engine == "vllm" and self.replay is not None:
            raise ValueError(f"model {self.id!r}: `replay` is only valid with engine 'replay'")
        return self


class TracingOptions(StrictModel):
    """OpenTelemetry traces (issue #20): a span per request and per hop, exported over OTLP."""

    otlp_endpoint: str | None = Field(
        None,
        description=(
            "Where spans go, over OTLP/HTTP (protobuf): a collector's traces URL, e.g. "
            "`http://otel-collector:4318/v1/traces`. None: tracing is off (the default)."
        ),
    )
    sample_ratio: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description=(
            "The share of requests traced when the client sends no `traceparent`; a client's sampling decision "
            "in its `traceparent` is followed."
        ),
    )


class ServerOptions(StrictModel):
    """The HTTP surface, and the Serve options of the deployments every application has."""

    api_keys: list[str] = Field(
        default_factory=list,
        description="Accepted `Authorization: Bearer` keys; none here or in the environment: no auth.",
    )
    api_keys_env: str = Field(
        "AGENT_SERVE_API_KEYS", description="Environment variable with more keys, comma-separated."
    )
    keys_file: str | None = Field(
        None,
        description=(
            "A keys file: keys (stored as SHA-256) with names, teams, models, limits and priorities "
            "(docs/operators.md). Re-read when it changes, without a restart."
        ),
    )
    keys_env: str = Field(
        "AGENT_SERVE_KEYS", description="Environment variable with a keys file's content (e.g. from a Secret)."
    )
    keys_reload_interval_s: float = Field(
        5.0, gt=0, description="How often each ingress replica looks whether the keys file changed."
    )
    stream_batch_interval_s: float = Field(
        0.01,
        ge=0,
        description=(
            "Engine-to-ingress stream batching: after the first chunk (always sent at once), chunks that "
            "arrive within this interval of the previous send travel together."
        ),
    )
    keep_alive_interval_s: float = Field(
        15.0, gt=0, description="Send an SSE `: keep-alive` comment when a stream was silent this long."
    )
    strict_request_fields: bool = Field(
        False,
        description="Refuse request fields OpenAI does not define (400 naming the field) instead of ignoring them.",
    )
    max_request_body_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="Larger request bodies get 413 (default: 32 MiB)."
    )
    request_body_timeout_s: float = Field(
        60.0, gt=0, description="The whole request body must arrive within this long; a slower one gets 408."
    )
    request_deadline_s: float | None = Field(
        1800.0,
        gt=0,
        description=(
            "A generation request running longer is ended and its generation stopped: a 504 `deadline_exceeded`, "
            "or (streams) that error event and [DONE], within one keep-alive interval. Longer than an agent's "
            "longest answer. None: no deadline."
        ),
    )
    max_generations_per_request: int = Field(
        128,
        ge=1,
        description=(
            "Generations one request may fan out to (prompts × `n` on /v1/completions, `n` on chat); more is a "
            "400 naming the field, before anything is queued."
        ),
    )
    max_embedding_inputs: int = Field(
        2048,
        ge=1,
        description=(
            "Inputs one /v1/embeddings request may carry (OpenAI's cap is 2048); more is a 400 naming `input`, "
            "before anything is queued."
        ),
    )
    ingress: DeploymentOptions = Field(
        DeploymentOptions(num_cpus=0.0, max_ongoing_requests=1024),
        description=(
            "Serve options of `OpenAIIngress`, the HTTP entry point. Its `max_ongoing_requests` is enforced by "
            "the replica itself: one request more is refused at once with 503 and `Retry-After`."
        ),
    )
    tool_parsing: DeploymentOptions = Field(
        DeploymentOptions(num_cpus=0.0, max_ongoing_requests=1024, max_queued_requests=1024),
        description="Serve options of `ToolParsing`, which turns the model's text into tool calls.",
    )
    structured_output: DeploymentOptions = Field(
        DeploymentOptions(num_cpus=0.0, max_ongoing_requests=1024, max_queued_requests=1024),
        description="Serve options of `StructuredOutput`, which checks, compiles and enforces schemas.",
    )
    tracing: TracingOptions = Field(TracingOptions(), description="OpenTelemetry traces; off by default.")

    def resolved_api_keys(self) -> list[str]:
        from_env = [k.strip() for k in os.environ.get(self.api_keys_env, "").split(",") if k.strip()]
        return [*self.api_keys, *from_env]

    def asks_for_keys(self) -> bool:
        """Whether any source of keys is configured (plain keys, a keys file, keys in the environment)."""
        return bool(self.resolved_api_keys() or self.keys_file or os.environ.get(self.keys_env, "").strip())


class AppConfig(StrictModel):
    """The application's `args`."""

    models: list[ModelConfig] = Field(
        min_length=1, description="The models, each its own engine deployment; ids and aliases are unique across all."
    )
    server: ServerOptions = Field(ServerOptions(), description="The HTTP surface and the shared deployments.")
    model_cache_dir: Path = Field(
        DEFAULT_CACHE_DIR,
        description="Where converted and downloaded models live.",
        # The default depends on the machine; the reference says where it comes from.
        json_schema_extra={"default_shown": "`$AGENT_SERVE_CACHE`, or `~/.cache/agent-serve`"},
    )

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        names = [name for m in models for name in m.names]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"model ids and aliases must be unique; repeated: {', '.join(duplicates)}")
        return models


class ConfigError(ValueError):
    """A configuration problem, with a message meant for the person who wrote the YAML."""


def parse_app_config(args: dict[str, Any], origin: str = "application args") -> AppConfig:
    try:
        return AppConfig.model_validate(args)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration in {origin}:\n{_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            lines.append(f"  - {where}: unknown key (check its spelling in docs/configuration.md)")
        else:
            lines.append(f"  - {where}: {error['msg']}")
    return "\n".join(lines)


def load_serve_config(path: Path) -> dict[str, Any]:
    """Read a Serve config YAML file (the one `serve run`/`serve deploy` take)."""
    with open(path) as f:
        document = yaml.safe_load(f)
    if not isinstance(document, dict) or not document.get("applications"):
        raise ConfigError(f"{path}: not a Serve config file (no `applications` list)")
    return document
