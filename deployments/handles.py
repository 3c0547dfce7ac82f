"""How our deployments call each other."""

from __future__ import annotations

from typing import Any, cast

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponse, DeploymentResponseGenerator

from serve_app.protocol.errors import OpenAIError, replica_lost, unavailable

# A deployment that cannot take the request now, or a replica that died or became unreachable while it had
# it: capacity, not a fault of the request or a bug, so a 503 (or Serve's own 429) that clients retry.
UNAVAILABLE = (BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError, RayActorError)


def by_value(handle: DeploymentHandle) -> DeploymentHandle:
    """Requests and streamed items travel by value over the replicas' gRPC channel.

    Serve's default makes every streamed item a Ray object (an RPC to report it, an object to own and
    free): with one item per token, that was the largest per-token cost of the stack (issue #7). Nothing
    here needs the object references that only the default gives.
    """
    return handle.options(_by_reference=False)


def unavailable_error(exc: BaseException) -> OpenAIError:
    """The 503 (or 429) for one of `UNAVAILABLE`, with Serve's own retry hint where it has one."""
    if isinstance(exc, BackPressureError):
        return unavailable(
            "The server is at capacity; retry shortly.", exc.retry_after_s or 1.0, status_code=exc.status_code
        )
    return replica_lost()


def streamed(response: DeploymentResponse[Any] | DeploymentResponseGenerator[Any]) -> DeploymentResponseGenerator[Any]:
    """The response of a call made through `.options(stream=True)`: always a generator (Serve types
    `remote` as returning either kind)."""
    return cast("DeploymentResponseGenerator[Any]", response)
