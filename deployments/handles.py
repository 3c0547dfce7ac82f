"""How our deployments call each other."""

from __future__ import annotations

from typing import Any, cast

from ray.serve.handle import DeploymentHandle, DeploymentResponse, DeploymentResponseGenerator


def by_value(handle: DeploymentHandle) -> DeploymentHandle:
    """Requests and streamed items travel by value over the replicas' gRPC channel.

    Serve's default makes every streamed item a Ray object (an RPC to report it, an object to own and
    free): with one item per token, that was the largest per-token cost of the stack (issue #7). Nothing
    here needs the object references that only the default gives.
    """
    return handle.options(_by_reference=False)


def streamed(response: DeploymentResponse[Any] | DeploymentResponseGenerator[Any]) -> DeploymentResponseGenerator[Any]:
    """The response of a call made through `.options(stream=True)`: always a generator (Serve types
    `remote` as returning either kind)."""
    return cast("DeploymentResponseGenerator[Any]", response)
