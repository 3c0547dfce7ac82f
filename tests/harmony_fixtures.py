"""gpt-oss completions rendered by OpenAI's own `openai-harmony` library, as the model would produce them."""

from __future__ import annotations

import functools
from typing import Any

from openai_harmony import HarmonyEncodingName, Message, Role, load_harmony_encoding


@functools.cache
def _encoding() -> Any:
    return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)


def analysis(text: str) -> Message:
    return Message.from_role_and_content(Role.ASSISTANT, text).with_channel("analysis")


def final(text: str) -> Message:
    return Message.from_role_and_content(Role.ASSISTANT, text).with_channel("final")


def preamble(text: str) -> Message:
    """A user-visible `commentary` message without recipient (gpt-oss says what it is about to do)."""
    return Message.from_role_and_content(Role.ASSISTANT, text).with_channel("commentary")


def call(name: str, arguments: str) -> Message:
    return (
        Message.from_role_and_content(Role.ASSISTANT, arguments)
        .with_channel("commentary")
        .with_recipient(f"functions.{name}")
        .with_content_type("<|constrain|>json")
    )


def completion(*messages: Message) -> str:
    """The text after the prompt's closing `<|start|>assistant`, special tokens kept (as the engine emits)."""
    encoding = _encoding()
    text = "".join(encoding.decode(encoding.render(m)) for m in messages)
    return text.removeprefix("<|start|>assistant")
