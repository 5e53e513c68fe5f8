"""`minivlm explain OP --trace`: one tiny case's forward and backward, every intermediate
printed under its name in docs/backprop, computed by hand in NumPy, then compared with
the engine and with central differences.

The upstream gradient of the output (dO, dy) is random, as in gradcheck; the numeric
gradient of an element is (Phi(x + h e_i) - Phi(x - h e_i)) / (2 h) with the objective
Phi(x) = sum(upstream * f(x)).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .. import functional as F
from ..autograd import tensor
from ..functional.attention import FusedAttention
from ..gradcheck import format_table

STEP = 1e-6  # h, the finite-difference step


def _show(name: str, array, note: str = "") -> None:
    array = np.asarray(array)
    body = np.array2string(array, precision=4, suppress_small=True, floatmode="fixed",
                           max_line_width=200)  # fmt: skip
    shape = "x".join(map(str, array.shape)) or "scalar"
    label, note = f"  {name} ({shape})", f"    {note}" if note else ""
    if "\n" in body:
        print(f"{label}{note}\n" + "\n".join(f"      {line}" for line in body.splitlines()))
    else:
        print(f"{label} = {body}{note}")


def _section(title: str) -> None:
    print(f"\n{title}")


def _numeric(fn: Callable, arrays: list[np.ndarray], upstream: np.ndarray) -> list[np.ndarray]:
    """Central differences of Phi = sum(upstream * fn(*arrays)) wrt every element of each array."""
    grads = []
    for array in arrays:
        grad = np.zeros_like(array)
        for element in np.ndindex(array.shape):
            original = array[element]
            array[element] = original + STEP
            plus = float((upstream * fn(*arrays)).sum())
            array[element] = original - STEP
            minus = float((upstream * fn(*arrays)).sum())
            array[element] = original
            grad[element] = (plus - minus) / (2 * STEP)
        grads.append(grad)
    return grads


def _engine(fn: Callable, arrays: list[np.ndarray], upstream: np.ndarray) -> list[np.ndarray]:
    """The engine's gradients: fn on float64 leaves, backward with `upstream`."""
    leaves = [tensor(a, requires_grad=True, dtype=np.float64) for a in arrays]
    fn(*leaves).backward(upstream)
    return [leaf.grad for leaf in leaves]


def _compare(names, by_hand, engine, numeric) -> bool:
    """Print by hand, engine and numeric gradients element by element; True if they agree."""
    _section(
        f"finite differences: Phi = sum(upstream * output), step h = {STEP:g}, "
        "numeric = (Phi(x + h e_i) - Phi(x - h e_i)) / (2 h)"
    )
    rows, worst = [], 0.0
    for name, hand, eng, num in zip(names, by_hand, engine, numeric, strict=True):
        for element in np.ndindex(hand.shape):
            error = max(abs(hand[element] - num[element]), abs(eng[element] - num[element]))
            worst = max(worst, error)
            index = str(tuple(int(i) for i in element))
            values = (hand[element], eng[element], num[element])
            rows.append((name, index, *(f"{v:.10f}" for v in values), f"{error:.1e}"))
    header = ("input", "element", "by hand", "engine", "numeric", "max |error|")
    print("\n".join("  " + line for line in format_table(header, rows)))
    agree = worst < 1e-6
    print(f"result: {'pass' if agree else 'FAIL'} (largest error {worst:.1e}, tolerance 1e-06)")
    return agree


def trace_attention() -> bool:
    rng = np.random.default_rng(0)
    lq, lk, d, block_q, block_k = 2, 4, 2, 1, 2
    q, k, v = rng.standard_normal((lq, d)), *rng.standard_normal((2, lk, d))
    d_out = rng.standard_normal((lq, d))
    s = 1 / np.sqrt(d)
    print(f"tiny case: one (batch, head), Lq = {lq} queries, Lk = {lk} keys, d = {d}, "
          f"s = 1/sqrt(d) = {s:.4f}, no mask")  # fmt: skip
    _show("Q", q), _show("K", k), _show("V", v)

    _section("naive forward (docs/backprop/attention.md, section 1)")
    scores = s * q @ k.T
    _show("S", scores, "S = s Q K^T")
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    _show("P", probs, "P = softmax(S), row by row")
    out = probs @ v
    _show("O", out, "O = P V")

    _section("naive backward (section 2), given a random upstream gradient dO")
    _show("dO", d_out)
    d_v = probs.T @ d_out
    _show("dV", d_v, "dV = P^T dO")
    d_probs = d_out @ v.T
    _show("dP", d_probs, "dP = dO V^T")
    row_term = (probs * d_probs).sum(-1)
    _show("D", row_term, "D = rowsum(P * dP), one number per query row")
    d_scores = probs * (d_probs - row_term[:, None])
    _show("dS", d_scores, "dS = P * (dP - D), D broadcast along each row")
    d_q, d_k = s * d_scores @ k, s * d_scores.T @ q
    _show("dQ", d_q, "dQ = s dS K")
    _show("dK", d_k, "dK = s dS^T Q")

    _section(f"blocked forward (section 4): key blocks of block_k = {block_k}; "
             "each row starts from m = -inf, l = 0, acc = 0")  # fmt: skip
    m, l_sum, acc = np.full(lq, -np.inf), np.zeros(lq), np.zeros((lq, d))
    for start in range(0, lk, block_k):
        keys = slice(start, start + block_k)
        print(f" key block C = keys {start}..{start + block_k - 1}")
        tile = s * q @ k[keys].T
        _show("S_C", tile, "s Q K_C^T")
        new_m = np.maximum(m, tile.max(-1))
        _show("m'", new_m, "m' = max(m, rowmax S_C)")
        factor = np.exp(m - new_m)
        _show("e^(m - m')", factor, "rescales what was summed so far (0 when m = -inf)")
        p_tile = np.exp(tile - new_m[:, None])
        l_sum = factor * l_sum + p_tile.sum(-1)
        _show("l", l_sum, "l = e^(m - m') l + rowsum e^(S_C - m')")
        acc = factor[:, None] * acc + p_tile @ v[keys]
        _show("acc", acc, "acc = e^(m - m') acc + e^(S_C - m') V_C")
        m = new_m
    blocked_out, lse = acc / l_sum[:, None], m + np.log(l_sum)
    gap = np.abs(blocked_out - out).max()
    _show("O", blocked_out, f"O = acc / l; max |O - naive O| = {gap:.1e}")
    _show("lse", lse, "lse = m + log l = log sum_j e^(S_j), one number per row")

    _section("blocked backward: P rebuilt from lse, D from O")
    row_term_o = (d_out * blocked_out).sum(-1)
    _show("D", row_term_o, f"D = rowsum(dO * O); max |D - rowsum(P * dP)| = "
                           f"{np.abs(row_term_o - row_term).max():.1e}")  # fmt: skip
    dq_blocked, dk_blocked, dv_blocked = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    for start in range(0, lk, block_k):
        keys = slice(start, start + block_k)
        print(f" tile: key block {start}..{start + block_k - 1}")
        p_tile = np.exp(s * q @ k[keys].T - lse[:, None])
        _show("P", p_tile, "P = exp(s Q K_C^T - lse)")
        dv_blocked[keys] = p_tile.T @ d_out
        _show("dV_C", dv_blocked[keys], "dV_C = P^T dO")
        ds_tile = p_tile * (d_out @ v[keys].T - row_term_o[:, None])
        _show("dS", ds_tile, "dS = P * (dO V_C^T - D)")
        dq_blocked += s * ds_tile @ k[keys]
        dk_blocked[keys] = s * ds_tile.T @ q
        _show("dK_C", dk_blocked[keys], "dK_C = s dS^T Q; dQ += s dS K_C")
    _show("dQ", dq_blocked, f"summed over the tiles; max |dQ - naive dQ| = "
                            f"{np.abs(dq_blocked - d_q).max():.1e}")  # fmt: skip

    def naive(q, k, v):
        return F.scaled_dot_product_attention(q[None, None], k[None, None], v[None, None],
                                              impl="naive")[0, 0]  # fmt: skip

    def fused(q, k, v):
        tiles = {"block_q": block_q, "block_k": block_k}
        return FusedAttention(s, False, None, tiles)(q[None, None], k[None, None],
                                                     v[None, None])[0, 0]  # fmt: skip

    engine_naive = _engine(naive, [q, k, v], d_out)
    engine_fused = _engine(fused, [q, k, v], d_out)
    by_hand = [d_q, d_k, d_v]
    blocked = [dq_blocked, dk_blocked, dv_blocked]
    pairs = zip(engine_naive + engine_fused, by_hand + blocked, strict=True)
    gap = max(np.abs(a - b).max() for a, b in pairs)
    print(f"\nthe engine: Attention (naive) and FusedAttention (block_q = {block_q}, block_k = "
          f"{block_k}) give the same gradients; largest difference from by hand {gap:.1e}")

    def forward(q, k, v):
        scores = s * q @ k.T
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        return probs / probs.sum(-1, keepdims=True) @ v

    numeric = _numeric(forward, [q.copy(), k.copy(), v.copy()], d_out)
    return _compare(["Q", "K", "V"], by_hand, engine_fused, numeric) and gap < 1e-10


def trace_layer_norm() -> bool:
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 4)), rng.standard_normal(4), rng.standard_normal(4)
    dy, eps = rng.standard_normal((2, 4)), 1e-5
    print(f"tiny case: R = 2 rows of C = 4, layer norm's eps = {eps:g}")
    _show("x", x), _show("w", w), _show("b", b)

    _section("forward (docs/backprop/layer_norm.md)")
    mean = x.mean(-1, keepdims=True)
    _show("mu", mean, "mean = (1/C) sum_k x_k")
    xc = x - mean
    _show("xc", xc, "xc = x - mu")
    var = (xc**2).mean(-1, keepdims=True)
    _show("var", var, "var = (1/C) sum_k xc_k^2")
    rstd = 1 / np.sqrt(var + eps)
    _show("r", rstd, "rstd = 1 / sqrt(var + eps)")
    xhat = xc * rstd
    _show("xhat", xhat, "xhat = xc * rstd")
    _show("y", xhat * w + b, "y = xhat * w + b")

    _section("backward, given a random upstream gradient dy")
    _show("dy", dy)
    dw, db = (dy * xhat).sum(0), dy.sum(0)
    _show("dw", dw, "dw = sum over rows of dy * xhat")
    _show("db", db, "db = sum over rows of dy")
    dxhat = dy * w
    _show("dxhat", dxhat, "dxhat = dy * w")
    term2 = dxhat.mean(-1, keepdims=True)
    _show("term 2", term2, "mean(dxhat), through mu")
    term3 = xhat * (dxhat * xhat).mean(-1, keepdims=True)
    _show("term 3", term3, "xhat * mean(dxhat * xhat), through rstd")
    dx = rstd * (dxhat - term2 - term3)
    _show("dx", dx, "dx = rstd * (dxhat - term 2 - term 3), term 1 = dxhat direct")

    def forward(x, w, b):
        centred = x - x.mean(-1, keepdims=True)
        return centred / np.sqrt((centred**2).mean(-1, keepdims=True) + eps) * w + b

    arrays = [x, w, b]
    engine = _engine(lambda x, w, b: F.layer_norm(x, 4, w, b, eps=eps), arrays, dy)
    numeric = _numeric(forward, [a.copy() for a in arrays], dy)
    return _compare(["x", "w", "b"], [dx, dw, db], engine, numeric)


def trace_softmax() -> bool:
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    print("tiny case: softmax over the last axis of a 2x4 input")
    _show("x", x)

    _section("forward (docs/backprop/softmax.md)")
    row_max = x.max(-1, keepdims=True)
    _show("m", row_max, "row max, subtracted so that no exponential overflows")
    exps = np.exp(x - row_max)
    _show("e", exps, "e = exp(x - m)")
    total = exps.sum(-1, keepdims=True)
    _show("Z", total, "Z = rowsum e")
    y = exps / total
    _show("y", y, "y = e / Z")

    _section("backward, given a random upstream gradient dy")
    _show("dy", dy)
    dot = (dy * y).sum(-1, keepdims=True)
    _show("<dy, y>", dot, "sum_j dy_j y_j, one number per row")
    dx = y * (dy - dot)
    _show("dx", dx, "dx = y * (dy - <dy, y>)")

    def forward(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    engine = _engine(lambda x: F.softmax(x, dim=-1), [x], dy)
    return _compare(["x"], [dx], engine, _numeric(forward, [x.copy()], dy))


def trace_cross_entropy() -> bool:
    rng = np.random.default_rng(0)
    logits, targets, alpha = rng.standard_normal((3, 5)), np.array([1, -100, 4]), 0.1
    g = rng.standard_normal()
    vocab = logits.shape[1]
    print(f"tiny case: N = 3 rows, V = {vocab} classes, targets {targets.tolist()} (-100 is "
          f"ignore_index), label smoothing alpha = {alpha}, reduction mean")  # fmt: skip
    _show("z", logits)

    _section("forward (docs/backprop/cross_entropy.md)")
    row_max = logits.max(-1, keepdims=True)
    lse = (row_max + np.log(np.exp(logits - row_max).sum(-1, keepdims=True)))[:, 0]
    _show("lse", lse, "lse_i = log sum_j e^(z_ij), through the row max")
    counted = targets != -100
    safe = np.where(counted, targets, 0)
    z_target = logits[np.arange(3), safe]
    _show("z_t", z_target, "z_i[t_i] (row 1 is ignored)")
    rows = counted * ((1 - alpha) * (lse - z_target) + alpha * (lse - logits.mean(-1)))
    formula = "(1 - alpha)(lse_i - z_i[t_i]) + alpha (lse_i - mean_j z_ij); 0 if ignored"
    _show("loss_i", rows, formula)
    loss = rows.sum() / counted.sum()
    _show("loss", loss, f"mean over the {counted.sum()} counted rows")

    _section("backward, given a random upstream gradient g of the scalar loss")
    _show("g", g)
    d_rows = np.where(counted, g / counted.sum(), 0.0)
    _show("d_rows", d_rows, "g / (counted rows), 0 on ignored rows")
    probs = np.exp(logits - lse[:, None])
    _show("softmax(z)", probs, "e^(z - lse)")
    onehot = np.eye(vocab)[safe]
    d_logits = d_rows[:, None] * (probs - (1 - alpha) * onehot - alpha / vocab) + 0.0  # no -0
    _show("d_logits", d_logits, "d_rows * (softmax(z) - (1 - alpha) onehot(t) - alpha / V)")

    target_tensor = tensor(targets)

    def engine_loss(z):
        return F.cross_entropy(z, target_tensor, label_smoothing=alpha)

    def forward(z):
        m = z.max(-1, keepdims=True)
        lse = (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[:, 0]
        rows = counted * ((1 - alpha) * (lse - z[np.arange(3), safe]) + alpha * (lse - z.mean(-1)))
        return rows.sum() / counted.sum()

    engine = _engine(engine_loss, [logits], np.array(g))
    return _compare(["z"], [d_logits], engine, _numeric(forward, [logits.copy()], np.array(g)))


# the Function a case covers -> its trace
TRACES = {
    "Attention": trace_attention,
    "FusedAttention": trace_attention,
    "LayerNorm": trace_layer_norm,
    "Softmax": trace_softmax,
    "CrossEntropy": trace_cross_entropy,
}
