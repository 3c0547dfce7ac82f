"""How our deployments call each other."""

from __future__ import annotations

from ray.serve.handle import DeploymentHandle


def by_value(handle: DeploymentHandle) -> DeploymentHandle:
    """Requests and streamed items travel by value over the replicas' gRPC channel.

    Serve's default makes every streamed item a Ray object (an RPC to report it, an object to own and
    free): with one item per token, that was the largest per-token cost of the stack (issue #7). Nothing
    here needs the object references that only the default gives.
    """
    return handle.options(_by_reference=False)
