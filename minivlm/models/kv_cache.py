"""DecodeCache: what step-by-step decoding keeps so that each step costs one position.

Per block, the self-attention keys and values of every position decoded so far (a
growing KVCache) and the cross-attention keys and values of the image (a fixed
KVCache, projected once on the first step and then only read). With "prefix" fusion
the image's patch tokens are the first entries of the self-attention caches. A model
with token_lags also keeps the last token_lags token ids, which the next step embeds.
"""

from __future__ import annotations

from ..nn import KVCache


class BlockCache:
    def __init__(self):
        self.self_attention = KVCache()
        self.cross_attention = KVCache(fixed=True)


class DecodeCache:
    def __init__(self, n_blocks: int):
        self.blocks = [BlockCache() for _ in range(n_blocks)]
        self.length = 0  # text positions decoded so far
        self.recent_ids = None  # (B, token_lags) the last ids decoded, for lagged embeddings

    def __repr__(self) -> str:
        return f"DecodeCache(blocks={len(self.blocks)}, length={self.length})"
