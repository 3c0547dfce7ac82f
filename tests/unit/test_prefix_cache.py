"""The replay engine's prefix-cache model counts cached prompt tokens as vLLM does (whole blocks of a shared
prefix, never the prompt's last token)."""

from __future__ import annotations

from serve_app.engines.prefix_cache import BLOCK_TOKENS, PrefixCacheModel


def test_a_new_prompt_has_nothing_cached_and_a_repeat_all_but_its_last_block() -> None:
    cache = PrefixCacheModel()
    prompt = list(range(3 * BLOCK_TOKENS))
    assert cache.serve(prompt) == 0
    assert cache.serve(prompt) == 2 * BLOCK_TOKENS  # the last token (so its block) is computed again
    assert cache.serve([*prompt, 7]) == 3 * BLOCK_TOKENS


def test_only_whole_blocks_of_a_shared_prefix_count() -> None:
    cache = PrefixCacheModel()
    cache.serve(list(range(50)))
    assert cache.serve([*range(40), 99, 98, 97]) == 2 * BLOCK_TOKENS  # the third block differs at token 40
    assert cache.serve([1000, *range(1, 50)]) == 0  # a different first token: later blocks differ too


def test_least_recently_used_blocks_are_evicted() -> None:
    cache = PrefixCacheModel(capacity_blocks=2)
    first, second = [1] * (2 * BLOCK_TOKENS + 1), [2] * (2 * BLOCK_TOKENS + 1)
    cache.serve(first)
    cache.serve(second)
    assert cache.serve(first) == 0
