"""A training step captured once as a CUDA graph and replayed (`--cuda-graph`).

Eager, a step of the demo model is hundreds of small kernels, each launched from Python
through the engine: on a GPU the host, not the device, sets the pace. A graph replays
every kernel of the step with one launch. What it replays is fixed at capture: the
shapes, the addresses of every array, every argument passed by value. So the step that
is captured is written for that (`GraphedStep.body`):

- fixed shapes: all rows in one pass, padded to one of a few widths (FixedShapes); a
  graph per width, each captured after one eager step of that width (its warm-up)
- inputs copied into the same device buffers before each replay
- nothing read back to the host inside: ids and targets are checked on the host when
  the batch is prepared (backend.values_checked_on_host); the loss weights come already
  divided by the batch's total; clipping and the non-finite test run on the device
  (FlatAdamW.clip_grad_norm_ makes a NaN scale, and the update then changes nothing)
- numbers that change every step are read from device tables the host rewrites before
  each replay: the optimizer's factors (lr, bias corrections; FlatAdamW.prepare_step)
  and dropout's keys (random.DeviceKeys)
- memory from a pool of its own, used by nothing else, so the addresses the graph
  writes stay its own between replays

After each replay the host reads the loss and the gradient norm (one sync); if either
is NaN or inf, the update was skipped on the device, the optimizer's step counts are
taken back and NonFiniteError is raised, as an eager step does.

On the CPU there is nothing to capture: the same body runs eagerly each step. That is
what the tests run here, against the Trainer's eager step.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .. import random
from ..autograd import Tensor
from ..backend import (
    get_array_module,
    is_cupy,
    require_cuda,
    to_numpy,
    values_checked_on_host,
)
from ..data import IGNORE_INDEX
from .checkpoint import NonFiniteError

WIDTH_STEP = 16  # padded widths are multiples of this (and the longest a batch can be)


@dataclass(frozen=True)
class FixedShapes:
    """The inputs of a captured step: every row in one pass, the width padded to the
    smallest of `widths` that holds the longest row (inputs with id 0, targets with
    IGNORE_INDEX, weights with 0: causal attention keeps real positions from seeing the
    padding, and a 0 weight trains nothing), the weights divided by the batch's total,
    and the ids and targets checked here, on the host."""

    widths: tuple[int, ...]  # increasing; the last is the longest a batch can be
    vocab_size: int

    @classmethod
    def for_model(cls, max_len: int, vocab_size: int) -> FixedShapes:
        """Multiples of WIDTH_STEP below max_len, and max_len (inputs have at most max_len
        positions)."""
        return cls((*range(WIDTH_STEP, max_len, WIDTH_STEP), max_len), vocab_size)

    def width(self, longest: int) -> int:
        for width in self.widths:
            if longest <= width:
                return width
        raise ValueError(
            f"FixedShapes: a row of {longest} positions is longer than the widest shape, "
            f"{self.widths[-1]}"
        )

    def pad(self, images, inputs, targets, weights, lengths, total: float) -> tuple:
        """(images, inputs, targets, weights) of the one pass: images (B, 3, S, S) as they
        are; inputs, targets (B, W) int64 and weights (B, W) float64 padded or cut to the
        bucket W of the longest of `lengths` (B,), weights divided by `total`."""
        width = self.width(int(lengths.max()))
        self.check_ids("inputs", inputs, allow_ignore=False)
        self.check_ids("targets", targets, allow_ignore=True)
        shares = weights / max(total, np.finfo(np.float64).tiny)
        return (
            images,
            _fit(inputs, width, 0),
            _fit(targets, width, IGNORE_INDEX),
            _fit(shares, width, 0.0),
        )

    def check_ids(self, name: str, ids: np.ndarray, allow_ignore: bool) -> None:
        valid = (ids >= 0) & (ids < self.vocab_size)
        if allow_ignore:
            valid |= ids == IGNORE_INDEX
        if not valid.all():
            bad = int(ids[~valid][0])
            also = f" or {IGNORE_INDEX}" if allow_ignore else ""
            raise ValueError(
                f"{name}: expected ids in 0..{self.vocab_size - 1}{also}, got {bad}"
            )


def _fit(array: np.ndarray, width: int, fill) -> np.ndarray:
    """array (B, T) cut or padded with `fill` to (B, width)."""
    if array.shape[1] >= width:
        return array[:, :width]
    padded = np.full((array.shape[0], width), fill, dtype=array.dtype)
    padded[:, : array.shape[1]] = array
    return padded


@dataclass
class StaticStep:
    """The device buffers one shape's graph reads and writes: the batch (copied in before
    each replay), the loss and the gradient norm (read after, together)."""

    images: object  # (B, 3, S, S) float32
    inputs: object  # (B, W) int64
    targets: object  # (B, W) int64
    weights: object  # (B, W) float64, summing to 1 over the batch
    results: object  # (2,) float64: the loss and the gradient norm, read in one copy

    @classmethod
    def like(cls, xp, part) -> StaticStep:
        arrays = [xp.empty(a.shape, a.dtype) for a in (part.images, part.inputs, part.targets)]
        weights = xp.empty(part.weights.shape, np.float64)
        return cls(*arrays, weights, xp.zeros(2, np.float64))

    def fill(self, part) -> None:
        """Copy the part's arrays (host or device) into the buffers."""
        xp = get_array_module(self.images)
        for name in ("images", "inputs", "targets", "weights"):
            xp.copyto(getattr(self, name), xp.asarray(getattr(part, name)), casting="same_kind")


class GraphedStep:
    """Training steps on fixed shapes (one part, see FixedShapes), each shape's step
    captured as a CUDA graph after one eager step and replayed after; on the CPU, or
    with capture=False, the body runs eagerly. `optimizer` is a FlatAdamW over the
    model's parameters."""

    def __init__(self, model, optimizer, grad_clip: float, capture: bool = True) -> None:
        self.model, self.optimizer, self.grad_clip = model, optimizer, grad_clip
        self.capture = capture
        self.shapes: dict[tuple, EagerShape | CapturedShape] = {}

    def __call__(self, inputs) -> float:
        """One update from the StepInputs of one part; returns the loss (a float)."""
        if len(inputs.parts) != 1:
            raise ValueError(
                f"GraphedStep inputs: expected one part (FixedShapes), got {len(inputs.parts)}"
            )
        (part,) = inputs.parts
        key = tuple(getattr(part, name).shape for name in ("images", "inputs"))
        if key not in self.shapes:
            xp = get_array_module(next(self.model.parameters()).data)
            kind = CapturedShape if self.capture and is_cupy(xp) else EagerShape
            self.shapes[key] = kind(self, StaticStep.like(xp, part))
        shape = self.shapes[key]
        shape.static.fill(part)
        return shape.run()

    def body(self, static: StaticStep, prepare: bool) -> None:
        """The step itself, on the static buffers: forward, backward, clipping and the
        update, with no value read back to the host. `prepare`: run the optimizer's host
        half in between (eager); a captured body leaves it to the host before each replay."""
        self.model.train()
        self.optimizer.zero_grad()
        with values_checked_on_host():  # forward and backward: no device value read
            _, loss = self.model(Tensor(static.images), static.inputs, static.targets,
                                 static.weights)  # fmt: skip
            loss.backward()
        norm = self.optimizer.clip_grad_norm_(self.grad_clip, loss=loss.data)
        if prepare:
            self.optimizer.prepare_step()
        self.optimizer.apply_step()
        static.results[0] = loss.data
        static.results[1] = norm

    def finish(self, static: StaticStep) -> float:
        """The loss after a step: the one read from the device. A NaN or inf loss or norm
        means the update was skipped: take the step counts back and say so."""
        loss, norm = (float(x) for x in to_numpy(static.results))
        if not (math.isfinite(loss) and math.isfinite(norm)):
            self.optimizer.undo_prepare()
            raise NonFiniteError(f"the loss is {loss} and the gradient norm {norm}")
        return loss


class EagerShape:
    """One shape's steps run eagerly, the body as it is (the CPU)."""

    def __init__(self, step: GraphedStep, static: StaticStep) -> None:
        self.step, self.static = step, static

    def run(self) -> float:
        self.step.body(self.static, prepare=True)
        return self.step.finish(self.static)


class CapturedShape:
    """One shape's steps on a GPU: the first runs eagerly on a side stream from a memory
    pool of its own (the warm-up: kernels compiled, the pool's blocks allocated, cuBLAS's
    workspace made), the second captures the body on that stream and every step from
    then on replays it."""

    def __init__(self, step: GraphedStep, static: StaticStep) -> None:
        self.step, self.static = step, static
        self.cupy = require_cuda()
        self.stream = self.cupy.cuda.Stream(non_blocking=True)  # capture needs one
        self.pool = self.cupy.cuda.MemoryPool()  # the graph's memory, nobody else's
        self.keys = random.DeviceKeys(self.cupy)
        self.graph = None
        self.warmed_up = False

    def run(self) -> float:
        if not self.warmed_up:
            with self._on_own_stream(draw_keys_now=True):
                self.step.body(self.static, prepare=True)
            self.warmed_up = True
            return self.step.finish(self.static)
        if self.graph is None:
            self.graph = self._capture()
        self.step.optimizer.prepare_step()  # this step's factors, before the replay
        self.keys.refill()
        self.graph.launch(stream=self.cupy.cuda.get_current_stream())
        return self.step.finish(self.static)

    def _capture(self):
        with self._on_own_stream():
            self.stream.begin_capture()
            try:
                self.step.body(self.static, prepare=False)
            except Exception as error:  # end the capture, then say what broke it
                with contextlib.suppress(Exception):
                    self.stream.end_capture()
                raise RuntimeError(
                    f"capturing the training step as a CUDA graph failed ({type(error).__name__}:"
                    f" {error}); train without --cuda-graph"
                ) from error
            return self.stream.end_capture()

    @contextlib.contextmanager
    def _on_own_stream(self, draw_keys_now: bool = False) -> Iterator[None]:
        """The side stream, after what the current stream has queued (the buffers'
        copies), with the own pool and dropout's key table (keys drawn as they are
        taken in the warm-up, refilled before each replay); the current stream then
        waits for it."""
        current = self.cupy.cuda.get_current_stream()
        self.stream.wait_event(current.record())
        with (
            self.cupy.cuda.using_allocator(self.pool.malloc),
            self.stream,
            random.use_device_keys(self.keys, draw_now=draw_keys_now),
        ):
            yield
        current.wait_event(self.stream.record())
