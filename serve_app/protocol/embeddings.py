"""`/v1/embeddings` wire shapes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from serve_app.protocol.common import TextOrTokens, one_per_input


class EmbeddingRequest(BaseModel):
    # OpenAI adds request fields often; unknown ones are accepted and logged (or refused in strict mode).
    model_config = ConfigDict(extra="allow", strict=True)

    model: str
    input: TextOrTokens
    # The official SDKs ask for base64 unless told otherwise (and decode it); the API's default is float.
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    def inputs(self) -> list[str | list[int]]:
        return one_per_input(self.input)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str: little-endian float32 bytes, base64-encoded


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
