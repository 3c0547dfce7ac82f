"""Application configuration: pydantic models loaded from the `args` of a Serve config file.

Every model forbids unknown keys, so a typo in YAML is an error naming the key instead of a setting
that is silently ignored. Host and port are Serve's own `http_options` in the same YAML file; they are
not repeated here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_CACHE_DIR = Path(os.environ.get("AGENT_SERVE_CACHE", Path.home() / ".cache" / "agent-serve"))


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AutoscalingOptions(StrictModel):
    """Replica autoscaling. Engine deployments scale on their engine's queue (waiting + running requests,
    reported by each replica, plus requests held before any replica took them); the ingress and the
    post-processing deployments on their ongoing requests. See the README's autoscaling section."""

    min_replicas: int = Field(1, ge=0, description="0 = scale to zero when idle; requests are held while one starts.")
    max_replicas: int = Field(4, ge=1)
    initial_replicas: int | None = Field(None, ge=0, description="Replicas at deploy time; default min_replicas.")
    target: float = Field(
        8.0, gt=0, description="Per replica: engine queue depth (engines) or ongoing requests (the others)."
    )
    upscale_delay_s: float = Field(5.0, ge=0, description="The load must stay above target this long to add replicas.")
    downscale_delay_s: float = Field(120.0, ge=0, description="... below target this long to remove replicas.")
    downscale_to_zero_delay_s: float | None = Field(
        None, ge=0, description="From one replica to none (min_replicas 0); default downscale_delay_s."
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


class DeploymentOptions(StrictModel):
    """Ray Serve options for one deployment: a fixed `num_replicas`, or `autoscaling` bounds."""

    num_replicas: int = Field(1, ge=1)
    autoscaling: AutoscalingOptions | None = None
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    max_ongoing_requests: int = Field(64, ge=1)
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

    @model_validator(mode="after")
    def _replicas_one_way(self) -> DeploymentOptions:
        if self.autoscaling is not None and "num_replicas" in self.model_fields_set:
            raise ValueError("set either num_replicas or autoscaling, not both")
        return self


class VLLMEngineArgs(StrictModel):
    """The vLLM engine arguments we expose by name; `extra` passes anything else verbatim."""

    max_model_len: int | None = Field(None, ge=16, description="Context window; None = the model's own.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    enforce_eager: bool = False
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    kv_cache_space_gib: int | None = Field(
        None, ge=1, description="CPU only: KV cache size in whole GiB (VLLM_CPU_KVCACHE_SPACE)."
    )
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    max_num_seqs: int | None = Field(None, ge=1)
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


class ReplayEngineArgs(StrictModel):
    """The deterministic test engine: scripted text through the model's real tokenizer."""

    script: Path
    max_model_len: int = Field(8192, ge=16)
    token_delay_s: float | None = Field(None, ge=0, description="Overrides the script's delay.")


class ModelConfig(StrictModel):
    id: str = Field(min_length=1, description="The name clients send as `model`.")
    aliases: list[str] = Field(
        default_factory=list, description="More names for the same model (listed by /v1/models too)."
    )
    task: ModelTask = Field(
        "generate", description="`generate`: chat and text completions; `embed`: /v1/embeddings (vLLM pooling)."
    )
    source: str = Field(
        min_length=1,
        description=(
            "pkg:<package>/<file>.gguf (a GGUF inside an installed Python package), a .gguf file, "
            "a local Hugging Face directory, or a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct."
        ),
    )
    engine: Literal["vllm", "replay"] = "vllm"
    tool_parser: str = Field("hermes", description="The model's tool-call format (see serve_app/tool_parsers).")
    reasoning_parser: Literal["think", "harmony"] | None = Field(
        None, description="The model's reasoning format: `think` (<think>...</think>) or `harmony` (gpt-oss)."
    )
    engine_args: VLLMEngineArgs = VLLMEngineArgs()
    replay: ReplayEngineArgs | None = None
    deployment: DeploymentOptions = DeploymentOptions()

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


class ServerOptions(StrictModel):
    api_keys: list[str] = Field(default_factory=list, description="Accepted bearer keys; empty = no auth.")
    api_keys_env: str = Field(
        "AGENT_SERVE_API_KEYS", description="Environment variable with more keys, comma-separated."
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
        False, description="Refuse request fields OpenAI does not define (400 naming the field) instead of ignoring them."
    )
    max_request_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="Larger bodies get 413.")
    ingress: DeploymentOptions = DeploymentOptions(num_cpus=0.0, max_ongoing_requests=1024)
    tool_parsing: DeploymentOptions = DeploymentOptions(num_cpus=0.0, max_ongoing_requests=1024)
    structured_output: DeploymentOptions = DeploymentOptions(num_cpus=0.0, max_ongoing_requests=1024)

    def resolved_api_keys(self) -> list[str]:
        from_env = [k.strip() for k in os.environ.get(self.api_keys_env, "").split(",") if k.strip()]
        return [*self.api_keys, *from_env]


class AppConfig(StrictModel):
    models: list[ModelConfig] = Field(min_length=1)
    server: ServerOptions = ServerOptions()
    model_cache_dir: Path = DEFAULT_CACHE_DIR

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
            lines.append(f"  - {where}: unknown key (check its spelling and the README's configuration reference)")
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
