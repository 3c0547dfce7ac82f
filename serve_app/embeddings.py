"""Embeddings for one model: inputs (text or token ids) -> engine -> an OpenAI `list` of `embedding`s.

Inputs longer than the model's window are refused, never truncated (OpenAI does the same). Vectors
are returned as the engine made them (sentence-transformers models normalize); `base64` is the
little-endian float32 bytes the official SDKs decode.
"""

from __future__ import annotations

import base64
import struct
import uuid
from dataclasses import dataclass
from typing import Any

from serve_app.engines.base import EmbeddingEngine, EmbeddingShape
from serve_app.protocol.common import valid_text
from serve_app.protocol.embeddings import Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from serve_app.protocol.errors import OpenAIError, internal_error, invalid_request


@dataclass(frozen=True)
class PlannedEmbedding:
    request: EmbeddingRequest
    id: str
    prompts: list[list[int]]
    dimensions: int | None  # None: the model's own size


class Embeddings:
    def __init__(self, model_id: str, engine: EmbeddingEngine, tokenizer: Any) -> None:
        self.model_id = model_id
        self.engine = engine
        self.tokenizer = tokenizer

    def plan(self, request: EmbeddingRequest) -> PlannedEmbedding | OpenAIError:
        shape = self.engine.embedding_shape()
        if (error := self._dimensions_error(shape, request.dimensions)) is not None:
            return error
        inputs = request.inputs()
        if not inputs:
            return invalid_request("input must not be empty.", param="input")
        limit, vocabulary = self.engine.max_model_len, len(self.tokenizer)
        prompts = []
        for i, given in enumerate(inputs):
            if isinstance(given, str):
                # With the model's [CLS]/[SEP].
                ids: list[int] = self.tokenizer.encode(valid_text(given)) if given else []
            elif any(not 0 <= t < vocabulary for t in given):
                return invalid_request(f"input {i} has token ids outside the vocabulary.", param="input")
            else:
                ids = list(given)
            if not ids:
                return invalid_request(f"input {i} is empty.", param="input")
            if len(ids) > limit:
                return invalid_request(
                    f"This model's maximum input length is {limit} tokens. However, input {i} has {len(ids)} "
                    "tokens. Please reduce the length of the input.",
                    param="input",
                    code="context_length_exceeded",
                )
            prompts.append(ids)
        shorter = request.dimensions if request.dimensions != shape.size else None
        return PlannedEmbedding(request, f"embd-{uuid.uuid4().hex}", prompts, shorter)

    def _dimensions_error(self, shape: EmbeddingShape, dimensions: int | None) -> OpenAIError | None:
        if dimensions is None or dimensions == shape.size:
            return None
        if not shape.matryoshka:
            return invalid_request(
                f"The model {self.model_id!r} makes {shape.size}-dimensional embeddings and cannot shorten them "
                f"(not a Matryoshka model): leave dimensions unset or set it to {shape.size}.",
                param="dimensions",
            )
        allowed = shape.allowed_dimensions
        if dimensions > shape.size or (allowed is not None and dimensions not in allowed):
            sizes = ", ".join(map(str, allowed)) if allowed else f"1 to {shape.size}"
            return invalid_request(f"dimensions must be one of {sizes} for {self.model_id!r}.", param="dimensions")
        return None

    async def complete(self, planned: PlannedEmbedding) -> bytes | OpenAIError:
        try:
            vectors = await self.engine.embed(planned.id, planned.prompts, planned.dimensions)
        except Exception:
            return internal_error(planned.id, "embedding")
        encode = _base64 if planned.request.encoding_format == "base64" else list
        tokens = sum(len(p) for p in planned.prompts)
        response = EmbeddingResponse(
            data=[Embedding(index=i, embedding=encode(vector)) for i, vector in enumerate(vectors)],
            model=self.model_id,
            usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        )
        return response.model_dump_json().encode()


def _base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
