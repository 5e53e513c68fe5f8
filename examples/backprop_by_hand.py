"""One attention head, its gradients computed three ways.

What it teaches: the backward of softmax attention is five lines of matrix algebra,
and you can check them yourself. For one causal self-attention head, q, k, v (L, d):

1. by hand, in NumPy: the forward (scores, probs, out) and the backward written out
   line by line, with the names of minivlm/functional/attention.py (d_probs, d_scores);
2. with the engine: F.scaled_dot_product_attention, then Tensor.backward; and the
   blocked kernel of kernels_cpu (small tiles, so the online softmax really runs
   block by block), which saves only out and lse;
3. with finite differences: central differences of Phi = sum(d_out * out), one element
   of q, k, v at a time.

Every gradient is compared across the three. The derivation is docs/backprop/attention.md.

    python examples/backprop_by_hand.py [--quick]
"""

from __future__ import annotations

import argparse
import math

import numpy as np

import minivlm
from minivlm import F
from minivlm.kernels_cpu import flash_attention_backward, flash_attention_forward

AGREEMENT = 1e-6  # float64: every pair of gradients should agree far better than this


def causal_mask(length: int) -> np.ndarray:
    """(L, L) bool, True where query i may see key j (j <= i)."""
    return np.arange(length)[None, :] <= np.arange(length)[:, None]


def forward_by_hand(q, k, v, scale):  # q, k, v (L, d)
    scores = scale * q @ k.T  # S (L, L)
    scores = np.where(causal_mask(len(q)), scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True)  # every causal row sees key 0
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)  # P (L, L), 0 above the diagonal
    return probs @ v, probs  # O (L, d), P


def backward_by_hand(q, k, v, probs, d_out, scale):
    # forward was O = P V, so
    d_v = probs.T @ d_out  # (L, d)  dV = P^T dO
    d_probs = d_out @ v.T  # (L, L)  dP = dO V^T
    # P = softmax(S) row by row, so dS = P * (dP - rowsum(dP * P))
    d_scores = probs * (d_probs - (d_probs * probs).sum(axis=-1, keepdims=True))
    # S = scale Q K^T, so
    d_q = scale * d_scores @ k  # (L, d)
    d_k = scale * d_scores.T @ q  # (L, d)
    return d_q, d_k, d_v


def engine_gradients(q, k, v, d_out):
    """The engine's naive path: F.scaled_dot_product_attention, then backward(d_out)."""
    q_t, k_t, v_t = (
        minivlm.tensor(x[None, None], requires_grad=True, dtype=np.float64) for x in (q, k, v)
    )
    out = F.scaled_dot_product_attention(q_t, k_t, v_t, is_causal=True, impl="naive")
    out.backward(d_out[None, None])
    return out.numpy()[0, 0], [t.grad[0, 0] for t in (q_t, k_t, v_t)]


def blocked_gradients(q, k, v, d_out, scale, block: int):
    """The CPU flash kernel with block x block tiles; the backward sees only out and lse."""
    q4, k4, v4, d_out4 = (x[None, None] for x in (q, k, v, d_out))
    tiles = dict(scale=scale, causal=True, block_q=block, block_k=block)
    out, lse = flash_attention_forward(q4, k4, v4, **tiles)
    grads = flash_attention_backward(q4, k4, v4, out, lse, d_out4, **tiles)
    return out[0, 0], [g[0, 0] for g in grads]


def finite_difference_gradients(q, k, v, d_out, scale, step: float = 1e-6):
    """dPhi/dx for Phi = sum(d_out * out), by central differences with step h, one element
    at a time."""

    def loss() -> float:
        return float((d_out * forward_by_hand(q, k, v, scale)[0]).sum())

    grads = []
    for x in (q, k, v):  # perturbed in place, then restored
        grad = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            original = x[i]
            x[i] = original + step
            plus = loss()
            x[i] = original - step
            minus = loss()
            x[i] = original
            grad[i] = (plus - minus) / (2 * step)
        grads.append(grad)
    return grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller head (for the smoke test)")
    args = parser.parse_args()
    length, head_dim, block = (5, 3, 2) if args.quick else (8, 4, 3)
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((length, head_dim)) for _ in range(3))
    d_out = rng.standard_normal((length, head_dim))  # the upstream gradient dL/dO
    scale = 1.0 / math.sqrt(head_dim)
    print(f"one causal attention head: q, k, v ({length}, {head_dim}), float64, scale {scale:.4f}")

    out, probs = forward_by_hand(q, k, v, scale)
    by_hand = backward_by_hand(q, k, v, probs, d_out, scale)
    engine_out, engine = engine_gradients(q, k, v, d_out)
    blocked_out, blocked = blocked_gradients(q, k, v, d_out, scale, block)
    numeric = finite_difference_gradients(q, k, v, d_out, scale)

    print(
        f"forward: max |O_engine - O_by_hand| = {np.abs(engine_out - out).max():.1e}, "
        f"max |O_blocked - O_by_hand| = {np.abs(blocked_out - out).max():.1e}"
    )
    d_probs = d_out @ v.T
    row_term_from_p = (d_probs * probs).sum(axis=-1)  # D = rowsum(dP * P), needs P
    row_term_from_o = (d_out * out).sum(axis=-1)  # D = rowsum(dO * O), what the kernel uses
    print(
        f"D = rowsum(dP * P) vs rowsum(dO * O): max difference "
        f"{np.abs(row_term_from_p - row_term_from_o).max():.1e}"
    )

    print(
        f"\nmax |difference|   {'by hand - numeric':>18}  {'engine - by hand':>17}  "
        f"{f'blocked ({block}x{block} tiles) - by hand':>31}"
    )
    worst = 0.0
    for name, mine, theirs, tiled, fd in zip(
        ("dQ", "dK", "dV"), by_hand, engine, blocked, numeric, strict=True
    ):
        errors = (np.abs(mine - fd).max(), np.abs(theirs - mine).max(), np.abs(tiled - mine).max())
        worst = max(worst, *errors)
        print(f"{name:<18} {errors[0]:>18.1e}  {errors[1]:>17.1e}  {errors[2]:>31.1e}")
    if worst > AGREEMENT:
        raise SystemExit(f"the gradients disagree by {worst:.1e} (more than {AGREEMENT:g})")
    print(
        f"\nall three agree: by hand, engine (naive and blocked) and finite differences "
        f"within {worst:.1e}"
    )


if __name__ == "__main__":
    main()
