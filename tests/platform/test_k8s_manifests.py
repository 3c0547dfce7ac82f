"""Every manifest in k8s/ is a valid RayService whose embedded Serve config builds our application."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from ray.serve.schema import ServeDeploySchema

from serve_app.builder import build_app
from serve_app.config import parse_app_config
from serve_app.haproxy_without_splice import BINARY_PATH_VARIABLE
from serve_app.ray_settings import CONTROLLER_OPTIONS, HAPROXY_PROGRAM, NODE_ENV_VARS
from tests.conftest import ROOT
from tests.openai_spec import closed, reference_dir, rewrite_schema

MANIFESTS = sorted((ROOT / "k8s").glob("*.yaml"))
# The console scripts' directory in each image: the CPU image's system Python, the GPU image's venv.
IMAGE_HAPROXY_PROGRAMS = {f"/usr/local/bin/{HAPROXY_PROGRAM}", f"/opt/venv/bin/{HAPROXY_PROGRAM}"}


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Like `kubectl apply --validate=strict`: unknown fields are errors, except where the CRD keeps them."""
    return schema if schema.get("x-kubernetes-preserve-unknown-fields") else closed(schema)


def _rayservice_validator() -> Draft202012Validator:
    crd = yaml.safe_load((reference_dir() / "kuberay" / "ray.io_rayservices.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return Draft202012Validator(rewrite_schema(version["schema"]["openAPIV3Schema"], _strict))


def test_there_are_manifests() -> None:
    assert MANIFESTS


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_the_rayservice_crd(path: Path) -> None:
    manifest = yaml.safe_load(path.read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _rayservice_validator().iter_errors(manifest)
    ]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_embedded_serve_config_builds_the_application(path: Path) -> None:
    serve_config = yaml.safe_load(yaml.safe_load(path.read_text())["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_config)
    assert serve_config["controller_options"] == CONTROLLER_OPTIONS  # the proxy's settings (ray_settings.py)
    for app in serve_config["applications"]:
        assert app["import_path"] == "serve_app:build_app"
        build_app(parse_app_config(app["args"]))  # raises on anything the builder cannot wire


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_runs_a_shared_endpoint_the_way_a_team_needs(path: Path) -> None:
    """Head without replicas, bounded autoscaling worker groups, Prometheus scraping, keys from a Secret, and
    Ray's node settings (`NODE_ENV_VARS`) and the HAProxy program in every pod."""
    cluster = yaml.safe_load(path.read_text())["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert cluster["enableInTreeAutoscaling"] is True
    pods = [head["template"]] + [group["template"] for group in cluster["workerGroupSpecs"]]
    for group in cluster["workerGroupSpecs"]:
        assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for pod in pods:
        assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        (container,) = pod["spec"]["containers"]
        keys = next(e for e in container["env"] if e["name"] == "AGENT_SERVE_API_KEYS")
        assert keys["valueFrom"]["secretKeyRef"]["name"] == "agent-serve-api-keys"
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert NODE_ENV_VARS.items() <= env.items()
        assert env[BINARY_PATH_VARIABLE] in IMAGE_HAPROXY_PROGRAMS, env  # where the image's pip put it
