"""`/v1/completions` wire shapes (the legacy text-completion API, still used by eval harnesses)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from serve_app.protocol.common import FinishReason, SamplingFields, TextOrTokens, Usage, one_per_input


class CompletionRequest(SamplingFields):
    prompt: TextOrTokens
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for this endpoint
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=20)
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)

    def prompts(self) -> list[str | list[int]]:
        return one_per_input(self.prompt)


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None


class Completion(BaseModel):
    """The whole response, and also each streamed chunk (OpenAI streams the same object type)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    system_fingerprint: str
    usage: Usage | None = None
