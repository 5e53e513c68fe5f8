"""TransformerEncoderLayer: torch.nn.TransformerEncoderLayer with batch_first=True.

Post-norm (PyTorch's default, norm_first=False):
    x = norm1(x + dropout1(self_attn(x)))
    x = norm2(x + dropout2(linear2(dropout(relu(linear1(x))))))
Pre-norm (norm_first=True):
    x = x + dropout1(self_attn(norm1(x)))
    x = x + dropout2(linear2(dropout(relu(linear1(norm2(x))))))

The parameter names are PyTorch's, so weights load either way. One difference:
PyTorch's self_attn also applies dropout to the attention weights in training mode,
ours does not; in eval mode (no dropout anywhere) the two compute the same function.
"""

from __future__ import annotations

from .. import functional as F
from ..autograd import Tensor
from .attention import MultiHeadAttention
from .layers import Dropout, LayerNorm, Linear
from .module import Module

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


class TransformerEncoderLayer(Module):
    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        layer_norm_eps: float = 1e-5,
        norm_first: bool = False,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"TransformerEncoderLayer: activation must be one of {list(ACTIVATIONS)}, "
                f"got {activation!r}"
            )
        self.activation, self.norm_first = activation, norm_first
        self.self_attn = MultiHeadAttention(d_model, nhead)
        self.linear1 = Linear(d_model, dim_feedforward)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model)
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)

    def forward(self, src: Tensor, key_lengths=None, is_causal: bool = False) -> Tensor:
        """src (B, L, d) -> (B, L, d); key_lengths (B,) hides padded positions as keys."""
        x = src
        if self.norm_first:
            x = x + self._attention_block(self.norm1(x), key_lengths, is_causal)
            return x + self._feed_forward_block(self.norm2(x))
        x = self.norm1(x, residual=self._attention_block(x, key_lengths, is_causal))
        return self.norm2(x, residual=self._feed_forward_block(x))  # norm2(x + f(x))

    def _attention_block(self, x: Tensor, key_lengths, is_causal: bool) -> Tensor:
        out, _ = self.self_attn(x, key_lengths=key_lengths, is_causal=is_causal)
        return self.dropout1(out)

    def _feed_forward_block(self, x: Tensor) -> Tensor:
        hidden = self.dropout(
            ACTIVATIONS[self.activation](self.linear1(x))
        )  # (B, L, dim_feedforward)
        return self.dropout2(self.linear2(hidden))
