"""`minivlm bench train`: a training step of our VLM against its PyTorch twin, after a check.

A step is forward, cross-entropy over every text position, backward and AdamW (lr 1e-3,
weight decay 0.01), on random images and tokens. Models:

    reference   VLMConfig.reference(d_model=128): 224 px images, 16 px patches, 2 + 2
                layers; batch 16, text length 32
    demo        the `minivlm demo` model: 64 px images, 8 px patches; batch 64, text 24
    tiny        a few thousand parameters, for --quick and the tests

Both frameworks start from the same weights (torch_twin.py). Before anything is timed,
each (framework, device) computes the loss and every parameter's gradient of one batch
in eval mode (no dropout), twice, checked against minivlm in float64 on the CPU; one that
computes something else is reported WRONG, not timed. Then the steps are timed in
train mode. The two checks:

    float64   the loss and each parameter's gradient on its own, to 1e-8: the same
              maths, term by term
    float32   what is timed: the loss to 1e-5, and all gradients as one vector, to 1e-2
              of its largest element

Why float32 is judged over all gradients at once: a ReLU input within float32 rounding
of 0 (one in a few million, about one a batch for the demo model) flips to the other
side, which is as right as the first (a one-sided derivative), yet moves one token's
share of the gradients after it, up to 1% of a weight's largest entry.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from . import harness

LEARNING_RATE, WEIGHT_DECAY = 1e-3, 0.01
# relative errors against float64 (see above); a float64 gradient's is judged against at
# least 1e-3 of the model's largest gradient (a key bias's is 0: softmax ignores a shift
# of a whole row)
TOLERANCE = {"loss": 1e-5, "gradients": 1e-2, "float64": 1e-8}
# "graph": our step captured as a CUDA graph and replayed (minivlm.train.graph_step), GPU only
FRAMEWORKS = ("minivlm", "graph", "torch")
DEFAULTS = {"models": ["reference", "demo"], "repeats": 10, "warmup": 2}
QUICK = {"models": ["tiny"], "repeats": 3, "warmup": 1}


def model_case(name: str):
    """(VLMConfig, batch, text length) of a model the benchmark trains."""
    from ..models import VLMConfig

    if name == "reference":
        return VLMConfig.reference(d_model=128), 16, 32
    if name == "demo":
        from ..train import preset

        config = preset("demo")  # its model config has the tokenizer's vocab_size
        return config.model, config.batch_size, 24
    config = VLMConfig(
        image_size=16,
        patch_size=8,
        d_model=32,
        n_heads=2,
        n_encoder_layers=1,
        n_blocks=1,
        vocab_size=29,
        encoder_dropout=0.1,
        max_len=16,
        token_lags=2,
    )
    return config, 4, 8  # fmt: skip


def loss_of(model, images, tokens, targets, cross_entropy):
    logits = model(images, tokens)  # (B, T, V)
    return cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def check_entries(float32: dict, float64: dict) -> dict[str, np.ndarray]:
    """What a check compares, from the {"loss", "d NAME"} of a float32 and a float64 run:
    the float32 loss, the float32 gradients as one vector, and the float64 entries."""
    gradients = [g.ravel() for key, g in float32.items() if key != "loss"]
    return {
        "loss": float32["loss"],
        "gradients": np.concatenate(gradients),
        **{f"{key} (float64)": value for key, value in float64.items()},
    }


def our_training(config, state: dict, device: str, batches: list) -> tuple:
    """(model, AdamW, inputs): our float32 VLM from `state` on `device`, its optimizer, and
    `batches` as (images Tensor, tokens, targets) there."""
    from .. import Tensor
    from ..backend import to_device
    from ..optim import AdamW

    model = our_model(config, state, device, np.float32)
    optimizer = AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    inputs = [(Tensor(to_device(images, device)), *(to_device(a, device) for a in text))
              for images, *text in batches]  # fmt: skip
    return model, optimizer, inputs


def our_model(config, state: dict, device: str, dtype):
    """Our VLM with the weights `state`, on `device` in `dtype`."""
    from ..models import VLM

    model = VLM(config)
    model.load_state_dict(state)
    return model.to(device, dtype=dtype)


def torch_training(config, state: dict, device: str, batches: list) -> tuple:
    """(twin, torch.optim.AdamW, inputs): the PyTorch twin's counterparts."""
    import torch

    from .torch_twin import twin_of

    twin = twin_of(config, state, device)
    optimizer = torch.optim.AdamW(twin.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    inputs = [[torch.as_tensor(a).to(device) for a in batch] for batch in batches]
    return twin, optimizer, inputs


def minivlm_candidate(config, state: dict, device: str, batches: list) -> harness.Candidate:
    """Our VLM and AdamW on `device`."""
    from .. import F, Tensor
    from ..backend import to_numpy

    model, optimizer, inputs = our_training(config, state, device, batches)

    def loss_and_gradients(model, images) -> dict:
        model.eval()
        loss = loss_of(model, images, *inputs[0][1:], F.cross_entropy)
        loss.backward()
        got = {"loss": np.asarray(loss.item())}
        got.update({f"d {name}": to_numpy(p.grad) for name, p in model.named_parameters()})
        model.zero_grad()
        model.train()
        return got

    def gradients() -> dict:
        images64 = Tensor(inputs[0][0].data.astype(np.float64))
        return check_entries(
            loss_and_gradients(model, inputs[0][0]),
            loss_and_gradients(our_model(config, state, device, np.float64), images64),
        )

    def step(index: int) -> None:
        loss = loss_of(model, *inputs[index % len(inputs)], F.cross_entropy)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    clock = harness.cupy_clock if device == "cuda" else harness.cpu_clock
    return harness.Candidate(gradients, {"step": step}, clock, "numpy")


def graph_candidate(config, state: dict, device: str, batches: list) -> harness.Candidate:
    """Our VLM's step captured as a CUDA graph and replayed, FlatAdamW, no clipping: the
    same loss, the mean cross-entropy, written as weights 1 / (B T) on every target."""
    import math

    from .. import Tensor
    from ..backend import to_device, to_numpy
    from ..optim import FlatAdamW
    from ..train.graph_step import GraphedStep
    from ..train.loop import StepInputs, StepPart

    model = our_model(config, state, device, np.float32)
    optimizer = FlatAdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    graphed = GraphedStep(model, optimizer, grad_clip=math.inf)  # the norm, never a clip
    steps = []
    for images, tokens, targets in batches:
        weights = np.full(tokens.shape, 1.0 / tokens.size)  # (B, T): the mean
        part = StepPart(*(to_device(a, device) for a in (images, tokens, targets, weights)))
        steps.append(StepInputs(0, (part,), 1.0))

    def loss_and_gradients(model, dtype) -> dict:
        model.eval()
        part = steps[0].parts[0]
        _, loss = model(Tensor(part.images.astype(dtype)), part.inputs, part.targets,
                        part.weights)  # fmt: skip
        loss.backward()
        got = {"loss": np.asarray(loss.item())}
        got.update({f"d {name}": to_numpy(p.grad) for name, p in model.named_parameters()})
        model.zero_grad()
        return got

    def gradients() -> dict:
        return check_entries(
            loss_and_gradients(model, np.float32),
            loss_and_gradients(our_model(config, state, device, np.float64), np.float64),
        )

    def step(index: int) -> None:
        graphed(steps[index % len(steps)])

    return harness.Candidate(gradients, {"step": step}, harness.cupy_clock, "numpy")


def torch_candidate(config, state: dict, device: str, batches: list) -> harness.Candidate:
    """The PyTorch twin and torch.optim.AdamW on `device`."""
    import torch.nn.functional as tf

    from .torch_twin import twin_of

    twin, optimizer, inputs = torch_training(config, state, device, batches)

    def loss_and_gradients(twin, images) -> dict:
        twin.eval()
        loss = loss_of(twin, images, *inputs[0][1:], tf.cross_entropy)
        loss.backward()
        got = {"loss": np.asarray(loss.item())}
        got.update({f"d {name}": p.grad.cpu().numpy() for name, p in twin.named_parameters()})
        twin.zero_grad()
        twin.train()
        return got

    def gradients() -> dict:
        state64 = {name: array.astype(np.float64) for name, array in state.items()}
        return check_entries(
            loss_and_gradients(twin, inputs[0][0]),
            loss_and_gradients(twin_of(config, state64, device), inputs[0][0].double()),
        )

    def step(index: int) -> None:
        loss = loss_of(twin, *inputs[index % len(inputs)], tf.cross_entropy)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    clock = harness.torch_cuda_clock if device == "cuda" else harness.cpu_clock
    return harness.Candidate(gradients, {"step": step}, clock, "torch")


MAKERS = {"minivlm": minivlm_candidate, "graph": graph_candidate, "torch": torch_candidate}


def reference_gradients(config, state: dict, batch) -> dict[str, np.ndarray]:
    """minivlm's loss and gradients in float64 on the CPU, eval mode: the oracle, as
    check_entries gives them."""
    from .. import F, Tensor

    model = our_model(config, state, "cpu", np.float64).eval()
    images, tokens, targets = batch
    loss = loss_of(model, Tensor(images.astype(np.float64)), tokens, targets, F.cross_entropy)
    loss.backward()
    got = {"loss": np.asarray(loss.item())}
    got.update({f"d {name}": p.grad for name, p in model.named_parameters()})
    return check_entries(got, got)


def run_train_benchmark(args: argparse.Namespace, makers: dict | None = None, log=harness.log):
    """Check, then time, a training step of every model on every framework and device.
    `makers` {framework: (config, state, device, batches) -> Candidate} replaces MAKERS."""
    from .. import manual_seed
    from ..models import VLM

    machine = harness.machine_facts()
    makers = makers or {name: MAKERS[name] for name in args.framework}
    devices = ("cpu", "cuda") if args.device == "all" else (args.device,)
    rng = np.random.default_rng(args.seed)
    results, models, parts = [], [], {}
    for model_name in args.models:
        config, batch, length = model_case(model_name)
        manual_seed(args.seed)
        state = VLM(config).state_dict()
        models.append(
            {
                "name": model_name,
                "parameters": sum(a.size for a in state.values()),
                "config": config.to_dict(),
                "batch": batch,
                "text_length": length,
            }
        )
        shape = (batch, 3, config.image_size, config.image_size)
        batches = [
            (
                rng.random(shape, dtype=np.float32),
                *rng.integers(0, config.vocab_size, (2, batch, length)),
            )
            for _ in range(2)
        ]
        reference = reference_gradients(config, state, batches[0])
        largest = float(np.abs(reference["gradients"]).max())
        tolerance = {key: TOLERANCE.get(key, TOLERANCE["float64"]) for key in reference}
        candidates, rows = {}, {}
        for device, (framework, make) in ((d, m) for d in devices for m in makers.items()):
            name = f"{framework}-{device}"
            why = harness.why_no_torch(device) if framework == "torch" else None
            why = why or (harness.why_no_cuda() if device == "cuda" else None)
            if framework == "graph" and device == "cpu":
                why = "a CUDA graph is captured on a GPU only"
            rows[name] = why and harness.row(name, "unavailable", why)
            try:
                if why is None:
                    candidates[name] = make(config, state, device, batches)
            except Exception as err:  # report it, go on with the others
                rows[name] = harness.row(name, "error", f"{type(err).__name__}: {err}")
        rows.update(harness.check_then_time(
            candidates, reference, tolerance, args.repeats, args.warmup, 1e-3 * largest
        ))  # fmt: skip
        if args.parts:
            parts[model_name] = _step_parts(args, config, state, batches, rows)
        for name, result in rows.items():
            step = result.setdefault("step", None)
            rate = step and batch / step["median"]
            results.append({**result, "model": model_name, "samples_per_second": rate})
            log(f"{model_name} {name}: {result['status']}")
    pairs = [(f"minivlm-{device}", f"torch-{device}") for device in devices]
    pairs += [("graph-cuda", "torch-cuda"), ("graph-cuda", "minivlm-cuda")] * ("cuda" in devices)
    report = {
        "benchmark": "train", "machine": machine, "config": harness.settings(args),
        "models": models, "results": results,
        "ratios": harness.ratios(results, pairs, ("model",), ("step",)),
    }  # fmt: skip
    return {**report, "parts": parts} if parts else report


def _step_parts(args, config, state: dict, batches: list, rows: dict) -> dict:
    """--parts: {framework: {row: ms}} of each framework whose CPU step passed its check."""
    from .step_parts import our_parts, torch_parts

    takers = {"minivlm": our_parts, "torch": torch_parts}
    return {
        framework: takers[framework](config, state, batches, args.repeats, args.warmup)
        for framework in args.framework
        if (rows.get(f"{framework}-cpu") or {}).get("status") == "ok"
    }


def format_train_table(report: dict) -> str:
    config = report["config"]
    lines = [
        harness.describe(report["machine"]),
        f"training step (forward, loss, backward, AdamW); ms: median [p10, p90] of "
        f"{config['repeats']} steps per block (NumPy's and PyTorch's in 3 alternating blocks), "
        f"after {config['warmup']} warm-up",
    ]
    for m in report["models"]:
        c = m["config"]
        lines.append(
            f"  {m['name']}: {m['parameters']:,} parameters, {c['image_size']} px images in "
            f"{c['patch_size']} px patches, d_model {c['d_model']}, {c['n_encoder_layers']}+"
            f"{c['n_blocks']} layers, vocab {c['vocab_size']}; batch {m['batch']}, text "
            f"length {m['text_length']}"
        )

    def float64_error(r):
        found = r["check"]["relative_errors"]
        return max(value for key, value in found.items() if key.endswith("(float64)"))

    columns = {
        "step ms": lambda r: harness.spread(r["step"], digits=1),
        "samples/s": lambda r: f"{r['samples_per_second']:.1f}",
        "loss err": lambda r: f"{r['check']['relative_errors']['loss']:.0e}",
        "grads err": lambda r: f"{r['check']['relative_errors']['gradients']:.0e}",
        "float64 err": lambda r: f"{float64_error(r):.0e}",
    }
    label = ("model framework-device", lambda r: f"{r['model']} {r['implementation']}")
    lines += ["", harness.results_table(report["results"], label, columns)]
    lines += ["", "step time, minivlm over PyTorch (below 1: ours is faster)"]
    lines.append(harness.ratios_table(report["ratios"], ("model",), ("step",)))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--models", nargs="+", choices=("reference", "demo", "tiny"), help="(reference demo)")
    add("--device", choices=("cpu", "cuda", "all"), default="all")
    add("--framework", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS))
    add("--repeats", type=harness.positive, help="timed steps (10; --quick 3)")
    add("--warmup", type=int, help="untimed steps first (2; --quick 1)")
    add("--seed", type=int, default=0)
    add("--quick", action="store_true", help="the tiny model, 3 steps")
    add("--json", type=Path, default=Path("benchmarks/out/train.json"), help="the report")
    add(
        "--parts",
        action="store_true",
        help="then where each CPU step's time goes, ours and PyTorch's: matrix products, "
        "attention, layer norm, ReLU, other ops, the engine, the optimizer",
    )
    add(
        "--ranks",
        type=_rank_counts,
        help="e.g. 1,2: instead, samples/s of real training steps of the demo preset (the "
        "first of --models) on each number of MPI ranks sharing this machine's cores, and "
        "the scaling efficiency (needs minivlm[mpi])",
    )
    parser.set_defaults(handler=run_from_args)


def _rank_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected rank counts like 1,2, got {text!r}")
    return counts


def options(argv: list[str]) -> argparse.Namespace:
    return harness.options("train", add_arguments, argv, DEFAULTS, QUICK)


def run_from_args(args: argparse.Namespace) -> int:
    if args.parts and (args.ranks or args.device == "cuda"):
        given = "--ranks" if args.ranks else "--device cuda"
        raise ValueError(f"--parts: takes one process's CPU step apart; got {given} with it")
    if args.ranks:
        return _run_ranks(args)
    report = run_train_benchmark(harness.with_defaults(args, DEFAULTS, QUICK))
    print(format_train_table(report))
    if "parts" in report:
        from .step_parts import format_parts_table

        print("\n" + format_parts_table(report["parts"]))
    print(f"\nJSON: {harness.write_report(report, args.json, ('step',))}")
    return 1 if any(r["status"] in ("wrong", "error") for r in report["results"]) else 0


def _run_ranks(args: argparse.Namespace) -> int:
    """`--ranks`: the demo preset (tiny with --quick), 20 steps (3) after 3 (1), 3 blocks."""
    from ..checkpoint import atomic_write_bytes
    from .ranks import format_ranks_table, run_ranks

    model = "tiny" if args.quick else (args.models or ["demo"])[0]
    if model not in ("demo", "tiny"):
        raise ValueError(f"--ranks: trains a preset, demo or tiny; got --models {model}")
    steps, warmup = (3, 1) if args.quick else (args.repeats or 20, args.warmup or 3)
    report = run_ranks(args.ranks, model, steps, warmup, 1 if args.quick else 3, harness.log)
    report["machine"] = harness.machine_facts()
    print(format_ranks_table(report, harness.describe(report["machine"])))
    path = args.json.with_name(args.json.stem + "_ranks.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(report, indent=1).encode())
    print(f"\nJSON: {path}")
    return 0
