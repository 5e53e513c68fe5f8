"""`minivlm bench train --parts`: where a training step's time goes, ours and PyTorch's.

The step is the benchmark's (forward, loss, backward, AdamW), on the CPU. Each framework
runs it `repeats` times after `warmup` with its ops timed: ours by wrapping each
Function's forward and backward in time.perf_counter, PyTorch's by torch.profiler (the
self CPU time of each aten op). The step's two phases are timed around them: the
gradient (forward, loss, zero_grad, backward) and the optimizer.

The ops are summed into PARTS by name; what the gradient phase spent outside them is the
engine and Python: building the graph, walking it back, the calls between ops. Times
are means over the steps, in ms, so that the parts add up to the step. Timing the ops
costs time, PyTorch's profiler more than our wrappers (a third of the reference model's
step, which runs many small ops): the benchmark's table has the times to compare.
PyTorch's parts are told apart by op names alone: its encoder attends with bmm and
softmax where the model has dropout (the reference model), so those count as attention,
and the multiply of its dropout as another op.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

import numpy as np

PARTS = ("matrix products", "attention", "layer norm", "ReLU", "dropout", "other ops")
# our Functions by class name, and PyTorch's aten ops, in the parts they belong to
OUR_PARTS = {
    "Linear": "matrix products",
    "MatMul": "matrix products",
    "Attention": "attention",
    "FusedAttention": "attention",
    "LayerNorm": "layer norm",
    "ReLU": "ReLU",
    "Dropout": "dropout",
}
TORCH_PARTS = {
    "aten::mm": "matrix products",
    "aten::addmm": "matrix products",
    "aten::bmm": "attention",  # only the twin's attention multiplies batches of matrices
    "aten::baddbmm": "attention",
    "aten::_softmax": "attention",
    "aten::_softmax_backward_data": "attention",
    "aten::native_layer_norm": "layer norm",
    "aten::native_layer_norm_backward": "layer norm",
    "aten::relu": "ReLU",
    "aten::clamp_min": "ReLU",
    "aten::threshold_backward": "ReLU",
    "aten::bernoulli_": "dropout",
    "aten::native_dropout": "dropout",
    "aten::native_dropout_backward": "dropout",
}
ENGINE = "engine and Python"
ROWS = (*PARTS, ENGINE, "optimizer", "step")


def torch_part(op: str) -> str | None:
    """The part of a torch.profiler event, or None for one that is not an aten op (a
    record_function range, the autograd engine's wrapper events)."""
    if "scaled_dot_product" in op:
        return "attention"
    if not op.startswith("aten::"):
        return None
    return TORCH_PARTS.get(op, "other ops")


@contextlib.contextmanager
def our_op_times() -> Iterator[dict[str, float]]:
    """{part: seconds} of every Function's forward and backward run inside the block.

    Each Function subclass's own forward and backward are wrapped for the block's
    duration (and restored after); a call made inside another timed call (a subclass
    calling its base's forward) counts once, in the outer one.
    """
    from ..autograd import Function

    times: dict[str, float] = defaultdict(float)
    depth = [0]

    def timed(method: Callable, part: str) -> Callable:
        def call(self, *args, **kwargs):
            depth[0] += 1
            start = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    times[part] += time.perf_counter() - start

        return call

    wrapped = []
    for cls in _subclasses(Function):
        part = OUR_PARTS.get(cls.__name__, "other ops")
        for name in ("forward", "backward"):
            if name in vars(cls):
                wrapped.append((cls, name, vars(cls)[name]))
                setattr(cls, name, timed(vars(cls)[name], part))
    try:
        yield times
    finally:
        for cls, name, method in wrapped:
            setattr(cls, name, method)


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return list(dict.fromkeys(found))


def our_parts(config, state: dict, batches: list, repeats: int, warmup: int) -> dict:
    """{row: ms a step} of our VLM and AdamW on the CPU."""
    from .. import F
    from .train import our_training

    model, optimizer, inputs = our_training(config, state, "cpu", batches)
    gradient = _gradient_phase(model, optimizer, inputs, F.cross_entropy)
    _phase_times(gradient, optimizer.step, warmup)
    with our_op_times() as times:
        phases = _phase_times(gradient, optimizer.step, repeats)
    return _rows(phases, {part: seconds / repeats for part, seconds in times.items()})


def torch_parts(config, state: dict, batches: list, repeats: int, warmup: int) -> dict:
    """{row: ms a step} of the PyTorch twin and torch.optim.AdamW on the CPU."""
    import torch.nn.functional as tf
    from torch.profiler import profile

    from .train import torch_training

    twin, optimizer, inputs = torch_training(config, state, "cpu", batches)
    gradient = _gradient_phase(twin, optimizer, inputs, tf.cross_entropy)
    _phase_times(gradient, optimizer.step, warmup)
    with profile() as profiler:
        phases = _phase_times(gradient, optimizer.step, repeats)
    times: dict[str, float] = defaultdict(float)
    for event in profiler.events():
        part = torch_part(event.name)
        if part is not None and not _inside_optimizer(event):
            times[part] += event.self_cpu_time_total / 1e6 / repeats  # us -> s a step
    return _rows(phases, times)


def _gradient_phase(model, optimizer, inputs: list, cross_entropy) -> Callable[[int], None]:
    """gradient(i): forward and loss on input set i, zero_grad, backward."""
    from .train import loss_of

    def gradient(index: int) -> None:
        loss = loss_of(model, *inputs[index % len(inputs)], cross_entropy)
        optimizer.zero_grad()
        loss.backward()

    return gradient


def _inside_optimizer(event) -> bool:
    """Whether a profiler event ran inside optimizer.step() (timed as the optimizer)."""
    while event is not None:
        if event.name.startswith("Optimizer.step"):
            return True
        event = event.cpu_parent
    return False


def _phase_times(gradient, update, steps: int) -> dict[str, float]:
    """Mean seconds a step of `gradient(i)` and of `update()`, over `steps` steps."""
    spent = {"gradient": 0.0, "optimizer": 0.0}
    for index in range(steps):
        start = time.perf_counter()
        gradient(index)
        middle = time.perf_counter()
        update()
        spent["gradient"] += middle - start
        spent["optimizer"] += time.perf_counter() - middle
    return {phase: seconds / max(steps, 1) for phase, seconds in spent.items()}


def _rows(phases: dict[str, float], op_seconds: dict[str, float]) -> dict[str, float]:
    """{row: ms}: each part, the engine (the gradient phase less its ops), the optimizer
    and the whole step."""
    rows = {part: 1e3 * op_seconds.get(part, 0.0) for part in PARTS}
    rows[ENGINE] = 1e3 * phases["gradient"] - sum(rows.values())
    rows["optimizer"] = 1e3 * phases["optimizer"]
    rows["step"] = 1e3 * (phases["gradient"] + phases["optimizer"])
    return rows


def format_parts_table(parts: dict[str, dict[str, dict[str, float]]]) -> str:
    """{model: {framework: {row: ms}}} as a table: a line per model and row."""
    from .harness import table

    lines = [
        "where a step's time goes, ms a step (means; ours: each op's forward and backward "
        "timed; PyTorch's: torch.profiler's self time of its aten ops)"
    ]
    body = []
    for model, frameworks in parts.items():
        ours, theirs = frameworks.get("minivlm"), frameworks.get("torch")
        for name in ROWS:
            mine = ours[name] if ours else None
            other = theirs[name] if theirs else None
            ratio = mine / other if mine is not None and other and other > 0 else None
            body.append([model, name, _ms(mine), _ms(other), "-" if ratio is None else
                         f"{ratio:.2f}"])  # fmt: skip
    lines.append(table(["model", "part", "minivlm", "PyTorch", "ours/theirs"], body))
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None or np.isnan(value) else f"{value:.1f}"
