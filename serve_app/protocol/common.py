"""Wire shapes shared by chat and text completions."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]
# Prompts of text completions and inputs of embeddings: a string, strings, token ids, or lists of them.
TextOrTokens = str | list[str] | list[int] | list[list[int]]


# JSON may escape half of a UTF-16 surrogate pair on its own (an agent pasting a file cut mid-character):
# valid JSON, but not text a tokenizer (or UTF-8) can hold. Python's JSON decoder joins the valid pairs.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD, the replacement character: any JSON string is text."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def one_per_input(given: TextOrTokens) -> list[str | list[int]]:
    """One entry per input: text, or token ids (a flat list of ints is a single input)."""
    if isinstance(given, str):
        return [given]
    if given and all(isinstance(i, int) for i in given):
        return [given]  # type: ignore[list-item]
    return list(given)  # type: ignore[arg-type]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    include_usage: bool | None = None


class VLLMSamplingExtensions(BaseModel):
    """vLLM's sampling extensions, honoured as vLLM's own server does: clients and tools written for it (its
    benchmark sends `ignore_eos`) get the same generation here. Not OpenAI's, so strict mode refuses them."""

    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, allow_inf_nan=False)
    min_tokens: int | None = Field(None, ge=0)
    ignore_eos: bool | None = None


VLLM_SAMPLING_EXTENSIONS = frozenset(VLLMSamplingExtensions.model_fields)


class SamplingFields(VLLMSamplingExtensions):
    """Request fields that chat and text completions share, with OpenAI's ranges."""

    # OpenAI adds request fields often; unknown ones are accepted and logged (or refused in strict mode).
    # Types are exact, as OpenAI checks them: "yes" is not a boolean, "0.5" is not a number.
    model_config = ConfigDict(extra="allow", strict=True)

    model: str
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    n: int | None = Field(1, ge=1, le=128)
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)  # OpenAI's: an int64
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(s for s in self.stop if s)


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = PromptTokensDetails()
    completion_tokens_details: CompletionTokensDetails = CompletionTokensDetails()

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int, reasoning_tokens: int = 0, cached_tokens: int = 0) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
            completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning_tokens),
        )
