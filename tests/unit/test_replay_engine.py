"""The replay engine: scripted text through the model's real tokenizer, token by token."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from serve_app.engines.base import GenerationDelta, GenerationRequest, SamplingOptions
from serve_app.engines.replay import ReplayEngine, ReplayScript
from tests.conftest import REPLAY_SCRIPT


def _messages(*texts: str) -> list[dict[str, Any]]:
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": t} for i, t in enumerate(texts)]


def _run(
    tokenizer: Any, messages: list[dict[str, Any]], max_tokens: int = 1000, stop: tuple[str, ...] = ()
) -> list[GenerationDelta]:
    engine = ReplayEngine(tokenizer, REPLAY_SCRIPT, max_model_len=8192, token_delay_s=0.0)
    request = GenerationRequest("r", [1, 2, 3], SamplingOptions(max_tokens=max_tokens, stop=stop), messages)

    async def collect() -> list[GenerationDelta]:
        await engine.start()
        return [delta async for delta in engine.generate(request)]

    return asyncio.run(collect())


def test_script_matches_turn_then_pattern_then_fallback() -> None:
    script = ReplayScript.load(REPLAY_SCRIPT)
    assert script.reply_for(_messages("hi")).text.startswith("Hello! I am the replay engine")
    assert script.reply_for(_messages("hi", "Hello!", "more")).text == "This is the second turn."
    assert script.reply_for(_messages("please count")).text.startswith("one two")
    assert script.reply_for(_messages("a", "b", "c", "d", "e")).text == "Fallback reply."


def test_script_without_a_match_names_the_turn(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text('replies: [{when: {turn: 0}, text: "only"}]')
    with pytest.raises(LookupError, match="no reply for turn 1"):
        ReplayScript.load(path).reply_for(_messages("a", "b", "c"))


def test_emits_the_scripted_text_token_by_token(tokenizer: Any) -> None:
    deltas = _run(tokenizer, _messages("please count"))
    text = "one two three four five six seven eight nine ten"
    assert "".join(d.text for d in deltas) == text
    assert len(deltas) == len(tokenizer.encode(text, add_special_tokens=False)) > 5
    assert [d.finish_reason for d in deltas] == [None] * (len(deltas) - 1) + ["stop"]
    assert deltas[-1].completion_tokens == len(deltas)


def test_multibyte_characters_are_never_split(tokenizer: Any) -> None:
    deltas = _run(tokenizer, _messages("unicode please"))
    assert "".join(d.text for d in deltas) == "Grüße, 世界! Ça va? 👋"
    assert all("\ufffd" not in d.text for d in deltas)


def test_token_cap_finishes_with_length(tokenizer: Any) -> None:
    deltas = _run(tokenizer, _messages("please count"), max_tokens=3)
    assert deltas[-1].finish_reason == "length"
    assert deltas[-1].completion_tokens == 3
    assert "".join(d.text for d in deltas) == tokenizer.decode(tokenizer.encode("one two three four")[:3])


def test_stop_sequence_ends_before_it_and_is_not_returned(tokenizer: Any) -> None:
    deltas = _run(tokenizer, _messages("please count"), stop=(" four",))
    assert "".join(d.text for d in deltas) == "one two three"
    assert deltas[-1].finish_reason == "stop"


def test_uncached_prefills_take_turns_on_one_engine(
    tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cost model of simulated deployments: a replica computes one prompt at a time."""
    script = tmp_path / "s.yaml"
    script.write_text('prefill_s_per_token: 0.001\nreplies: [{text: "ok"}]')
    sleeping, most = 0, 0
    real_sleep = asyncio.sleep

    async def counted_sleep(seconds: float) -> None:
        nonlocal sleeping, most
        sleeping += 1
        most = max(most, sleeping)
        for _ in range(3):  # let the other request run meanwhile, if it may
            await real_sleep(0)
        sleeping -= 1

    engine = ReplayEngine(tokenizer, script, max_model_len=8192, token_delay_s=0.0)
    monkeypatch.setattr("serve_app.engines.replay.asyncio.sleep", counted_sleep)

    async def one(first_token: int) -> list[GenerationDelta]:
        request = GenerationRequest("r", [first_token, *range(100)], SamplingOptions(max_tokens=5), _messages("hi"))
        return [delta async for delta in engine.generate(request)]

    async def both() -> tuple[list[GenerationDelta], list[GenerationDelta]]:
        return await asyncio.gather(one(1), one(2))

    first, second = asyncio.run(both())
    assert most == 1
    assert first[-1].finish_reason == second[-1].finish_reason == "stop"
