"""The VLM in PyTorch, module for module, under minivlm's parameter names.

`TorchVLM(config).load_state_dict(...)` takes minivlm's `VLM(config).state_dict()` (as
torch tensors) and the other way round, for every fusion kind ("cross", "gated",
"prefix"), both norms and token lags. The tests check that outputs and every gradient
agree in float64; `minivlm bench train` times the two after checking the same.

This module imports torch: import it only where PyTorch is installed (minivlm.bench
does so lazily).
"""

from __future__ import annotations

import torch
import torch.nn.functional as TF
from torch import nn as tnn

from ..models import VLMConfig


class TorchAttention(tnn.Module):
    """minivlm's multi-head attention: q from x, k and v from the context (x by default)."""

    def __init__(self, d_model: int, n_heads: int, causal: bool = False):
        super().__init__()
        self.n_heads, self.causal = n_heads, causal
        self.q_linear = tnn.Linear(d_model, d_model)
        self.k_linear = tnn.Linear(d_model, d_model)
        self.v_linear = tnn.Linear(d_model, d_model)
        self.out_linear = tnn.Linear(d_model, d_model)

    def split(self, x):  # (B, L, d) -> (B, H, L, d / H)
        batch, length, width = x.shape
        return x.view(batch, length, self.n_heads, width // self.n_heads).transpose(1, 2)

    def forward(self, x, context=None):
        context = x if context is None else context
        q, k, v = (
            self.split(self.q_linear(x)),
            self.split(self.k_linear(context)),
            self.split(self.v_linear(context)),
        )
        out = TF.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, H, L, dh)
        return self.out_linear(out.transpose(1, 2).reshape(x.shape))


class TorchVisionEncoder(tnn.Module):
    """Patches (torch.unfold order) -> linear + position -> encoder layers -> LayerNorm."""

    def __init__(self, c: VLMConfig):
        super().__init__()
        self.patch_size = c.patch_size
        self.patch_embedding = tnn.Linear(3 * c.patch_size**2, c.d_model)
        self.position_embedding = tnn.Parameter(0.02 * torch.randn(1, c.n_patches, c.d_model))
        self.transformer_layers = tnn.ModuleList(
            tnn.TransformerEncoderLayer(
                c.d_model,
                c.n_heads,
                c.ffn_mult * c.d_model,
                c.encoder_dropout,
                batch_first=True,
                norm_first=c.norm == "pre",
            )  # fmt: skip
            for _ in range(c.n_encoder_layers)
        )
        self.norm = tnn.LayerNorm(c.d_model)

    def forward(self, images):  # (B, 3, S, S) -> (B, N, d)
        patches = TF.unfold(images, self.patch_size, stride=self.patch_size).transpose(1, 2)
        x = self.patch_embedding(patches) + self.position_embedding
        for layer in self.transformer_layers:
            x = layer(x)
        return self.norm(x)


class TorchVLMBlock(tnn.Module):
    """Causal self-attention, cross-attention to the image (not with "prefix"), MLP."""

    def __init__(self, c: VLMConfig):
        super().__init__()
        d, self.fusion, self.pre = c.d_model, c.fusion, c.norm == "pre"
        if c.fusion == "gated":
            self.cross_gate = tnn.Parameter(torch.zeros(1))
            self.ff_gate = tnn.Parameter(torch.zeros(1))
        self.self_attention = TorchAttention(d, c.n_heads, causal=True)
        if c.fusion != "prefix":
            self.cross_attention = TorchAttention(d, c.n_heads)
        hidden = c.ffn_mult * d
        self.feed_forward = tnn.Sequential(tnn.Linear(d, hidden), tnn.ReLU(), tnn.Linear(hidden, d))
        self.norm1 = tnn.LayerNorm(d)
        if c.fusion != "prefix":
            self.norm2 = tnn.LayerNorm(d)
        self.norm3 = tnn.LayerNorm(d)

    def sublayer(self, x, norm, f, gate=None):
        """post-norm: norm(x + g f(x)); pre-norm: x + g f(norm(x)); g = tanh(gate) or 1."""
        out = f(norm(x) if self.pre else x)
        x = x + (out if gate is None else torch.tanh(gate) * out)
        return x if self.pre else norm(x)

    def forward(self, x, image):
        gated = self.fusion == "gated"
        x = self.sublayer(x, self.norm1, self.self_attention)
        if self.fusion != "prefix":
            cross = self.cross_gate if gated else None
            x = self.sublayer(x, self.norm2, lambda h: self.cross_attention(h, image), cross)
        return self.sublayer(x, self.norm3, self.feed_forward, self.ff_gate if gated else None)


class TorchVLM(tnn.Module):
    """images (B, 3, S, S), tokens (B, T) -> logits (B, T, V), as minivlm.models.VLM."""

    def __init__(self, c: VLMConfig):
        super().__init__()
        self.config = c
        self.vision_encoder = TorchVisionEncoder(c)
        if c.fusion == "prefix":
            self.image_projection = tnn.Linear(c.d_model, c.d_model)
        self.token_embedding = tnn.Embedding(c.vocab_size, c.d_model)
        self.position_embedding = tnn.Embedding(c.max_len, c.d_model)
        self.lag_embeddings = tnn.ModuleList(  # row vocab_size: "no token that far back"
            tnn.Embedding(c.vocab_size + 1, c.d_model) for _ in range(c.token_lags)
        )
        self.vlm_blocks = tnn.ModuleList(TorchVLMBlock(c) for _ in range(c.n_blocks))
        if c.norm == "pre":
            self.final_norm = tnn.LayerNorm(c.d_model)
        self.output_projection = tnn.Linear(c.d_model, c.vocab_size)

    def forward(self, images, tokens):
        image = self.vision_encoder(images)  # (B, N, d)
        length = tokens.shape[1]
        x = self.token_embedding(tokens) + self.position_embedding(
            torch.arange(length, device=tokens.device)
        )  # (B, T, d)
        for lag, table in enumerate(self.lag_embeddings, start=1):  # token t - lag
            earlier = TF.pad(tokens, (lag, 0), value=self.config.vocab_size)
            x = x + table(earlier[:, :length])
        if self.config.fusion == "prefix":
            x = torch.cat([self.image_projection(image), x], dim=1)  # (B, N + T, d)
        for block in self.vlm_blocks:
            x = block(x, image)
        x = x[:, -length:]
        if self.config.norm == "pre":
            x = self.final_norm(x)
        return self.output_projection(x)


def twin_of(config: VLMConfig, state: dict, device: str = "cpu") -> TorchVLM:
    """A TorchVLM holding minivlm's weights (`VLM.state_dict()`: NumPy arrays) in their
    dtype, on `device`."""
    tensors = {name: torch.from_numpy(array) for name, array in state.items()}
    twin = TorchVLM(config).to(dtype=next(iter(tensors.values())).dtype)
    twin.load_state_dict(tensors)
    return twin.to(device)
