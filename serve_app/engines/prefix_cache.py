"""A model of an engine's prefix cache, for the replay engine: which leading tokens of a prompt an engine
that had served the earlier prompts would find cached, counted as vLLM counts them.

vLLM caches KV in blocks (16 tokens by default on GPU, 128 on CPU); a block is reused when it and every
block before it hold the same tokens, so a block's identity is the hash of all tokens up to its end. At least the
prompt's last token is always computed (its logits start the answer), so a prompt never counts as wholly
cached. Old blocks are evicted least recently used, as vLLM's free-block queue does.
"""

from __future__ import annotations

from collections import OrderedDict

BLOCK_TOKENS = 16


class PrefixCacheModel:
    def __init__(self, capacity_blocks: int = 65536) -> None:
        self._capacity = capacity_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()  # block identity -> None, least recent first

    def serve(self, prompt: list[int]) -> int:
        """How many of the prompt's tokens are cached; the prompt's own blocks are cached from now on."""
        cached, whole_blocks = 0, (len(prompt) - 1) // BLOCK_TOKENS  # the last token is always computed
        identity = 0
        for block in range(len(prompt) // BLOCK_TOKENS):
            identity = hash((identity, tuple(prompt[block * BLOCK_TOKENS : (block + 1) * BLOCK_TOKENS])))
            if identity in self._blocks:
                self._blocks.move_to_end(identity)
                if cached == block * BLOCK_TOKENS and block < whole_blocks:
                    cached += BLOCK_TOKENS
            else:
                self._blocks[identity] = None
        while len(self._blocks) > self._capacity:
            self._blocks.popitem(last=False)
        return cached
