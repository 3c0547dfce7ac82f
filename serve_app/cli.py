"""`python -m serve_app serve <config.yaml>`: prepare models, start Ray and Serve, print how to use it.

The same Serve config file also works with Ray's own `serve run` / `serve deploy`; this command adds
what a person at a terminal wants: model preparation with progress, engine start-up progress, a ready
banner with a request to copy, and a clean Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from serve_app.config import AppConfig, ConfigError, load_serve_config, parse_app_config
from serve_app.model_source import ModelSourceError, prepare_model
from serve_app.ray_settings import CONTROLLER_OPTIONS, prepare_node_environment

BUILDER_IMPORT_PATH = "serve_app:build_app"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent-serve", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="prepare models and serve a Serve config file until Ctrl-C")
    serve_cmd.add_argument("config", type=Path, help="Serve config YAML, e.g. configs/local.yaml")
    prepare_cmd = commands.add_parser("prepare", help="only prepare the models of a config (download/convert)")
    prepare_cmd.add_argument("config", type=Path)
    _add_keys_commands(commands)
    args = parser.parse_args(argv)
    if args.command == "keys":
        return _keys(args)
    try:
        document, apps = _load(args.config)
        for app in apps.values():
            for model in app.models:
                prepare_model(model.source, app.model_cache_dir, _say)
        if args.command == "prepare":
            return 0
        return _serve(document, apps)
    except (ConfigError, ModelSourceError) as exc:
        _say(f"error: {exc}")
        return 2


def _add_keys_commands(commands: Any) -> None:
    keys_cmd = commands.add_parser("keys", help="manage a keys file (server.keys_file): keys with identities")
    actions = keys_cmd.add_subparsers(dest="action", required=True)
    new = actions.add_parser("new", help="create a key, print it once, store its hash")
    new.add_argument("name", help="who holds it: what logs and metrics show")
    new.add_argument("--file", type=Path, required=True, help="the keys file (created if missing)")
    new.add_argument("--team")
    new.add_argument("--models", help="comma-separated model ids or aliases it may use (default: every model)")
    new.add_argument("--rpm", type=int, help="requests per minute")
    new.add_argument("--tpm", type=int, help="tokens per minute (prompt + completion)")
    new.add_argument("--concurrent", type=int, help="requests in flight at once")
    new.add_argument("--priority", type=int, default=0, help="lower is served first when busy (default 0)")
    revoke = actions.add_parser("revoke", help="revoke a key by its name (refused with 401 from the next reload)")
    revoke.add_argument("name")
    revoke.add_argument("--file", type=Path, required=True)


def _keys(args: argparse.Namespace) -> int:
    from serve_app.keys import KeysFileError, add_key, revoke_key

    try:
        if args.action == "revoke":
            revoke_key(args.file, args.name)
            _say(f"revoked {args.name!r} in {args.file}")
            return 0
        limits = {
            "requests_per_minute": args.rpm,
            "tokens_per_minute": args.tpm,
            "concurrent_requests": args.concurrent,
        }
        fields: dict[str, object] = {"name": args.name, "team": args.team, "priority": args.priority}
        fields["limits"] = {k: v for k, v in limits.items() if v is not None}
        if args.models:
            fields["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
        key = add_key(args.file, fields)
    except (KeysFileError, ValueError) as exc:
        _say(f"error: {exc}")
        return 2
    _say(f"added {args.name!r} to {args.file} (only its hash is stored); the key, shown only now:")
    print(key)
    return 0


def _load(path: Path) -> tuple[dict[str, Any], dict[str, AppConfig]]:
    from pydantic import ValidationError as PydanticError
    from ray.serve.schema import ServeDeploySchema

    document = load_serve_config(path)
    try:
        ServeDeploySchema.model_validate(document)
    except (PydanticError, ValueError) as exc:
        raise ConfigError(f"{path}: not a valid Serve config: {exc}") from None
    apps = {
        app["name"]: parse_app_config(app.get("args") or {}, f"{path}, application {app['name']!r}")
        for app in document["applications"]
        if app.get("import_path") == BUILDER_IMPORT_PATH
    }
    if not apps:
        raise ConfigError(f"{path}: no application uses import_path {BUILDER_IMPORT_PATH}")
    return document, apps


def _serve(document: dict[str, Any], apps: dict[str, AppConfig]) -> int:
    import ray
    from ray import serve

    from serve_app.builder import build_app

    started = time.monotonic()
    # Ctrl-C and `kill` both stop cleanly; SIGINT is re-armed because a shell may start us ignoring it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    _say("starting Ray ...")
    prepare_node_environment()
    ray.init(namespace="serve")
    http_options = {"host": "127.0.0.1", "port": 8000, **(document.get("http_options") or {})}
    serve.start(
        http_options=http_options,
        proxy_location=document.get("proxy_location", "HeadOnly"),
        controller_options=document.get("controller_options") or CONTROLLER_OPTIONS,
    )
    failures: list[BaseException] = []
    deploying = []
    for app_doc in document["applications"]:
        if app_doc["name"] not in apps:
            continue
        target = build_app(apps[app_doc["name"]])
        name, prefix = app_doc["name"], app_doc.get("route_prefix", "/")
        thread = threading.Thread(target=_run_app, args=(serve, target, name, prefix, failures), daemon=True)
        thread.start()
        deploying.append(thread)
    try:
        if not _wait_until_running(serve, deploying, failures, started):
            serve.shutdown()
            ray.shutdown()
            return 1
        _print_banner(
            http_options,
            apps,
            time.monotonic() - started,
            _metrics_url(ray.nodes(), ray.get_runtime_context().get_node_id()),
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        _say("\nstopping: shutting down Serve and Ray ...")
        serve.shutdown()
        ray.shutdown()
        _say("stopped.")
        return 0


def _run_app(serve: Any, target: Any, name: str, prefix: str, failures: list[BaseException]) -> None:
    try:
        serve.run(target, name=name, route_prefix=prefix)
    except BaseException as exc:  # reported by the main thread, which owns the terminal
        failures.append(exc)


def _wait_until_running(
    serve: Any, deploying: list[threading.Thread], failures: list[BaseException], t0: float
) -> bool:
    """Show each deployment's state as the engines start; False if any application failed."""
    shown, shown_at = "", 0.0
    while any(t.is_alive() for t in deploying):
        time.sleep(1.0)
        try:
            status = serve.status()
        except Exception:  # the controller is still starting
            continue
        states = (
            ", ".join(
                f"{name}: {dep.status.value.lower()}"
                for app in status.applications.values()
                for name, dep in app.deployments.items()
            )
            or "starting the Serve controller"
        )
        if states != shown or time.monotonic() - shown_at >= 10:
            _say(f"  [{time.monotonic() - t0:4.0f} s] {states}")
            shown, shown_at = states, time.monotonic()
    if failures:
        _say(f"error: the application failed to start: {failures[0]}")
        return False
    return True


def _metrics_url(nodes: list[dict[str, Any]], node_id: str) -> str:
    """Where Prometheus scrapes this node: Ray's metrics agent, with our metrics beside Serve's and vLLM's."""
    node = next(n for n in nodes if n["NodeID"] == node_id)
    return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"


def _print_banner(http_options: dict[str, Any], apps: dict[str, AppConfig], elapsed: float, metrics_url: str) -> None:
    host = http_options["host"]
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{http_options['port']}/v1"
    app = next(iter(apps.values()))
    models = [m for config in apps.values() for m in config.models]
    first = models[0]
    body: dict[str, Any]
    if first.task == "embed":
        path, body = "embeddings", {"model": first.id, "input": "Hello, world."}
    else:
        path, body = (
            "chat/completions",
            {"model": first.id, "messages": [{"role": "user", "content": "Say hello in one sentence."}]},
        )
    auth = " -H 'Authorization: Bearer <your key>'" if app.server.asks_for_keys() else ""
    names = [f"{m.id} ({', '.join(m.aliases)})" if m.aliases else m.id for m in models]
    _say(
        f"\nagent-serve is ready ({elapsed:.0f} s)\n"
        f"  base URL : {base}\n"
        f"  model    : {', '.join(names)}\n"
        f"  try      : curl {base}/{path} -H 'Content-Type: application/json'{auth}"
        f" -d {shlex.quote(json.dumps(body))}\n"
        f"  metrics  : {metrics_url} (Prometheus; ours are ray_agent_serve_*)\n"
        f"Press Ctrl-C to stop.\n"
    )


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
