"""`minivlm explain --trace` and `--graph`, minivlm.F names in explain and gradcheck, the
fused cases' tiles, and `minivlm gradcheck --model --per-function`."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from minivlm.checks import CASES, select
from minivlm.checks.explain import explain, find_case
from minivlm.checks.trace import TRACES
from minivlm.cli import main
from minivlm.functional.normalization import LayerNorm
from minivlm.kernels_cpu import flash_attention as cpu_kernels


@pytest.mark.parametrize("op", ["attention", "layer_norm", "softmax", "cross_entropy"])
def test_trace_prints_named_intermediates_and_ends_with_a_passing_comparison(op, capsys):
    assert explain(op, trace=True) == 0
    out = capsys.readouterr().out
    names = {
        "attention": ["S (2x4)", "P (2x4)", "D (2)", "dS (2x4)", "m' (2)", "e^(m - m')", "lse (2)"],
        "layer_norm": ["mu (2x1)", "xc (2x4)", "r (2x1)", "xhat (2x4)", "term 3", "dx (2x4)"],
        "softmax": ["m (2x1)", "Z (2x1)", "<dy, y>", "dx (2x4)"],
        "cross_entropy": ["lse (3)", "loss_i (3)", "d_rows (3)", "d_logits (3x5)"],
    }[op]
    missing = [name for name in names if name not in out]
    assert not missing, f"--trace {op} does not print {missing}"
    assert "finite differences" in out
    assert out.rstrip().splitlines()[-1].startswith("result: pass")


def test_trace_fails_when_the_engine_backward_is_wrong(monkeypatch, capsys):
    original = LayerNorm.backward

    def without_term_three(self, dy):
        dx, dw, db = original(self, dy)
        return dx * 1.01, dw, db

    monkeypatch.setattr(LayerNorm, "backward", without_term_three)
    assert explain("layer_norm", trace=True) == 1
    assert "result: FAIL" in capsys.readouterr().out


def test_trace_of_an_op_without_one_exits_2_naming_the_traced_ops(capsys):
    assert explain("relu", trace=True) == 2
    err = capsys.readouterr().err
    assert "no --trace for 'relu'" in err and "scaled_dot_product_attention" in err


def test_attention_trace_crosses_key_blocks_with_a_rescaling_factor_below_one(capsys):
    explain("attention", trace=True)
    out = capsys.readouterr().out
    assert out.count("key block C = keys") >= 2
    factors = re.findall(r"e\^\(m - m'\) \(2\) = \[([^\]]+)\]", out)
    values = [float(v) for line in factors[1:] for v in line.split()]
    assert any(0 < v < 1 for v in values), f"no rescaling by exp(m - m') < 1 in {factors}"


@pytest.mark.parametrize("case", [c for c in CASES if "FusedAttention" in c.covers],
                         ids=lambda c: c.name)  # fmt: skip
def test_fused_cases_span_several_tiles_both_ways(case, monkeypatch):
    calls = []
    forward = cpu_kernels.flash_attention_forward

    def spy(q, k, v, **options):
        calls.append((q.shape[2], k.shape[2], options.get("block_q"), options.get("block_k")))
        return forward(q, k, v, **options)

    monkeypatch.setattr(cpu_kernels, "flash_attention_forward", spy)
    fn, inputs, settings = case.build(np.random.default_rng(0), "cpu")
    fn(*inputs)
    ((len_q, len_k, block_q, block_k),) = calls
    assert (block_q, block_k) == (settings["block_q"], settings["block_k"])
    assert math.ceil(len_q / block_q) >= 2, f"{case.name}: {len_q} queries in one tile"
    assert math.ceil(len_k / block_k) >= 2, f"{case.name}: {len_k} keys in one tile"


def test_minivlm_F_names_select_their_cases_in_gradcheck_and_explain(capsys):
    attention = [c.name for c in CASES if c.op == "scaled_dot_product_attention"]
    assert [c.name for c in select(["scaled_dot_product_attention"])] == attention
    assert [c.name for c in select(["cat"])] == ["concat"]
    assert find_case("scaled_dot_product_attention").name == "attention"
    from minivlm import F

    without_case = [n for n in F.__all__ if n != "astype" and not select([n])]
    assert not without_case, f"minivlm.F functions gradcheck does not accept: {without_case}"
    assert explain("scaled_dot_product_attention", elements=1) == 0
    assert "explaining its case 'attention'" in capsys.readouterr().out


def test_explain_graph_writes_a_png_and_dot_text(tmp_path, capsys):
    assert explain("layer_norm", elements=1, graph=tmp_path / "graph.png") == 0
    assert (tmp_path / "graph.png").read_bytes().startswith(b"\x89PNG")
    assert explain("layer_norm", elements=1, graph=tmp_path / "graph.dot") == 0
    dot = (tmp_path / "graph.dot").read_text()
    assert dot.startswith("digraph forward {")
    assert 'label="x\\n(3, 2, 6)"' in dot and 'label="LayerNorm\\n(6, 6)"' in dot
    assert dot.count("->") == 7  # x, weight, bias reshaped; three into LayerNorm; one out


def test_gradcheck_case_reports_show_the_case_settings():
    report = select(["attention_causal_cross"])[0].run()
    assert report.settings["key_lengths"] == [6, 2] and report.settings["is_causal"] is True
    assert str(report).startswith("settings: impl=naive, scale=0.5 (1/sqrt(d)), is_causal=True")


def test_model_per_function_gradcheck_names_the_first_wrong_backward(capsys, monkeypatch):
    assert main(["gradcheck", "--model", "--per-function", "--fusion", "cross"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"cross: \d+ Functions recorded", out) and "passed: all" in out
    assert re.search(r"^Attention +\d+ ", out, re.MULTILINE)

    def wrong_backward(self, dy):  # dy for the first input, nothing for the others
        return (dy,) + (None,) * (len(self.inputs) - 1)

    monkeypatch.setattr(LayerNorm, "backward", wrong_backward)
    assert main(["gradcheck", "--model", "--per-function", "--fusion", "cross"]) == 1
    out = capsys.readouterr().out
    assert "first Function whose backward is wrong: #" in out and " LayerNorm(x " in out


def test_per_function_without_model_is_refused(capsys):
    assert main(["gradcheck", "softmax", "--per-function"]) == 2
    assert "--per-function goes with --model" in capsys.readouterr().out


def test_every_traced_function_is_covered_by_a_case():
    covered = {name for case in CASES for name in case.covers}
    assert set(TRACES) <= covered, f"traces without a case: {set(TRACES) - covered}"
