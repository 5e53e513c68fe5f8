"""Multi-head attention, its head split and merge, and the KV cache for decoding.

With H heads of width dh = d / H, head h reads features [h dh, (h+1) dh):

    Q, K, V = x_q Wq^T + bq, x_kv Wk^T + bk, x_kv Wv^T + bv        (B, L, d)
    split:   (B, L, d) -> (B, L, H, dh) -> (B, H, L, dh)           a reshape and a view
    O_h = softmax(Q_h K_h^T / sqrt(dh), masked) V_h               F.scaled_dot_product_attention
    merge:   (B, H, Lq, dh) -> (B, Lq, H, dh) -> (B, Lq, d)        one copy
    out = O Wo^T + bo

All heads and the whole batch go through each op at once: no Python loop over them.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import functional as F
from ..autograd import Tensor
from . import init
from .layers import Linear
from .module import Module, Parameter


def split_heads(x: Tensor, n_heads: int) -> Tensor:
    """(B, L, d) -> (B, H, L, d/H)."""
    batch, length, width = x.shape
    return F.permute(F.reshape(x, (batch, length, n_heads, width // n_heads)), (0, 2, 1, 3))


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, L, dh) -> (B, L, H dh), the inverse of split_heads."""
    batch, n_heads, length, head_dim = x.shape
    return F.reshape(F.permute(x, (0, 2, 1, 3)), (batch, length, n_heads * head_dim))


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    key_lengths=None,
    need_weights: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Heads q (B, H, Lq, dh) attend to k, v (B, H, Lk, dh).

    Returns the merged output (B, Lq, d) and, with need_weights, the attention
    weights (B, H, Lq, Lk) (else None). The causal mask is aligned bottom-right, so
    Lq new queries after Lk - Lq cached keys see exactly the keys up to their own.
    """
    if need_weights:
        out, weights = F.scaled_dot_product_attention(
            q, k, v, is_causal=causal, key_lengths=key_lengths, return_weights=True
        )
        return merge_heads(out), weights
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, key_lengths=key_lengths)
    return merge_heads(out), None


class KVCache:
    """Keys and values (B, H, L, dh) of one attention layer, kept between decoding steps.

    A growing cache (self-attention) appends each step's keys and values to the ones
    before; a fixed cache (cross-attention to an image) is filled once and then read.
    """

    def __init__(self, fixed: bool = False):
        self.fixed = fixed
        self.keys: Tensor | None = None
        self.values: Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def keys_values(self, project: Callable[[], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """The keys and values to attend to; `project()` computes this step's new ones,
        and is not called at all by a fixed cache that is already filled."""
        if self.fixed and self.keys is not None:
            return self.keys, self.values
        keys, values = project()
        if self.keys is not None:  # growing: (B, H, L_old + L_new, dh)
            keys = F.concat([self.keys, keys], axis=2)
            values = F.concat([self.values, values], axis=2)
        self.keys, self.values = keys, values
        return keys, values


class MultiHeadAttention(Module):
    """Multi-head attention: self-attention (causal or not) or cross-attention to a
    context, with an optional KV cache; one class for the vision encoder and the decoder.

    Two parameter layouts, chosen by `packed`, because the state dict keys are the
    checkpoint format and both are in use:
      packed=True (default), torch.nn.MultiheadAttention's names and init, so that the
        encoder's layers load into torch.nn.TransformerEncoderLayer:
          in_proj_weight (3d, d) = [Wq; Wk; Wv] (xavier uniform), in_proj_bias (3d,)
          (zeros), out_proj = Linear(d, d) with its bias zeroed.
      packed=False, the tutorial decoder's names and init (its checkpoints and its
        PyTorch twin): q_linear, k_linear, v_linear, out_linear, four Linear(d, d).
    A flag rather than one layout seen under both names: exposing one (3d, d) matrix as
    q_linear.weight etc. too would give the state dict extra keys or change them, and
    would change the decoder's initialisation. Only `_project` and `_output` read the
    layout; the attention itself is the same code for both.

    Differences from PyTorch: no dropout on the attention weights; forward returns
    (out, weights) with weights None unless need_weights=True, and then per head
    (B, H, Lq, Lk), never averaged; padding is given as key_lengths (B,) rather than
    a key_padding_mask.
    """

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True, packed: bool = True):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(
                f"MultiHeadAttention: embed_dim {embed_dim} must be divisible by "
                f"num_heads {num_heads}"
            )
        self.embed_dim, self.num_heads, self.packed = embed_dim, num_heads, packed
        if packed:
            self.in_proj_weight = Parameter(init.xavier_uniform((3 * embed_dim, embed_dim)))
            self.in_proj_bias = Parameter(init.zeros((3 * embed_dim,))) if bias else None
            self.out_proj = Linear(embed_dim, embed_dim, bias=bias)
            if bias:
                self.out_proj.bias.data[...] = 0
        else:
            self.q_linear = Linear(embed_dim, embed_dim, bias=bias)
            self.k_linear = Linear(embed_dim, embed_dim, bias=bias)
            self.v_linear = Linear(embed_dim, embed_dim, bias=bias)
            self.out_linear = Linear(embed_dim, embed_dim, bias=bias)

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        *,
        key_lengths=None,
        is_causal: bool = False,
        need_weights: bool = False,
        cache: KVCache | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """query (B, Lq, d), key and value (B, Lk, d) (default: query, i.e. self-attention;
        value defaults to key, the context of cross-attention).

        With a cache, key/value are this step's new positions: a growing cache appends
        them, a fixed one that is filled ignores them (they may be None then).
        Returns (out (B, Lq, d), weights (B, H, Lq, Lk) or None).
        """
        key = query if key is None else key
        value = key if value is None else value
        heads = self.num_heads

        def project_keys_values():  # this step's keys and values (B, H, Lk, dh)
            keys = split_heads(self._project(key, 1), heads)
            return keys, split_heads(self._project(value, 2), heads)

        q = split_heads(self._project(query, 0), heads)  # (B, H, Lq, dh)
        if cache is None:
            k, v = project_keys_values()
        else:
            k, v = cache.keys_values(project_keys_values)  # (B, H, Lk, dh)
        out, weights = attend(
            q, k, v, causal=is_causal, key_lengths=key_lengths, need_weights=need_weights
        )
        return self._output(out), weights

    def _project(self, x: Tensor, which: int) -> Tensor:
        """x W^T + b of the queries (which=0), keys (1) or values (2), (B, L, d).

        Packed: W is rows [which d, (which+1) d) of in_proj_weight, b those of in_proj_bias."""
        if not self.packed:
            return (self.q_linear, self.k_linear, self.v_linear)[which](x)
        rows = slice(which * self.embed_dim, (which + 1) * self.embed_dim)
        bias = None if self.in_proj_bias is None else self.in_proj_bias[rows]
        return F.linear(x, self.in_proj_weight[rows], bias)

    def _output(self, heads_out: Tensor) -> Tensor:
        """The output projection of the merged heads (B, Lq, d)."""
        return self.out_proj(heads_out) if self.packed else self.out_linear(heads_out)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, packed={self.packed}"
