"""The benchmarks check before they time, report what they cannot run, and write
reports that match benchmarks/schema.json. Tiny sizes, one repeat: no timing is asserted."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from benchmarks import attention, ops, timing, train
from benchmarks.cli import add_subcommands
from benchmarks.report import load_schema, validate, write_json
from benchmarks.timing import summarize
from minivlm import cuda_available

TINY_ATTENTION = attention.AttentionConfig(
    sizes=(16, 24),
    batch=1,
    heads=2,
    head_dim=8,
    repeats=1,
    warmup=0,
    input_sets=2,
    settle_seconds=0.0,
    retries=0,
)
TINY_OPS = ops.OpsConfig(repeats=1, warmup=0, input_sets=1, settle_seconds=0.0, retries=0)
TINY_TRAIN = train.TrainBenchConfig(
    models=("tiny",), repeats=1, warmup=0, input_sets=1, settle_seconds=0.0, retries=0
)


def _quiet(line: str) -> None:
    pass


def _torch_installed() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _rows_by_name(report: dict, key: str) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for row in report["results"]:
        rows.setdefault(row[key], []).append(row)
    return rows


def assert_matches_schema(report: dict, tmp_path) -> None:
    path = write_json(report, tmp_path / f"{report['benchmark']}.json")  # validates, or raises
    assert validate(json.loads(path.read_text()), load_schema()) == []


# -- attention -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def attention_report():
    return attention.run_attention_benchmark(TINY_ATTENTION, quick=True, log=_quiet)


def test_attention_checks_and_times_both_numpy_paths_at_every_size(attention_report):
    rows = _rows_by_name(attention_report, "implementation")
    for name in ("numpy-naive", "numpy-fused"):
        assert [r["n_q"] for r in rows[name]] == [16, 24]
        for row in rows[name]:
            assert row["status"] == "ok", row["reason"]
            assert max(row["check"]["relative_errors"].values()) < 1e-5
            assert row["forward"]["repeats"] == 1 and row["forward_backward"]["median"] > 0
            assert row["tflops"]["forward_backward"] > 0
            assert row["memory"]["tracemalloc_peak_bytes"] > 0


def test_attention_report_matches_the_schema(attention_report, tmp_path):
    assert_matches_schema(attention_report, tmp_path)


def test_attention_ratios_compare_fused_with_naive_per_size(attention_report):
    cpu = [entry for entry in attention_report["ratios"] if entry["device"] == "cpu"]
    assert [entry["n_q"] for entry in cpu] == [16, 24]
    for entry in cpu:
        assert entry["fused_over_naive"]["forward_backward"] > 0
        assert (entry["fused_over_torch"] is not None) == _torch_installed()


def test_attention_without_a_gpu_lists_the_cuda_paths_as_not_available_with_the_reason(
    attention_report,
):
    if cuda_available():
        pytest.skip("this machine has a GPU")
    rows = _rows_by_name(attention_report, "implementation")
    for name in ("cupy-naive", "cupy-fused", "torch-cuda"):
        for row in rows[name]:
            assert row["status"] == "unavailable" and row["forward"] is None
            assert row["reason"].startswith("not available: ") and len(row["reason"]) > 20
    assert "not available" in attention.format_attention_table(attention_report)


class ScaledGradientAttention(attention.EngineAttention):
    """The fused path with dq off by 1%: a bug the check must catch."""

    def __init__(self):
        super().__init__("fused", "cpu")
        self.name = "broken-fused"

    def forward_backward(self, problem, inputs):
        out, dq, dk, dv = super().forward_backward(problem, inputs)
        return out, dq * 1.01, dk, dv


class CrashingAttention(attention.EngineAttention):
    def __init__(self):
        super().__init__("naive", "cpu")
        self.name = "crashing"

    def forward(self, problem, inputs):
        raise MemoryError("out of memory at N=16")


class AbsentAttention(attention.AttentionImplementation):
    name, device = "absent", "cuda"

    def why_unavailable(self):
        return "no such accelerator here"


def test_a_wrong_attention_implementation_is_reported_wrong_and_not_timed():
    config = replace(TINY_ATTENTION, sizes=(16,))
    report = attention.run_attention_benchmark(
        config, [ScaledGradientAttention()], quick=True, log=_quiet
    )
    (row,) = report["results"]
    assert row["status"] == "wrong"
    assert row["reason"].startswith("dq: relative error 1.00e-02")
    assert row["forward"] is None and row["forward_backward"] is None and row["tflops"] is None
    assert "WRONG: dq" in attention.format_attention_table(report)


def test_a_crashing_implementation_is_reported_as_an_error_and_the_rest_still_run():
    config = replace(TINY_ATTENTION, sizes=(16,))
    impls = [CrashingAttention(), attention.EngineAttention("fused", "cpu")]
    report = attention.run_attention_benchmark(config, impls, quick=True, log=_quiet)
    crashed, fused = report["results"]
    assert (
        crashed["status"] == "error" and crashed["reason"] == "MemoryError: out of memory at N=16"
    )
    assert fused["status"] == "ok"


def test_an_unavailable_implementation_says_why(tmp_path):
    config = replace(TINY_ATTENTION, sizes=(16,))
    report = attention.run_attention_benchmark(config, [AbsentAttention()], quick=True, log=_quiet)
    (row,) = report["results"]
    assert (row["status"], row["reason"]) == (
        "unavailable",
        "not available: no such accelerator here",
    )
    assert report["gemm_peak"] == {}  # nothing ran on either device
    assert_matches_schema(report, tmp_path)


@pytest.mark.parametrize("len_q, len_k", [(6, 6), (4, 9), (9, 4)])
def test_reference_attention_agrees_with_torch_including_bottom_right_causal_rows(len_q, len_k):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    q, d_out = (rng.standard_normal((2, 3, len_q, 5)) for _ in range(2))
    k, v = (rng.standard_normal((2, 3, len_k, 5)) for _ in range(2))
    got = attention.reference_attention(q, k, v, d_out, scale=0.4, causal=True)
    allowed = torch.ones(len_q, len_k, dtype=torch.bool).tril(diagonal=len_k - len_q)
    leaves = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    # a row with no allowed key: torch gives NaN, ours 0 (and 0 gradient)
    out = torch.nn.functional.scaled_dot_product_attention(*leaves, attn_mask=allowed, scale=0.4)
    out = torch.nan_to_num(out)
    out.backward(torch.tensor(d_out))
    expected = (out, *(t.grad for t in leaves))
    for name, ours, theirs in zip(("out", "dq", "dk", "dv"), got, expected, strict=True):
        np.testing.assert_allclose(ours, theirs.detach().numpy(), atol=1e-12, err_msg=name)


def test_reference_slice_checks_all_heads_when_they_fit_and_fewer_when_not():
    problem = attention.Problem(4, 4, 2048, 2048, 64, True, "float32")
    per_head = 4 * 8 * 2048 * 2048
    assert attention.reference_slice(problem, 16 * per_head) == (
        (slice(None), slice(None)),
        "all 16 heads",
    )
    index, text = attention.reference_slice(problem, 8 * per_head)
    assert index == (slice(0, 2), slice(None)) and "8 of 16 heads" in text
    index, text = attention.reference_slice(problem, 2 * per_head)
    assert index == (slice(0, 1), slice(0, 2)) and "2 of 16 heads" in text


def test_flops_follow_the_flash_attention_convention():
    full = attention.Problem(2, 3, 128, 256, 64, False, "float32")
    assert full.forward_flops() == 4 * 2 * 3 * 128 * 256 * 64
    causal = replace(full, causal=True)
    assert causal.forward_flops() == full.forward_flops() / 2
    assert causal.forward_backward_flops() == 3.5 * causal.forward_flops()


def test_attention_command_line_prints_a_table_and_writes_json_and_png(tmp_path, capsys):
    json_path, png_path = tmp_path / "a.json", tmp_path / "a.png"
    code = attention.main([
        "--sizes", "16", "32", "--batch", "1", "--heads", "1", "--head-dim", "8", "--repeats", "1",
        "--warmup", "0", "--quick", "--impl", "numpy-naive", "numpy-fused", "--no-causal",
        "--key-length", "20", "--json", str(json_path), "--plot", str(png_path),
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "numpy-fused" in printed and "fused/naive" in printed
    report = json.loads(json_path.read_text())
    assert report["config"]["causal"] is False
    assert {row["n_k"] for row in report["results"]} == {20}
    assert report["machine"]["command"].startswith("python -m benchmarks.attention --sizes 16 32")
    with Image.open(png_path) as image:
        assert image.format == "PNG" and image.width > 500


@pytest.mark.gpu
def test_cuda_attention_paths_are_checked_and_timed_on_a_gpu():
    if not cuda_available():
        pytest.skip("needs CuPy and a GPU")
    config = replace(
        TINY_ATTENTION, devices=("cuda",), implementations=("cupy-naive", "cupy-fused")
    )
    report = attention.run_attention_benchmark(config, quick=True, log=_quiet)
    for row in report["results"]:
        assert row["status"] == "ok", f"{row['implementation']} N={row['n_q']}: {row['reason']}"
        assert row["memory"]["device_peak_bytes"] is not None
    assert report["gemm_peak"]["cuda"]["tflops"] > 0


# -- ops -----------------------------------------------------------------------------


def test_ops_times_every_op_on_engine_and_numpy_after_checking_them(tmp_path):
    report = ops.run_ops_benchmark(TINY_OPS, quick=True, log=_quiet)
    assert_matches_schema(report, tmp_path)
    rows = _rows_by_name(report, "framework")
    assert {row["op"] for row in rows["engine"]} == {
        "linear",
        "layer_norm",
        "softmax",
        "cross_entropy",
    }
    for row in rows["engine"] + rows["numpy"]:
        assert row["status"] == "ok", f"{row['op']}: {row['reason']}"
    expected = "ok" if _torch_installed() else "unavailable"
    assert {row["status"] for row in rows["torch"]} == {expected}
    assert all(entry["engine_over_numpy"]["forward_backward"] > 0 for entry in report["ratios"])


class OffByOneFramework(ops.Framework):
    """The inline NumPy math with every output shifted by 1."""

    def run(self, case, inputs, backward):
        return tuple(out + 1 for out in super().run(case, inputs, backward))


def test_ops_reports_a_wrong_framework_without_timing_it():
    report = ops.run_ops_benchmark(
        TINY_OPS, [ops.SoftmaxCase((2, 3, 4))], [OffByOneFramework("numpy")], log=_quiet
    )
    (row,) = report["results"]
    assert row["status"] == "wrong" and "relative error" in row["reason"]
    assert row["forward"] is None and row["forward_backward"] is None


# -- train ---------------------------------------------------------------------------


def test_train_steps_are_checked_against_minivlm_and_timed(tmp_path):
    report = train.run_train_benchmark(replace(TINY_TRAIN, devices=("cpu",)), log=_quiet)
    assert_matches_schema(report, tmp_path)
    rows = {row["framework"]: row for row in report["results"]}
    assert rows["minivlm"]["status"] == "ok" and rows["minivlm"]["samples_per_second"] > 0
    if _torch_installed():
        # the PyTorch twin computes the same loss and gradients from the same weights
        assert rows["torch"]["status"] == "ok", rows["torch"]["reason"]
        assert rows["torch"]["check"]["relative_errors"]["loss"] < 1e-5
        assert [entry["model"] for entry in report["ratios"]] == ["tiny"]
    else:
        assert rows["torch"]["status"] == "unavailable"


class DoubledGradientTrainer(train.MinivlmTrainer):
    framework = "doubled"

    def loss_and_gradients(self, batch):
        loss, grads = super().loss_and_gradients(batch)
        return loss, {name: 2 * grad for name, grad in grads.items()}


def test_a_trainer_with_wrong_gradients_is_reported_wrong_and_not_timed():
    config = replace(TINY_TRAIN, devices=("cpu",))
    trainers = {"doubled": DoubledGradientTrainer}
    report = train.run_train_benchmark(config, [train.tiny_case()], trainers, log=_quiet)
    (row,) = report["results"]
    assert row["status"] == "wrong" and row["reason"].startswith(
        "gradients: relative error 1.00e+00"
    )
    assert row["step"] is None


# -- shared pieces -------------------------------------------------------------------


def test_schema_validator_names_missing_keys_and_wrong_types():
    schema = load_schema()
    report = {
        "benchmark": "ops",
        "schema_version": 1,
        "machine": {},
        "config": {},
        "threads": {"blas": 0},
    }
    errors = "\n".join(
        validate({"benchmark": "attention"}, schema["$defs"]["attention_report"], schema)
    )
    assert "missing key 'results'" in errors
    errors = "\n".join(validate(report, schema["$defs"]["ops_report"], schema))
    assert "$.machine: missing key 'cpu_model'" in errors
    assert "$.threads.blas: expected >= 1, got 0" in errors
    assert validate({"benchmark": "speed"}, schema) == [
        "$: matches 0 of the oneOf schemas, expected exactly 1"
    ]


def test_write_json_refuses_a_report_that_breaks_the_schema(tmp_path):
    with pytest.raises(ValueError, match="missing key"):
        write_json({"benchmark": "train"}, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()


def test_summarize_gives_median_and_percentiles():
    stats = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (stats.median, stats.min, stats.max, stats.q1, stats.q3) == (3.0, 1.0, 5.0, 2.0, 4.0)
    assert stats.iqr == 2.0 and stats.repeats == 5


def test_bench_subcommands_register_on_the_bench_parser():
    parser = argparse.ArgumentParser(prog="minivlm")
    bench = parser.add_subparsers(dest="command").add_parser("bench")
    add_subcommands(bench.add_subparsers(dest="benchmark", required=True))
    for name, module in (("attention", attention), ("ops", ops), ("train", train)):
        args = parser.parse_args(["bench", name, "--quick"])
        assert args.handler is module.run_from_args and args.command_prefix == "minivlm"
    args = parser.parse_args(["bench", "attention", "--device", "cpu", "--dtype", "float64"])
    config = attention.config_from_args(args)
    assert config.devices == ("cpu",) and config.dtype == "float64"


def test_measure_repeats_a_disturbed_measurement_and_keeps_the_least_disturbed(monkeypatch):
    shares = iter([0.6, 0.3, 0.5])
    monkeypatch.setattr(
        timing, "_measure_once", lambda *args: summarize([1.0], others_cpu_share=next(shares))
    )
    stats = timing.measure(lambda i: None, repeats=1, warmup=0, retries=2, max_others_share=0.1)
    assert (stats.others_cpu_share, stats.tries) == (0.3, 3)


def test_measure_stops_retrying_once_the_machine_was_quiet(monkeypatch):
    shares = iter([0.6, 0.05])
    monkeypatch.setattr(
        timing, "_measure_once", lambda *args: summarize([1.0], others_cpu_share=next(shares))
    )
    stats = timing.measure(lambda i: None, repeats=1, warmup=0, retries=5, max_others_share=0.1)
    assert (stats.others_cpu_share, stats.tries) == (0.05, 2)
