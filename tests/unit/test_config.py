"""Configuration: pydantic models that reject unknown keys with a message naming them."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from serve_app.config import ConfigError, DeploymentOptions, machine_cpus, parse_app_config

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


@pytest.mark.parametrize(
    ("deployment", "message"),
    [
        ({"num_replicas": 2, "autoscaling": {}}, "either num_replicas or autoscaling"),
        ({"autoscaling": {"min_replicas": 3, "max_replicas": 2}}, "min_replicas (3) is above max_replicas (2)"),
        ({"autoscaling": {"min_replicas": 1, "max_replicas": 2, "initial_replicas": 5}}, "initial_replicas (5)"),
        ({"placement_strategy": "SCATTER"}, "placement_strategy"),
    ],
)
def test_bad_deployment_options_are_refused(deployment: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_app_config({"models": [{"id": "m", "source": "org/model", "deployment": deployment}]})


def test_scale_to_zero_is_allowed() -> None:
    options = parse_app_config(
        {"models": [{"id": "m", "source": "o/m", "deployment": {"autoscaling": {"min_replicas": 0}}}]}
    )
    assert options.models[0].deployment.autoscaling.min_replicas == 0  # type: ignore[union-attr]


def test_aliases_share_the_namespace_of_ids() -> None:
    models = [{"id": "a", "source": "o/a", "aliases": ["fast"]}, {"id": "b", "source": "o/b", "aliases": ["a"]}]
    with pytest.raises(ConfigError, match="ids and aliases must be unique; repeated: a"):
        parse_app_config({"models": models})


def test_embeddings_need_the_vllm_engine() -> None:
    model = {"id": "e", "source": "o/e", "task": "embed", "engine": "replay", "replay": {"script": "s.yaml"}}
    with pytest.raises(ConfigError, match="task 'embed' needs engine 'vllm'"):
        parse_app_config({"models": [model]})


def test_a_prefill_cap_at_or_above_the_step_budget_is_refused() -> None:
    """Issue #22: `long_prefill_token_threshold` shares a step only below `max_num_batched_tokens`."""
    engine_args = {"max_num_batched_tokens": 512, "long_prefill_token_threshold": 512}
    with pytest.raises(ConfigError, match=re.escape("long_prefill_token_threshold (512) is not below")):
        parse_app_config({"models": [{"id": "m", "source": "o/m", "engine_args": engine_args}]})
    engine_args["long_prefill_token_threshold"] = 256
    model = parse_app_config({"models": [{"id": "m", "source": "o/m", "engine_args": engine_args}]}).models[0]
    assert model.engine_args.long_prefill_token_threshold == 256


def test_num_cpus_auto_reserves_this_machines_cpus_less_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The embedded default's engine gets the machine's CPUs less one, counted as Ray counts a node's: the
    process's CPU affinity, capped by a container's CPU quota (cgroup v2 or v1); a number is taken as it is."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)), raising=False)
    no_cgroup = tmp_path / "none"
    assert machine_cpus(no_cgroup) == 8
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "cpu.max").write_text("max 100000\n")
    assert machine_cpus(tmp_path / "v2") == 8
    (tmp_path / "v2" / "cpu.max").write_text("250000 100000\n")  # docker --cpus=2.5
    assert machine_cpus(tmp_path / "v2") == 2
    (tmp_path / "v1" / "cpu").mkdir(parents=True)
    (tmp_path / "v1" / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "v1" / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert machine_cpus(tmp_path / "v1") == 3

    auto = DeploymentOptions.model_validate({"num_cpus": "auto"})
    assert auto.num_cpus == "auto" and auto.reserved_cpus == float(max(1, machine_cpus() - 1))
    assert DeploymentOptions.model_validate({"num_cpus": 2}).reserved_cpus == 2.0
    with pytest.raises(ValidationError):
        DeploymentOptions.model_validate({"num_cpus": "many"})
    with pytest.raises(ValidationError):
        DeploymentOptions.model_validate({"num_cpus": -1})
