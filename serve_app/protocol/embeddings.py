"""`/v1/embeddings` wire shapes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# A string, strings, token ids, or lists of token ids; OpenAI caps the list at 2048 entries.
EmbeddingInput = str | list[str] | list[int] | list[list[int]]
MAX_INPUTS = 2048


class EmbeddingRequest(BaseModel):
    # OpenAI adds request fields often; unknown ones are accepted and logged (or refused in strict mode).
    model_config = ConfigDict(extra="allow")

    model: str
    input: EmbeddingInput
    # The official SDKs ask for base64 unless told otherwise (and decode it); the API's default is float.
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    def inputs(self) -> list[str | list[int]]:
        """One entry per input: text, or token ids."""
        given = self.input
        if isinstance(given, str):
            return [given]
        if given and all(isinstance(i, int) for i in given):
            return [given]  # type: ignore[list-item]
        return list(given)  # type: ignore[arg-type]


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
