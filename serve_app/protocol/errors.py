"""OpenAI's error envelope, as a value: engines and deployments return these instead of raising across Ray.

The taxonomy (R5.2): a client's mistake is a 4xx naming the `param`; a lack of capacity, or a replica that
went away, is a 503 (or 429) with `Retry-After`, which clients retry; our own fault is a 500 whose message
says so and gives an id, never an exception's text, with the whole story in the log under that id.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("agent_serve.errors")


CLIENT_CLOSED_REQUEST = 499
"""The status of a request whose client left before its answer: nobody reads it (nginx's 499 names the case
in logs)."""


@dataclass(frozen=True)
class OpenAIError:
    status_code: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    retry_after_s: float | None = None  # 429 and 503: when to try again (the `Retry-After` headers)

    def body(self) -> bytes:
        """`{"error": {message, type, param, code}}`, the shape every OpenAI client parses (R5.1)."""
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        # A message may quote the client's input, lone surrogates included: `backslashreplace` writes
        # those as the JSON escapes they came in as, so the body stays valid UTF-8 and valid JSON.
        return json.dumps({"error": error}, ensure_ascii=False).encode("utf-8", "backslashreplace")


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, "invalid_request_error", param, code)


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"The model '{model}' does not exist or you do not have access to it. GET /v1/models lists the "
        "models you may use.",
        "invalid_request_error",
        "model",
        "model_not_found",
    )


def server_error(message: str, code: str = "internal_error") -> OpenAIError:
    return OpenAIError(500, message, "server_error", None, code)


def unavailable(message: str, retry_after_s: float = 1.0, status_code: int = 503) -> OpenAIError:
    """No capacity now, or the replica serving the request went away: worth retrying, and clients do."""
    return OpenAIError(status_code, message, "server_error", None, "service_unavailable", retry_after_s)


def replica_lost() -> OpenAIError:
    """The replica serving the request died (or none is ready): a 503 worth retrying."""
    return unavailable("The server lost the replica serving this request, or has none ready; retry shortly.")


def deadline_exceeded(deadline_s: float) -> OpenAIError:
    """The request ran past the server's deadline (`server.request_deadline_s`); its generation was stopped."""
    return OpenAIError(
        504,
        f"The request took longer than the server's deadline of {deadline_s:g} s and was stopped.",
        "server_error",
        None,
        "deadline_exceeded",
    )


def internal_error(request_id: str, doing: str) -> OpenAIError:
    """Our fault, raised while `doing` something for request `request_id`: the traceback of the exception
    being handled goes to the log under the id, and the client gets the id, not the exception's text.
    Call it from an `except` block."""
    logger.exception("request %s: internal error while %s", request_id, doing)
    return server_error(
        f"The server had an internal error while {doing}. Request id: {request_id}; "
        "the server's log has the details under it."
    )


# pydantic names the union member it tried: 'str', 'list[dict[str,any]]', a tag such as 'json-schema', or a
# model's class name ('FunctionName'); OpenAI's field names are none of these.
_UNION_BRANCH = re.compile(r"^(str|int|float|bool|none|[A-Z].*|.*[\[\]-].*)$")


def param_path(location: tuple[Any, ...]) -> str | None:
    """pydantic's ('body', 'messages', 0, 'content') as OpenAI's `messages[0].content`."""
    path = ""
    for part in location:
        if part == "body":
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        elif _UNION_BRANCH.match(str(part)):
            continue
        else:
            path += f".{part}" if path else str(part)
    return path or None
