"""Configuration: pydantic models that reject unknown keys with a message naming them."""

from __future__ import annotations

import pytest
from ray.serve.schema import ServeDeploySchema

from serve_app.builder import engine_deployment_options
from serve_app.config import ConfigError, load_serve_config, parse_app_config
from tests.conftest import ROOT

MINIMAL = {"models": [{"id": "m", "source": "org/model"}]}


def test_unknown_key_is_rejected_naming_its_path() -> None:
    args = {"models": [{"id": "m", "source": "org/model", "engine_args": {"max_model_length": 4096}}]}
    with pytest.raises(ConfigError) as info:
        parse_app_config(args)
    assert "models.0.engine_args.max_model_length: unknown key" in str(info.value)


def test_defaults_are_the_real_engine() -> None:
    model = parse_app_config(MINIMAL).models[0]
    assert model.engine == "vllm"
    assert model.replay is None


def test_replay_engine_needs_a_script() -> None:
    with pytest.raises(ConfigError, match="needs a `replay: {script: ...}` section"):
        parse_app_config({"models": [{"id": "m", "source": "org/model", "engine": "replay"}]})


def test_model_ids_must_be_unique() -> None:
    with pytest.raises(ConfigError, match="repeated: m"):
        parse_app_config({"models": [MINIMAL["models"][0], MINIMAL["models"][0]]})


def test_api_keys_come_from_config_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEYS", "k2, k3,")
    server = parse_app_config({**MINIMAL, "server": {"api_keys": ["k1"], "api_keys_env": "MY_KEYS"}}).server
    assert server.resolved_api_keys() == ["k1", "k2", "k3"]


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_are_valid_serve_configs(name: str) -> None:
    document = load_serve_config(ROOT / "configs" / name)
    ServeDeploySchema.model_validate(document)
    for app in document["applications"]:
        assert app["import_path"] == "serve_app:build_app"
        parse_app_config(app["args"])


def test_tensor_parallel_reserves_one_gpu_bundle_per_worker() -> None:
    document = load_serve_config(ROOT / "configs" / "gpu-tp.yaml")
    model = parse_app_config(document["applications"][0]["args"]).models[0]
    options = engine_deployment_options(model)
    assert model.engine_args.tensor_parallel_size == 2
    assert options["placement_group_bundles"] == [{"CPU": 1.0, "GPU": 1}, {"GPU": 1}]
    assert options["ray_actor_options"]["num_gpus"] == 0


def test_single_worker_engine_needs_no_placement_group() -> None:
    options = engine_deployment_options(parse_app_config(MINIMAL).models[0])
    assert "placement_group_bundles" not in options
