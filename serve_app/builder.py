"""`build_app`: the Serve `import_path` (`serve_app:build_app`) turning config args into an application."""

from __future__ import annotations

from typing import Any, cast

from ray.serve import Application, Deployment

from serve_app.autoscaling import engine_queue_policy
from serve_app.config import AppConfig, DeploymentOptions, ModelConfig, RoutingOptions, parse_app_config
from serve_app.prefix_routing import HELD_KEYS_REPORT_PERIOD_S
from serve_app.ray_settings import REPLICA_ENV_VARS
from serve_app.routing import ModelCatalog

ENGINE_QUEUE_POLICY = f"{engine_queue_policy.__module__}:{engine_queue_policy.__name__}"


def build_app(args: dict[str, Any] | AppConfig) -> Application:
    """Called by `serve run`/`serve deploy` with the `args` of the Serve config's application."""
    config = args if isinstance(args, AppConfig) else parse_app_config(args)
    from deployments.engine import LLMServer
    from deployments.ingress import OpenAIIngress
    from deployments.limits_ledger import LimitsLedger
    from deployments.structured_output import StructuredOutput
    from deployments.tool_parsing import ToolParsing

    engines = {
        model.id: _deployment(LLMServer)
        .options(name=f"LLMServer:{model.id}", **engine_deployment_options(model))
        .bind(model, config.model_cache_dir, config.server.stream_batch_interval_s, config.server.tracing)
        for model in config.models
    }
    interval, tracing = config.server.stream_batch_interval_s, config.server.tracing
    tool_parsing = (
        _deployment(ToolParsing).options(**_serve_options(config.server.tool_parsing)).bind(engines, interval, tracing)
    )
    structured_output = (
        _deployment(StructuredOutput)
        .options(**_serve_options(config.server.structured_output))
        .bind(engines, interval, tracing)
    )
    ingress_options = _serve_options(config.server.ingress) | {"max_ongoing_requests": OUT_OF_REACH_REQUESTS}
    catalog = ModelCatalog.of(config.models)
    ledger_actor = {"num_cpus": 0, "runtime_env": {"env_vars": REPLICA_ENV_VARS}}
    limits_ledger = _deployment(LimitsLedger).options(ray_actor_options=ledger_actor).bind()
    return (
        _deployment(OpenAIIngress)
        .options(**ingress_options)
        .bind(config.server, catalog, engines, tool_parsing, structured_output, limits_ledger)
    )


def _deployment(decorated: type) -> Deployment:
    """A class decorated with `@serve.deployment`, which is a `Deployment` (mypy ignores class decorators)."""
    return cast(Deployment, decorated)


# Serve's limit on the requests one engine or ingress replica holds: high enough never to be reached,
# because the replica decides itself. An engine replica judges every request on arrival and its admission
# decides when it runs and when it is full (serve_app/engines/admission.py): held in Serve's router
# instead, a request would wait unjudged. An ingress replica refuses past `server.ingress.
# max_ongoing_requests` with OpenAI's 503 (`http_api._Capacity`): held by Serve, a request would wait
# without a bound, or be refused with Serve's plain-text body.
OUT_OF_REACH_REQUESTS = 100_000


def engine_deployment_options(model: ModelConfig) -> dict[str, Any]:
    options = _serve_options(model.deployment, ENGINE_QUEUE_POLICY)
    options["max_ongoing_requests"] = OUT_OF_REACH_REQUESTS
    if (router := request_router_config(model.routing)) is not None:
        options["request_router_config"] = router
    world_size = model.engine_args.world_size  # the replay engine reserves the same shape: placement is testable
    if world_size > 1:
        # Tensor/pipeline parallel: the replica reserves one GPU bundle per worker; vLLM's Ray executor
        # places its workers in this placement group (the replica itself holds no GPU).
        actor = options["ray_actor_options"]
        gpu = {"GPU": 1} | _accelerator(model.deployment)
        options["ray_actor_options"] = actor | {"num_gpus": 0}
        options["placement_group_bundles"] = [{"CPU": actor["num_cpus"]} | gpu] + [gpu] * (world_size - 1)
        options["placement_group_strategy"] = model.deployment.placement_strategy
    return options


PREFIX_AFFINITY_ROUTER = "deployments.prefix_router.PrefixAffinityRouter"


def request_router_config(routing: RoutingOptions) -> dict[str, Any] | None:
    """Serve's `request_router_config` for an engine deployment; None keeps Serve's default router."""
    if routing.router == "power_of_two":
        return None
    if routing.router == "prefix_affinity":
        return {
            "request_router_class": PREFIX_AFFINITY_ROUTER,
            "request_router_kwargs": {"recompute_weight": routing.recompute_weight},
            "request_routing_stats_period_s": HELD_KEYS_REPORT_PERIOD_S,
        }
    return {"request_router_class": routing.router}


def _serve_options(options: DeploymentOptions, autoscaling_policy: str | None = None) -> dict[str, Any]:
    """Serve's options for a deployment; `autoscaling_policy` replaces Serve's count of ongoing requests."""
    actor: dict[str, Any] = {
        "num_cpus": options.reserved_cpus,
        "num_gpus": options.num_gpus,
        "runtime_env": {"env_vars": REPLICA_ENV_VARS},  # Serve merges these with the application's
    }
    if options.accelerator_type is not None:
        actor["accelerator_type"] = options.accelerator_type
    serve_options: dict[str, Any] = {
        "max_ongoing_requests": options.max_ongoing_requests,
        "max_queued_requests": -1 if options.max_queued_requests is None else options.max_queued_requests,
        "graceful_shutdown_timeout_s": options.graceful_shutdown_timeout_s,
        "ray_actor_options": actor,
    }
    scaling = options.autoscaling
    if scaling is None:
        return serve_options | {"num_replicas": options.num_replicas}
    config: dict[str, Any] = {
        "min_replicas": scaling.min_replicas,
        "max_replicas": scaling.max_replicas,
        "initial_replicas": scaling.initial_replicas,
        "target_ongoing_requests": scaling.target,
        "upscale_delay_s": scaling.upscale_delay_s,
        "downscale_delay_s": scaling.downscale_delay_s,
        "downscale_to_zero_delay_s": scaling.downscale_to_zero_delay_s,
        "metrics_interval_s": scaling.metrics_interval_s,
        "look_back_period_s": scaling.look_back_period_s,
    }
    if autoscaling_policy is not None:
        config["policy"] = {"policy_function": autoscaling_policy}
    return serve_options | {"autoscaling_config": config}


def _accelerator(options: DeploymentOptions) -> dict[str, float]:
    """A bundle on a node of this accelerator type (Ray labels such nodes with this resource)."""
    return {} if options.accelerator_type is None else {f"accelerator_type:{options.accelerator_type}": 0.001}
