"""The Ray and Ray Serve settings the stack runs with, and why (issue #7: most take work off every token).

Serve reads them from environment variables when its processes start, so they travel in runtime
environments: the replicas' in each deployment's options (`build_app` adds them, whatever starts the
app), the controller's and its proxies' in the Serve controller's (`controller_options` in a Serve
config or `serve.start`; the proxies it starts inherit its environment). One is a setting of Ray itself, read by
each node's raylet from the environment it starts in, and one names the HAProxy program each proxy starts:
`prepare_node_environment` sets both wherever this project starts Ray, the manifests' pod environments set
them on KubeRay.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path
from typing import Any

from serve_app.haproxy_without_splice import BINARY_PATH_VARIABLE

# Ray starts every worker process (each replica, and so the vLLM engine processes a replica spawns) at
# niceness 15, below everything else on the node: the engine then yields the CPU to any other process
# there (a log shipper, a load generator, Ray's own agents), which bare `vllm serve` does not do. On a
# 2-core node, niceness 0 moved our throughput next to bare vLLM's from 0.90 to 1.03 at concurrency 8.
NODE_ENV_VARS = {"RAY_worker_niceness": "0"}

# HAProxy without splice(), so that a client that leaves is noticed (why: haproxy_without_splice.py). The
# program is the console script `pip install` puts next to this environment's Python; the images put it at a
# fixed path, which the manifests name.
HAPROXY_PROGRAM = "agent-serve-haproxy"

# HTTP goes from HAProxy (one native process per proxy node, configured by Serve as replicas come and go)
# straight to the ingress replicas, each serving HTTP itself: Serve's Python proxy, a hop and CPU for every
# streamed chunk, leaves the path (it stays as HAProxy's fallback while no ingress replica is up). The
# controller reads it (to start HAProxy instead of the proxy), and so does each ingress replica. A stopping
# ingress replica stays reachable for a deregistration window before it refuses new connections: Serve's
# 30 s default is for load balancers outside the cluster, while in every shape we ship only HAProxy stands
# in front of the replicas, updated by Serve itself when a replica starts stopping, and it retries a refused
# connection on another replica. A few seconds also keep `serve shutdown` and Ctrl-C from waiting 30 s.
DIRECT_INGRESS_ENV_VARS = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5"}

# Replicas run our code, and route their handles' calls, on the replica's own event loop: Serve's default
# passes every request and every streamed item between threads and loops. Our code awaits rather than
# blocks (the long start-up steps run in threads), so the replica's own tasks are not held up.
REPLICA_ENV_VARS = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    **DIRECT_INGRESS_ENV_VARS,
}

# The fallback proxy calls the ingress by value over Serve's gRPC channel, as our deployments call each
# other (`deployments.handles.by_value`), rather than making each streamed chunk a Ray object.
# HAProxy reloads whenever the ingress replicas change (a redeploy, autoscaling); the old HAProxy process
# keeps serving the connections it has, but only for `hard-stop-after` (Ray's default: 120 s), then cuts
# them. Agents wait minutes for one answer, so the old process may finish them for as long as a stopping
# replica does (`graceful_shutdown_timeout_s`, 600 s by default) and more.
PROXY_ENV_VARS = {
    "RAY_SERVE_PROXY_USE_GRPC": "1",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S": "900",
    **DIRECT_INGRESS_ENV_VARS,
}

CONTROLLER_OPTIONS: dict[str, Any] = {"runtime_env": {"env_vars": PROXY_ENV_VARS}}


def prepare_node_environment() -> None:
    """Before this process starts Ray: the raylet it starts, and every process it starts, read `NODE_ENV_VARS`
    and the HAProxy program where this environment has it (an explicit setting wins)."""
    program = Path(sysconfig.get_path("scripts")) / HAPROXY_PROGRAM
    haproxy = {BINARY_PATH_VARIABLE: str(program)} if program.is_file() else {}
    for name, value in {**NODE_ENV_VARS, **haproxy}.items():
        os.environ.setdefault(name, value)


def restore_normal_priority() -> str | None:
    """For the engine replica of a Ray started without `NODE_ENV_VARS` (an operator's own niceness is kept):
    bring this process back to niceness 0 before it spawns the engine's processes (they inherit it). Linux
    keeps a niceness per thread, so every thread is changed. Lowering niceness needs CAP_SYS_NICE; without
    it, returns what to do instead."""
    niceness = os.getpriority(os.PRIO_PROCESS, 0)
    if niceness <= 0 or "RAY_worker_niceness" in os.environ:
        return None
    try:
        for thread_id in os.listdir("/proc/self/task"):
            try:
                os.setpriority(os.PRIO_PROCESS, int(thread_id), 0)
            except ProcessLookupError:  # the thread ended meanwhile
                pass
    except PermissionError:
        return (
            f"the engine runs at niceness {niceness}, below the node's other processes, and may not raise "
            f"its priority: start Ray with RAY_worker_niceness=0 in its environment (see docs/deployment.md)"
        )
    return None
