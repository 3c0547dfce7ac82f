"""OpenAI's error envelope, as a value: engines and deployments return these instead of raising across Ray."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class OpenAIError:
    status_code: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None

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
        f"The model '{model}' does not exist. GET /v1/models lists the served models.",
        "invalid_request_error",
        "model",
        "model_not_found",
    )


def server_error(message: str, code: str = "internal_error") -> OpenAIError:
    return OpenAIError(500, message, "server_error", None, code)
