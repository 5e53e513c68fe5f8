"""The benchmarks (minivlm.bench) check before they time, say what they cannot run, and
write reports that pass the key check. Tiny sizes, one or two rounds: no timing is
asserted beyond being positive."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from minivlm import cuda_available
from minivlm.bench import attention, harness, ops, step_parts, train
from minivlm.cli import build_parser, main
from minivlm.models import VLM

TINY = ["--sizes", "16", "24", "--batch", "1", "--heads", "2", "--head-dim", "8"]
FEW = ["--repeats", "2", "--warmup", "0", "--input-sets", "2", "--gemm-size", "64"]


def _quiet(line: str) -> None:
    pass


def _torch_installed() -> bool:
    return harness.why_no_torch() is None


def _rows(report: dict, name: str) -> list[dict]:
    return [r for r in report["results"] if r["implementation"] == name]


# -- the harness: check, then time -------------------------------------------------------


class Counting:
    """A candidate whose results are `scale` x the reference's, counting its timed calls."""

    def __init__(self, reference, scale=1.0, crash_after=None):
        self.reference, self.scale, self.crash_after, self.calls = reference, scale, crash_after, []

    def candidate(self, name, log, pool="numpy"):
        def results():
            return {key: self.scale * value for key, value in self.reference.items()}

        def run(index):
            if self.crash_after is not None and len(self.calls) >= self.crash_after:
                raise MemoryError("out of memory")
            self.calls.append(index)
            log.append(name)

        return harness.Candidate(results, {"time": run}, pool=pool)


REFERENCE = {"out": np.arange(1.0, 7.0).reshape(2, 3), "grad": np.array([0.5, -2.0])}


def test_a_wrong_implementation_is_refused_before_it_is_timed():
    log = []
    right, wrong = Counting(REFERENCE), Counting(REFERENCE, scale=1.01)
    candidates = {"right": right.candidate("right", log), "wrong": wrong.candidate("wrong", log)}
    rows = harness.check_then_time(candidates, REFERENCE, 1e-3, repeats=3, warmup=1, settle=0)
    assert rows["wrong"]["status"] == "wrong" and rows["wrong"]["time"] is None
    assert rows["wrong"]["reason"] == "out: relative error 1.00e-02 > tolerance 1e-03"
    assert wrong.calls == [], "a wrong implementation was timed"
    assert rows["right"]["status"] == "ok" and right.calls == [0, 1, 2, 3]
    assert rows["right"]["time"]["repeats"] == 3 and rows["right"]["time"]["median"] > 0
    assert rows["right"]["check"]["relative_errors"] == {"out": 0.0, "grad": 0.0}


def test_the_implementations_of_one_pool_are_timed_interleaved_and_pools_apart():
    log = []
    makers = {name: Counting(REFERENCE) for name in ("a", "b", "torch")}
    candidates = {
        name: maker.candidate(name, log, "torch" if name == "torch" else "numpy")
        for name, maker in makers.items()
    }
    rows = harness.check_then_time(
        candidates, REFERENCE, 1e-3, repeats=2, warmup=1, settle=0, blocks=2
    )
    block = ["a", "b", "a", "b", "a", "b", "torch", "torch", "torch"]
    assert log == block + block, "pools in alternating blocks, calls interleaved in a pool"
    assert rows["a"]["time"]["repeats"] == 4, "the median is over every block's timings"


def test_an_implementation_that_crashes_while_timed_is_an_error_and_the_rest_still_run():
    log = []
    crashing, steady = Counting(REFERENCE, crash_after=1), Counting(REFERENCE)
    candidates = {"crashing": crashing.candidate("c", log), "steady": steady.candidate("s", log)}
    rows = harness.check_then_time(candidates, REFERENCE, 1e-3, repeats=3, warmup=0, settle=0)
    assert rows["crashing"]["status"] == "error"
    assert rows["crashing"]["reason"] == "MemoryError: out of memory"
    assert rows["steady"]["status"] == "ok" and steady.calls == [0, 1, 2]


def test_a_result_with_nan_or_the_wrong_shape_fails_the_check():
    assert harness.relative_error([1.0, np.nan], np.array([1.0, 2.0])) == float("inf")
    bad = harness.Candidate(lambda: {"out": np.ones(3)}, {})
    (row,) = harness.check_then_time({"bad": bad}, {"out": np.ones(4)}, 1e-3, 1, 0).values()
    assert row["status"] == "error" and "shape (3,)" in row["reason"]


def test_the_key_check_names_what_a_report_lacks_and_write_report_refuses_it(tmp_path):
    assert harness.report_problems({"benchmark": "ops"}, ()) == [
        "report: 'machine' missing or not <class 'dict'>",
        "report: 'config' missing or not <class 'dict'>",
        "report: 'results' missing or not <class 'list'>",
        "report: 'ratios' missing or not <class 'list'>",
    ]
    report = {"benchmark": "ops", "machine": harness.machine_facts(), "config": {},
              "ratios": [], "results": [harness.row("engine", forward=None)]}  # fmt: skip
    assert harness.report_problems(report, ("forward",)) == [
        "results[0]: 'forward' has no positive median"
    ]
    with pytest.raises(ValueError, match="'forward' has no positive median"):
        harness.write_report(report, tmp_path / "bad.json", ("forward",))
    assert list(tmp_path.iterdir()) == []
    report["results"][0]["status"] = "wrong"
    written = json.loads(
        harness.write_report(report, tmp_path / "ok.json", ("forward",)).read_text()
    )
    assert written["results"][0]["implementation"] == "engine"


def test_bad_option_values_name_the_option(capsys):
    with pytest.raises(SystemExit):
        attention.options(["--repeats", "0"])
    assert "argument --repeats: expected an integer >= 1, got '0'" in capsys.readouterr().err


# -- attention -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def attention_report():
    args = attention.options([*TINY, *FEW, "--device", "cpu"])
    return attention.run_attention_benchmark(args, log=_quiet)


def test_attention_checks_and_times_naive_fused_and_auto_causal_and_full(attention_report):
    for name in ("numpy-naive", "numpy-fused", "numpy-auto"):
        rows = _rows(attention_report, name)
        assert [(r["causal"], r["n_q"]) for r in rows] == [(True, 16), (True, 24),
                                                          (False, 16), (False, 24)]  # fmt: skip
        for row in rows:
            assert row["status"] == "ok", row["reason"]
            assert max(row["check"]["relative_errors"].values()) < 1e-5
            assert set(row["check"]["relative_errors"]) == {
                "out (forward only)", "out", "dq", "dk", "dv"
            }  # fmt: skip
            assert row["forward"]["median"] > 0 and row["tflops"]["forward_backward"] > 0
            assert row["memory_bytes"] > 0
    torch_rows = _rows(attention_report, "torch-cpu")
    expected = "ok" if _torch_installed() else "unavailable"
    assert {row["status"] for row in torch_rows} == {expected}


def test_attention_report_passes_the_key_check_and_has_the_ratios(attention_report, tmp_path):
    assert harness.report_problems(attention_report, attention.TIMED) == []
    path = harness.write_report(attention_report, tmp_path / "a.json", attention.TIMED)
    assert json.loads(path.read_text())["benchmark"] == "attention"
    pairs = {(e["ours"], e["theirs"]) for e in attention_report["ratios"]}
    assert ("numpy-fused", "numpy-naive") in pairs
    assert (("numpy-fused", "torch-cpu") in pairs) == _torch_installed()
    table = attention.format_attention_table(attention_report)
    assert "numpy-fused/numpy-naive" in table and "GEMM peak cpu" in table


def test_attention_without_a_gpu_says_why_the_cuda_paths_did_not_run():
    if cuda_available():
        pytest.skip("this machine has a GPU")
    args = attention.options([*TINY, *FEW, "--sizes", "16", "--impl", "cupy-fused", "torch-cuda"])
    report = attention.run_attention_benchmark(args, log=_quiet)
    for row in report["results"]:
        assert row["status"] == "unavailable" and row["forward"] is None, row
        assert len(row["reason"]) > 20
    assert "cupy-fused: not available: " in attention.format_attention_table(report)


def test_a_wrong_attention_implementation_is_reported_wrong_and_not_timed(monkeypatch):
    right = attention.engine_functions

    def dq_one_percent_off(impl, causal, precision):
        forward, forward_backward = right(impl, causal, precision)
        if impl != "fused":
            return forward, forward_backward

        def wrong(*inputs):
            out, dq, dk, dv = forward_backward(*inputs)
            return out, 1.01 * dq, dk, dv

        return forward, wrong

    monkeypatch.setattr(attention, "engine_functions", dq_one_percent_off)
    args = attention.options([*TINY, *FEW, "--sizes", "16", "--impl", "numpy-naive", "numpy-fused"])
    report = attention.run_attention_benchmark(args, log=_quiet)
    for row in _rows(report, "numpy-fused"):
        assert row["status"] == "wrong" and row["reason"].startswith("dq: relative error 1.00e-02")
        assert row["forward"] is None and row["forward_backward"] is None and row["tflops"] is None
    assert all(row["status"] == "ok" for row in _rows(report, "numpy-naive"))
    assert "WRONG: dq" in attention.format_attention_table(report)


@pytest.mark.parametrize("len_q, len_k", [(6, 6), (4, 9), (9, 4)])
def test_reference_attention_agrees_with_torch_including_bottom_right_causal_rows(len_q, len_k):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    q, d_out = (rng.standard_normal((2, 3, len_q, 5)) for _ in range(2))
    k, v = (rng.standard_normal((2, 3, len_k, 5)) for _ in range(2))
    got = attention.reference_attention(q, k, v, d_out, causal=True)
    allowed = torch.ones(len_q, len_k, dtype=torch.bool).tril(diagonal=len_k - len_q)
    leaves = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    # a row with no allowed key: torch gives NaN, ours 0 (and 0 gradient)
    out = torch.nan_to_num(
        torch.nn.functional.scaled_dot_product_attention(*leaves, attn_mask=allowed)
    )
    out.backward(torch.tensor(d_out))
    expected = {
        "out": out,
        **{name: t.grad for name, t in zip(("dq", "dk", "dv"), leaves, strict=True)},
    }
    for name, theirs in expected.items():
        np.testing.assert_allclose(got[name], theirs.detach().numpy(), atol=1e-12, err_msg=name)


def test_bench_attention_command_prints_the_table_and_writes_json_and_png(tmp_path, capsys):
    json_path, png_path = tmp_path / "a.json", tmp_path / "a.png"
    code = main(["bench", "attention", *TINY, *FEW, "--no-causal", "--key-length", "20",
                 "--device", "cpu", "--json", str(json_path), "--plot", str(png_path)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "numpy-fused full" in printed and "ours/theirs" in printed
    report = json.loads(json_path.read_text())
    assert {(row["causal"], row["n_k"]) for row in report["results"]} == {(False, 20)}
    assert report["config"]["sizes"] == [16, 24] and report["config"]["causal"] is False
    with Image.open(png_path) as image:
        assert image.format == "PNG" and image.width == 900


@pytest.mark.gpu
def test_cuda_attention_paths_are_checked_and_timed_on_a_gpu():
    if not cuda_available():
        pytest.skip("needs CuPy and a GPU")
    args = attention.options([*TINY, *FEW, "--device", "cuda"])
    report = attention.run_attention_benchmark(args, log=_quiet)
    for name in ("cupy-naive", "cupy-fused", "cupy-auto"):
        for row in _rows(report, name):
            assert row["status"] == "ok", f"{name} N={row['n_q']}: {row['reason']}"
            assert row["memory_bytes"] is not None
    assert report["gemm_peak"]["cuda"]["tflops"] > 0


# -- ops and train -------------------------------------------------------------------------


def test_ops_checks_then_times_every_op_on_the_engine_numpy_and_torch(tmp_path):
    report = ops.run_ops_benchmark(ops.options(["--quick", *FEW[:4]]), log=_quiet)
    assert harness.report_problems(report, ops.TIMED) == []
    engine = _rows(report, "engine")
    assert [row["op"] for row in engine] == ["linear", "layer_norm", "softmax", "cross_entropy"]
    for row in engine + _rows(report, "numpy"):
        assert row["status"] == "ok", f"{row['op']}: {row['reason']}"
    expected = "ok" if _torch_installed() else "unavailable"
    assert {row["status"] for row in _rows(report, "torch")} == {expected}
    assert all(entry["forward_backward"] > 0 for entry in report["ratios"])


def test_train_steps_are_checked_against_float64_minivlm_and_timed():
    args = train.options(["--quick", "--repeats", "1", "--warmup", "0", "--device", "cpu"])
    report = train.run_train_benchmark(args, log=_quiet)
    assert harness.report_problems(report, ("step",)) == []
    rows = {row["implementation"]: row for row in report["results"]}
    assert rows["minivlm-cpu"]["status"] == "ok" and rows["minivlm-cpu"]["samples_per_second"] > 0
    errors = rows["minivlm-cpu"]["check"]["relative_errors"]
    parameters = VLM(train.model_case("tiny")[0]).state_dict()
    float64 = {"loss (float64)"} | {f"d {name} (float64)" for name in parameters}  # every one
    assert set(errors) == {"loss", "gradients"} | float64
    assert errors["loss"] < 1e-5 and errors["gradients"] < 1e-3
    assert max(errors[key] for key in float64) == 0  # minivlm on the CPU is the reference
    if _torch_installed():  # the twin computes the same loss and gradients from the same weights
        assert rows["torch-cpu"]["status"] == "ok", rows["torch-cpu"]["reason"]
        assert [entry["model"] for entry in report["ratios"]] == ["tiny"]
    else:
        assert rows["torch-cpu"]["status"] == "unavailable"


def test_the_captured_step_candidate_checks_and_steps_on_the_cpu_stand_in():
    """graph-cuda's code on the CPU (where its body runs eagerly): its weighted loss's
    gradients are the eager mean cross-entropy's, and a step trains the model."""
    from minivlm import manual_seed

    config, batch, length = train.model_case("tiny")
    manual_seed(0)
    state = VLM(config).state_dict()
    rng = np.random.default_rng(0)
    shape = (batch, 3, config.image_size, config.image_size)
    batches = [(rng.random(shape, dtype=np.float32),
                *rng.integers(0, config.vocab_size, (2, batch, length)))]  # fmt: skip
    graph = train.graph_candidate(config, state, "cpu", batches)
    eager = train.minivlm_candidate(config, state, "cpu", batches)
    got, want = graph.results(), eager.results()
    assert set(got) == set(want)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-7, err_msg=key)
    before = got["loss"]
    graph.runs["step"](0)
    assert graph.results()["loss"] != before, "a step changes the weights"


def test_a_training_step_with_wrong_gradients_is_refused_before_it_is_timed():
    def doubled(config, state, device, batches):
        right = train.minivlm_candidate(config, state, device, batches)

        def gradients():
            got = right.results()
            return {k: value if k.startswith("loss") else 2 * value for k, value in got.items()}

        def never(index):
            raise AssertionError("a step with wrong gradients was timed")

        return harness.Candidate(gradients, {"step": never})

    args = train.options(["--quick", "--repeats", "1", "--warmup", "0", "--device", "cpu"])
    report = train.run_train_benchmark(args, {"doubled": doubled}, log=_quiet)
    (row,) = report["results"]
    assert row["status"] == "wrong" and row["step"] is None
    assert (
        row["reason"].startswith("d ")
        and row["reason"].split(":")[0].endswith("(float64)")
        and "relative error 1.00e+00 > tolerance 1e-08" in row["reason"]
    )


def test_parts_take_a_step_apart_into_parts_that_add_up_to_it(capsys):
    argv = ["--quick", "--repeats", "2", "--warmup", "1", "--device", "cpu", "--parts"]
    report = train.run_train_benchmark(train.options(argv), log=_quiet)
    frameworks = report["parts"]["tiny"]
    assert set(frameworks) == ({"minivlm", "torch"} if _torch_installed() else {"minivlm"})
    for name, rows in frameworks.items():
        assert list(rows) == list(step_parts.ROWS)
        parts = sum(rows[row] for row in step_parts.ROWS[:-1])
        assert parts == pytest.approx(rows["step"]), name
        # the tiny model has linears, attention, layer norms, a ReLU and encoder dropout
        for part in ("matrix products", "attention", "layer norm", "ReLU", "dropout", "optimizer"):
            assert rows[part] > 0, (name, part)
    lines = step_parts.format_parts_table(report["parts"]).splitlines()
    assert [line.split()[1:-3] for line in lines[3:]] == [row.split() for row in step_parts.ROWS]


def test_parts_of_a_gpu_or_ranks_run_are_refused_naming_the_options(capsys):
    for extra in (["--device", "cuda"], ["--ranks", "1,2"]):
        assert main(["bench", "train", "--quick", "--parts", *extra]) == 2
        assert f"--parts: takes one process's CPU step apart; got {extra[0]}" in (
            capsys.readouterr().err
        )


def test_our_op_times_sorts_each_function_into_its_part_and_unwraps_after():
    from minivlm import F, Tensor
    from minivlm.autograd import Function
    from minivlm.functional.matmul import Linear

    x = Tensor(np.ones((3, 4), np.float32), requires_grad=True)
    weight = Tensor(np.ones((2, 4), np.float32), requires_grad=True)
    methods = {cls: dict(vars(cls)) for cls in (Function, Linear)}
    with step_parts.our_op_times() as times:
        F.relu(F.linear(x, weight)).sum().backward()
    assert set(times) == {"matrix products", "ReLU", "other ops"}  # Sum is another op
    assert all(seconds > 0 for seconds in times.values())
    assert {cls: dict(vars(cls)) for cls in (Function, Linear)} == methods


def test_torch_ops_are_sorted_by_name_and_ranges_are_left_out():
    assert step_parts.torch_part("aten::addmm") == "matrix products"
    assert step_parts.torch_part("aten::_scaled_dot_product_flash_attention_for_cpu") == (
        "attention"
    )
    assert step_parts.torch_part("aten::native_layer_norm_backward") == "layer norm"
    assert step_parts.torch_part("aten::add_") == "other ops"
    assert step_parts.torch_part("Optimizer.step#AdamW.step") is None
    assert step_parts.torch_part("autograd::engine::evaluate_function: MmBackward0") is None


def test_bench_registers_attention_ops_and_train_on_the_minivlm_command():
    parser = build_parser()
    for name, module in (("attention", attention), ("ops", ops), ("train", train)):
        args = parser.parse_args(["bench", name, "--quick"])
        assert args.handler is module.run_from_args


def test_a_candidate_with_its_own_tolerance_is_judged_by_it():
    """TF32 attention is checked at 1e-2, the others of its run at float32's 1e-4."""
    reference = {"out": np.ones(4)}

    def candidate(error, tolerance=None):
        results = lambda: {"out": np.ones(4) + error}  # noqa: E731
        return harness.Candidate(results, {}, tolerance=tolerance)

    rows = harness.check_then_time(
        {"plain": candidate(1e-3), "tf32": candidate(1e-3, tolerance=1e-2)}, reference, 1e-4, 1, 0
    )
    assert rows["plain"]["status"] == "wrong" and rows["tf32"]["status"] == "ok"
    assert rows["tf32"]["check"]["tolerance"] == 1e-2
