"""Ray's "cannot serve this now" errors become 503s (or Serve's 429) with a retry hint at the ingress
(deployments/handles.py): capacity, not the client's fault and not a bug (R5.2)."""

from __future__ import annotations

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError

from deployments.handles import UNAVAILABLE, unavailable_error


@pytest.mark.parametrize(
    "exc",
    [ActorDiedError(), ActorUnavailableError("unreachable", None), ReplicaUnavailableError("replica-1")],
    ids=["died", "unreachable", "replica-gone"],
)
def test_a_replica_that_went_away_is_a_503(exc: BaseException) -> None:
    assert isinstance(exc, UNAVAILABLE)
    error = unavailable_error(exc)
    assert (error.status_code, error.code, error.retry_after_s) == (503, "service_unavailable", 1.0)


def test_a_full_queue_keeps_serves_status_and_hint() -> None:
    error = unavailable_error(BackPressureError(10, 10, status_code=429, retry_after_s=4.0))
    assert (error.status_code, error.retry_after_s) == (429, 4.0)
