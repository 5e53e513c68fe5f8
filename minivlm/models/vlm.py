"""The vision-language model: a vision encoder and a text decoder that reads the image.

    images (B, 3, S, S) -> vision_encoder -> image features (B, N, d)
    tokens (B, T) -> token_embedding + position_embedding      (B, T, d)
      -> vlm_blocks, each (post-norm, the reference):
           x = norm1(x + self_attention(x))                   causal, text to text
           x = norm2(x + cross_attention(x, image))           text queries, image keys/values
           x = norm3(x + feed_forward(x))                     Linear(d, 4d), ReLU, Linear(4d, d)
      -> output_projection -> logits (B, T, V)

Fusion kinds (config.fusion):
  "cross"  as above.
  "gated"  Flamingo: x = norm2(x + tanh(cross_gate) cross_attention(x, image)) and
           x = norm3(x + tanh(ff_gate) feed_forward(x)); both gates start at 0, so the
           untrained model is the text-only one and the image's influence is learned.
  "prefix" LLaVA-style early fusion: image_projection(image features) is placed before
           the text, and blocks of causal self-attention and MLP only (norm1, norm3; no
           cross_attention, no norm2) run over the one sequence (N + T, d). Logits are
           returned for the text positions only.
With config.norm == "pre" every sublayer is x = x + f(norm(x)) instead, and a final_norm
comes before output_projection. With config.token_lags = K > 0 the text input also adds
sum_{j=1..K} lag_embeddings[j-1](token t-j): each position sees its K previous words.
"""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ..autograd import Tensor
from ..backend import get_array_module, needs_value_check, to_device
from ..nn import (
    Embedding,
    LayerNorm,
    Linear,
    Module,
    ModuleList,
    MultiHeadAttention,
    Parameter,
    ReLU,
    Sequential,
    init,
)
from .config import FUSIONS, VLMConfig
from .kv_cache import BlockCache, DecodeCache
from .loss import next_token_loss
from .vision import VisionEncoder


class VLMBlock(Module):
    """Causal self-attention, cross-attention to the image (not with "prefix"), MLP."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        ffn_mult: int = 4,
        fusion: str = "cross",
        norm_first: bool = False,
    ):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"VLMBlock: fusion must be one of {FUSIONS}, got {fusion!r}")
        self.fusion, self.norm_first = fusion, norm_first
        if fusion == "gated":
            self.cross_gate = Parameter(init.zeros((1,)))
            self.ff_gate = Parameter(init.zeros((1,)))
        # four Linear layers each (q_linear, k_linear, v_linear, out_linear), not packed
        self.self_attention = MultiHeadAttention(d_model, n_heads, packed=False)
        if fusion != "prefix":
            self.cross_attention = MultiHeadAttention(d_model, n_heads, packed=False)
        self.feed_forward = Sequential(
            Linear(d_model, ffn_mult * d_model), ReLU(), Linear(ffn_mult * d_model, d_model)
        )
        self.norm1 = LayerNorm(d_model)
        if fusion != "prefix":
            self.norm2 = LayerNorm(d_model)
        self.norm3 = LayerNorm(d_model)

    def forward(
        self,
        x: Tensor,
        image_features: Tensor | None = None,
        cache: BlockCache | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """x (B, L, d) -> (B, L, d), and with need_weights the attention weights to draw:
        the cross-attention's (B, H, L, N), or with "prefix" the self-attention's (B, H, L, Lk)."""
        gated = self.fusion == "gated"
        attended, weights = self.self_attention(
            self._sublayer_input(x, self.norm1),
            is_causal=True,
            cache=None if cache is None else cache.self_attention,
            need_weights=need_weights and self.fusion == "prefix",
        )
        x = self._residual(x, attended, self.norm1)
        if self.fusion != "prefix":
            attended, weights = self.cross_attention(
                self._sublayer_input(x, self.norm2),
                image_features,
                cache=None if cache is None else cache.cross_attention,
                need_weights=need_weights,
            )
            x = self._residual(x, attended, self.norm2, self.cross_gate if gated else None)
        hidden = self.feed_forward(self._sublayer_input(x, self.norm3))
        return self._residual(x, hidden, self.norm3, self.ff_gate if gated else None), weights

    def _sublayer_input(self, x: Tensor, norm: LayerNorm) -> Tensor:
        return norm(x) if self.norm_first else x  # pre-norm normalises what goes in

    def _residual(
        self, x: Tensor, out: Tensor, norm: LayerNorm, gate: Parameter | None = None
    ) -> Tensor:
        """x + tanh(gate) out (or x + out), then the post-norm normalises the sum."""
        if gate is not None:
            out = F.tanh(gate) * out
        return x + out if self.norm_first else norm(x, residual=out)  # one op: norm(x + out)

    def extra_repr(self) -> str:
        return f"fusion={self.fusion!r}, norm_first={self.norm_first}"


class VLM(Module):
    def __init__(self, config: VLMConfig):
        super().__init__()
        self.config = config
        c, norm_first = config, config.norm == "pre"
        self.vision_encoder = VisionEncoder(
            c.image_size,
            c.patch_size,
            c.d_model,
            c.n_heads,
            c.n_encoder_layers,
            dropout=c.encoder_dropout,
            ffn_mult=c.ffn_mult,
            norm_first=norm_first,
        )
        if c.fusion == "prefix":
            self.image_projection = Linear(c.d_model, c.d_model)
        self.token_embedding = Embedding(c.vocab_size, c.d_model)
        self.position_embedding = Embedding(c.max_len, c.d_model)
        # one table per lag; row vocab_size stands for "before the first token"
        self.lag_embeddings = ModuleList(
            Embedding(c.vocab_size + 1, c.d_model) for _ in range(c.token_lags)
        )
        self.vlm_blocks = ModuleList(
            VLMBlock(c.d_model, c.n_heads, c.ffn_mult, c.fusion, norm_first)
            for _ in range(c.n_blocks)
        )
        if norm_first:
            self.final_norm = LayerNorm(c.d_model)
        self.output_projection = Linear(c.d_model, c.vocab_size)

    def forward(self, images, tokens, targets=None, weights=None) -> Tensor | tuple[Tensor, Tensor]:
        """images (B, 3, S, S), tokens (B, T) -> logits (B, T, vocab_size).

        With targets (B, T) (the next tokens, IGNORE_INDEX where nothing is trained)
        returns (logits, loss), the loss being next_token_loss (see models/loss.py),
        weighted per target by weights (B, T) when given.
        """
        logits = self.decode(tokens, self.encode_images(images))  # (B, T, V)
        if targets is None:
            if weights is not None:
                raise ValueError("weights: given without targets; expected targets (B, T) too")
            return logits
        return logits, next_token_loss(logits, targets, weights)

    def encode_images(self, images) -> Tensor:
        """images (B, 3, S, S) -> image features (B, N, d), what decode() reads."""
        return self.vision_encoder(images)

    def new_cache(self) -> DecodeCache:
        return DecodeCache(self.config.n_blocks)

    def decode(
        self,
        tokens,
        image_features: Tensor | None,
        cache: DecodeCache | None = None,
        start: int | None = None,
        return_attention: bool = False,
    ):
        """Logits (B, T, V) of tokens (B, T) at text positions start .. start + T - 1.

        With a cache (from new_cache()), call it first with the prompt and then with each
        new token: the image is read on the first call only (image_features may be None
        after it), and `start` defaults to the positions the cache already holds.
        With return_attention, returns (logits, weights), weights a list with one
        (B, H, T, N) array per block: how each text position attends to each patch
        (for "prefix", the self-attention weights from text to the image tokens).
        """
        c = self.config
        start = self._check_start(cache, start)
        ids = self.check_tokens(tokens, start)  # (B, T)
        batch, length = ids.shape
        first_call = cache is None or cache.length == 0
        if first_call:
            image_features = self.check_image_features(image_features, batch)
        xp = get_array_module(self.token_embedding.weight.data)
        positions = xp.arange(start, start + length)
        x = self.token_embedding(ids) + self.position_embedding(positions)  # (B, T, d)
        if c.token_lags:
            x = x + self.lagged_embeddings(ids, cache, start)
        n_prefix = 0
        if c.fusion == "prefix" and first_call:
            x = F.concat([self.image_projection(image_features), x], axis=1)  # (B, N + T, d)
            n_prefix = c.n_patches
        attention = []
        for index, block in enumerate(self.vlm_blocks):
            block_cache = cache.blocks[index] if cache is not None else None
            x, weights = block(x, image_features, block_cache, need_weights=return_attention)
            if return_attention:
                attention.append(
                    weights[:, :, n_prefix:, : c.n_patches] if c.fusion == "prefix" else weights
                )
        if n_prefix:
            x = x[:, n_prefix:]  # text positions (B, T, d)
        if c.norm == "pre":
            x = self.final_norm(x)
        logits = self.output_projection(x)  # (B, T, V)
        if cache is not None:
            cache.length = start + length
        return (logits, attention) if return_attention else logits

    def lagged_embeddings(self, ids, cache: DecodeCache | None, start: int) -> Tensor:
        """sum_j lag_embeddings[j-1][id_{t-j}] for j = 1..token_lags, (B, T, d).

        Position t sees the words just before it in its own input, so a word can be
        matched together with its neighbours ("purple star" -> the "large" before it)
        without first learning an attention head that looks one position back. Ids
        before the first token read the table's last row; with a cache the earlier ids
        are the last ones it was given.
        """
        lags, (batch, length) = self.config.token_lags, ids.shape
        xp = get_array_module(ids)
        if cache is not None and cache.length > 0:
            earlier = cache.recent_ids  # (B, lags)
        elif start == 0:
            earlier = xp.full((batch, lags), self.config.vocab_size, dtype=ids.dtype)
        else:
            raise ValueError(
                f"start: got {start} without a cache; a model with token_lags="
                f"{lags} embeds the tokens before each position, so decode from 0 or "
                "with a cache"
            )
        context = xp.concatenate([earlier, ids], axis=1)  # (B, lags + T)
        if cache is not None:
            cache.recent_ids = context[:, -lags:]
        total = None
        for j, table in enumerate(self.lag_embeddings, start=1):
            lagged = table(context[:, lags - j : lags - j + length])  # (B, T, d): id_{t-j}
            total = lagged if total is None else total + lagged
        return total

    # -- input checks -------------------------------------------------------------
    def _check_start(self, cache: DecodeCache | None, start: int | None) -> int:
        if cache is None:
            start = 0 if start is None else start
        elif start is None:
            start = cache.length
        elif start != cache.length:
            raise ValueError(
                f"start: got {start}, expected {cache.length} (the positions the cache holds)"
            )
        if not isinstance(start, (int, np.integer)) or start < 0:
            raise ValueError(f"start: expected a non-negative integer, got {start!r}")
        return int(start)

    def check_tokens(self, tokens, start: int = 0):
        """tokens as an int64 array (B, T) on the weights' device, or a clear error."""
        c = self.config
        ids = tokens.data if isinstance(tokens, Tensor) else tokens
        ids = ids if hasattr(ids, "dtype") else np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"tokens: expected integer ids, got dtype {ids.dtype}")
        if ids.ndim != 2 or 0 in ids.shape:
            raise ValueError(
                f"tokens: expected shape (B, T) with B, T >= 1, got {tuple(ids.shape)}"
            )
        if start + ids.shape[1] > c.max_len:
            raise ValueError(
                f"tokens: {ids.shape[1]} positions from start {start} exceed max_len {c.max_len}; "
                f"expected at most {c.max_len - start}"
            )
        if needs_value_check(ids):
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= c.vocab_size:
                raise ValueError(
                    f"tokens: expected ids in 0..{c.vocab_size - 1} (vocab_size {c.vocab_size}), "
                    f"got {low if low < 0 else high}"
                )
        return to_device(ids, self.token_embedding.weight.device).astype(np.int64, copy=False)

    def check_image_features(self, image_features, batch: int) -> Tensor:
        c = self.config
        expected = (batch, c.n_patches, c.d_model)
        if not isinstance(image_features, Tensor):
            raise TypeError(
                f"image_features: expected a Tensor of shape {expected} from encode_images(), "
                f"got {type(image_features).__name__}"
            )
        if image_features.shape != expected:
            raise ValueError(
                f"image_features: expected shape {expected}, got {image_features.shape}"
            )
        return image_features

    def extra_repr(self) -> str:
        return f"fusion={self.config.fusion!r}, norm={self.config.norm!r}"
