"""Draw the Function graph that one tiny forward records.

What it teaches: what the engine keeps between the forward and the backward. One
post-norm self-attention sublayer, y = LayerNorm(x + MultiHeadAttention(x)), on a batch
of 1 sequence of 3 tokens of width 4 with 2 heads, records a graph of Functions:
the q/k/v projections (Linear), the head split (Reshape, Permute), Attention, the
merge, the output projection, the residual Add and LayerNorm. Each box is one Function
with the shape of its output; each arrow is an input it saved. Tensor.backward walks
these arrows from the bottom up (docs/architecture.md, "The walk back").

    python examples/function_graph.py [OUT_DIR]   # writes function_graph.png and .dot
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from minivlm import nn, random, tensor
from minivlm.checks.graph import write_graph


def sublayer_forward():
    """(output, {id(leaf): name}) of LayerNorm(x + MultiHeadAttention(x))."""
    random.manual_seed(0)
    attention, norm = nn.MultiHeadAttention(4, 2, packed=False), nn.LayerNorm(4)
    x = tensor(np.random.default_rng(0).standard_normal((1, 3, 4)), requires_grad=True)
    attended = attention(x, x, x)
    attended = attended[0] if isinstance(attended, tuple) else attended
    y = norm(x + attended)
    names = {id(x): "x"}
    for prefix, module in (("attn.", attention), ("norm.", norm)):
        names.update({id(p): prefix + n for n, p in module.named_parameters()})
    return y, names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path("."))
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    y, names = sublayer_forward()
    for suffix in (".png", ".dot"):
        print(f"wrote {write_graph([y], names, out / f'function_graph{suffix}')}")
    print("read it top-down for the forward, bottom-up for the backward")


if __name__ == "__main__":
    main()
