"""`build_app`: the Serve `import_path` (`serve_app:build_app`) turning config args into an application."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serve_app.config import AppConfig, DeploymentOptions, ModelConfig, parse_app_config


def build_app(args: dict[str, Any]) -> Application:
    """Called by `serve run`/`serve deploy` with the `args` of the Serve config's application."""
    config = args if isinstance(args, AppConfig) else parse_app_config(args)
    from deployments.engine import LLMServer
    from deployments.ingress import OpenAIIngress
    from deployments.structured_output import StructuredOutput
    from deployments.tool_parsing import ToolParsing

    engines = {
        model.id: LLMServer.options(name=f"LLMServer:{model.id}", **engine_deployment_options(model)).bind(
            model, config.model_cache_dir, config.server.stream_batch_interval_s
        )
        for model in config.models
    }
    interval = config.server.stream_batch_interval_s
    tool_parsing = ToolParsing.options(**_serve_options(config.server.tool_parsing)).bind(engines, interval)
    structured_output = StructuredOutput.options(**_serve_options(config.server.structured_output)).bind(engines, interval)
    ingress_options = _serve_options(config.server.ingress)
    return OpenAIIngress.options(**ingress_options).bind(config.server, engines, tool_parsing, structured_output)


def engine_deployment_options(model: ModelConfig) -> dict[str, Any]:
    options = _serve_options(model.deployment)
    world_size = model.engine_args.world_size if model.engine == "vllm" else 1
    if world_size > 1:
        # Tensor/pipeline parallel: the replica reserves one GPU bundle per worker; vLLM's Ray executor
        # places its workers in this placement group (the replica itself holds no GPU).
        actor = options.pop("ray_actor_options")
        options["ray_actor_options"] = {"num_cpus": actor["num_cpus"], "num_gpus": 0}
        options["placement_group_bundles"] = [{"CPU": actor["num_cpus"], "GPU": 1}] + [{"GPU": 1}] * (world_size - 1)
        options["placement_group_strategy"] = "PACK"
    return options


def _serve_options(options: DeploymentOptions) -> dict[str, Any]:
    return {
        "num_replicas": options.num_replicas,
        "max_ongoing_requests": options.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": options.num_cpus, "num_gpus": options.num_gpus},
    }
