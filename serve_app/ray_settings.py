"""The Ray Serve settings the stack runs with, and why: each one removes per-token work (issue #7).

Serve reads them from environment variables when its processes start, so they travel in runtime
environments: the replicas' in each deployment's options (`build_app` adds them, whatever starts the
app), the HTTP proxy's in the Serve controller's (`controller_options` in a Serve config or
`serve.start`; the proxy inherits the controller's environment).
"""

from __future__ import annotations

from typing import Any

# Replicas run our code, and route their handles' calls, on the replica's own event loop: Serve's default
# passes every request and every streamed item between threads and loops. Our code awaits rather than
# blocks (the long start-up steps run in threads), so the replica's own tasks are not held up.
REPLICA_ENV_VARS = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}

# The proxy calls the ingress by value over Serve's gRPC channel, as our deployments call each other
# (`deployments.handles.by_value`), rather than making each streamed chunk a Ray object.
PROXY_ENV_VARS = {"RAY_SERVE_PROXY_USE_GRPC": "1", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}

CONTROLLER_OPTIONS: dict[str, Any] = {"runtime_env": {"env_vars": PROXY_ENV_VARS}}
