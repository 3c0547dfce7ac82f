"""The shipped configs and the builder against Ray Serve's own schemas: what `serve run`, `serve deploy` and
`serve build` will accept, placement groups for tensor-parallel engines, autoscaling options."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

from serve_app.builder import _serve_options, build_app, engine_deployment_options
from serve_app.config import ModelConfig, load_serve_config, parse_app_config
from serve_app.ray_settings import CONTROLLER_OPTIONS
from tests.conftest import ROOT

MINIMAL = {"models": [{"id": "m", "source": "org/model"}]}


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_are_valid_serve_configs(name: str) -> None:
    """...and start Serve's proxy with the stack's settings, as `serve run`/`serve deploy` read them from here."""
    document = load_serve_config(ROOT / "configs" / name)
    ServeDeploySchema.model_validate(document)
    assert document["controller_options"] == CONTROLLER_OPTIONS
    for app in document["applications"]:
        assert app["import_path"] == "serve_app:build_app"
        build_app(parse_app_config(app["args"]))  # raises on anything the builder cannot wire


def test_serve_build_writes_a_deployable_config(tmp_path: Path) -> None:
    """`serve build` needs an application object: `serve_app.app:<config>` is a shipped config's
    application, importable from any working directory (as on the cluster, whose jobs start elsewhere)."""
    output = tmp_path / "built.yaml"
    subprocess.run(
        [sys.executable, "-m", "ray.serve.scripts", "build", "serve_app.app:multi_model", "-o", str(output)],
        cwd=tmp_path,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        check=True,
        capture_output=True,
    )
    document = ServeDeploySchema.model_validate(yaml.safe_load(output.read_text()))
    (app,) = document.applications
    assert app.import_path == "serve_app.app:multi_model" and not app.args
    assert {d.name for d in app.deployments} == {
        "LLMServer:smollm2-135m-instruct",
        "LLMServer:all-minilm-l6-v2",
        "ToolParsing",
        "StructuredOutput",
        "OpenAIIngress",
        "LimitsLedger",
    }


def _shipped_model(config: str, index: int = 0) -> ModelConfig:
    return parse_app_config(load_serve_config(ROOT / "configs" / config)["applications"][0]["args"]).models[index]


def test_tensor_parallel_reserves_one_gpu_bundle_per_worker_on_one_node() -> None:
    model = _shipped_model("gpu-single-node.yaml")
    options = engine_deployment_options(model)
    assert model.engine_args.tensor_parallel_size == 2
    assert options["placement_group_bundles"] == [{"CPU": 1.0, "GPU": 1}, {"GPU": 1}]
    assert options["placement_group_strategy"] == "STRICT_PACK"
    assert options["ray_actor_options"]["num_gpus"] == 0


def test_multi_node_engine_asks_for_its_accelerator_in_every_bundle() -> None:
    options = engine_deployment_options(_shipped_model("gpu-multi-node.yaml"))  # TP 4 x PP 2
    gpu = {"GPU": 1, "accelerator_type:H100": 0.001}
    assert options["placement_group_bundles"] == [{"CPU": 2.0} | gpu] + [gpu] * 7
    assert options["placement_group_strategy"] == "PACK"
    assert options["ray_actor_options"]["accelerator_type"] == "H100"


def test_single_worker_engine_needs_no_placement_group() -> None:
    options = engine_deployment_options(parse_app_config(MINIMAL).models[0])
    assert "placement_group_bundles" not in options
    assert options["num_replicas"] == 1 and "autoscaling_config" not in options


def test_engines_route_by_prefix_by_default_and_take_serve_s_router_or_another_by_name() -> None:
    """Issue #22: the router Serve builds for every caller of the engine deployment."""
    from ray.serve.config import RequestRouterConfig

    from deployments.prefix_router import PrefixAffinityRouter

    def router(routing: dict[str, object] | None) -> dict[str, object] | None:
        model = {"id": "m", "source": "org/model"} | ({"routing": routing} if routing else {})
        return engine_deployment_options(parse_app_config({"models": [model]}).models[0]).get("request_router_config")

    default = router(None)
    assert default == {
        "request_router_class": "deployments.prefix_router.PrefixAffinityRouter",
        "request_router_kwargs": {"recompute_weight": 2.0},
        "request_routing_stats_period_s": 5.0,  # how soon the engines' reports of the keys they hold arrive
    }
    assert RequestRouterConfig.model_validate(default).get_request_router_class() is PrefixAffinityRouter
    assert router({"router": "power_of_two"}) is None  # Serve's own
    custom = "ray.serve.llm.request_router.PrefixCacheAffinityRouter"
    assert router({"router": custom}) == {"request_router_class": custom}


def test_engines_autoscale_on_their_queue_the_others_on_ongoing_requests() -> None:
    from serve_app.autoscaling import engine_queue_policy

    model = _shipped_model("multi-model.yaml")
    config = engine_deployment_options(model)["autoscaling_config"]
    assert "num_replicas" not in engine_deployment_options(model)
    assert config["policy"] == {"policy_function": "serve_app.autoscaling:engine_queue_policy"}
    assert (config["min_replicas"], config["max_replicas"], config["target_ongoing_requests"]) == (1, 2, 16)
    assert engine_queue_policy.__name__ in config["policy"]["policy_function"]
    AutoscalingConfig.model_validate(config)  # Serve accepts it, policy import path included

    server = parse_app_config(
        load_serve_config(ROOT / "configs" / "multi-model.yaml")["applications"][0]["args"]
    ).server
    ingress = _serve_options(server.ingress)["autoscaling_config"]
    assert "policy" not in ingress and ingress["target_ongoing_requests"] == 256


def test_the_post_processing_stages_bound_their_queues_and_serve_accepts_it() -> None:
    """Issue #19: requests waiting for a `ToolParsing` or `StructuredOutput` replica are bounded by default
    (Serve refuses past it, which the ingress answers with a 503); nothing is bounded unless configured."""
    from ray.serve.schema import DeploymentSchema

    server = parse_app_config(MINIMAL).server
    for stage in (server.tool_parsing, server.structured_output):
        options = _serve_options(stage)
        assert options["max_queued_requests"] == 1024
        DeploymentSchema(name="stage", max_queued_requests=options["max_queued_requests"])
    assert _serve_options(server.ingress)["max_queued_requests"] == -1  # Serve's "no bound"
