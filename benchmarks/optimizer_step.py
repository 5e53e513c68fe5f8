"""Time one optimizer step, AdamW against FlatAdamW, on the demo model's parameters (CPU).

usage: python benchmarks/optimizer_step.py [--rounds 15] [--steps 10] [--model demo]

The model is built as `minivlm bench train` builds it (float32, its seed-0 weights) and
one backward of a random batch gives the gradients, which every timed step reuses. Both
optimizers are timed with one param group (as the benchmark's AdamW) and with the two
groups of minivlm/train/loop.py's parameter_groups (as the Trainer's). Each round times
`--steps` steps of each optimizer in turn, so slow phases of the machine hit both; the
table gives the median over rounds of the time a step, in ms. FlatAdamW's step includes
copying the gradients into its flat buffer.
"""

from __future__ import annotations

import minivlm  # before NumPy: the allocator and thread settings come first

minivlm.backend.keep_freed_memory()

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from minivlm import F, Tensor, manual_seed  # noqa: E402
from minivlm.backend import usable_cores  # noqa: E402
from minivlm.bench.harness import cpu_model  # noqa: E402
from minivlm.bench.train import model_case  # noqa: E402
from minivlm.models import VLM  # noqa: E402
from minivlm.optim import AdamW, FlatAdamW  # noqa: E402
from minivlm.train.loop import parameter_groups  # noqa: E402

LEARNING_RATE, WEIGHT_DECAY = 1e-3, 0.01  # as minivlm/bench/train.py


def model_with_gradients(name: str, seed: int = 0) -> VLM:
    """The benchmark's model `name` in float32, each parameter's .grad from one backward."""
    config, batch, length = model_case(name)
    manual_seed(seed)
    model = VLM(config)
    rng = np.random.default_rng(seed)
    images = Tensor(rng.random((batch, 3, config.image_size, config.image_size), np.float32))
    tokens, targets = rng.integers(0, config.vocab_size, (2, batch, length))
    logits = model(images, tokens)  # (B, T, V)
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)).backward()
    return model


def make_optimizer(kind, model: VLM, grouped: bool):
    params = parameter_groups(model, WEIGHT_DECAY) if grouped else list(model.parameters())
    return kind(params, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)


def seconds_a_step(optimizer, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=10, help="steps timed together a round")
    parser.add_argument("--model", default="demo", choices=("demo", "reference", "tiny"))
    args = parser.parse_args()

    print(f"CPU: {cpu_model()}, {usable_cores()} cores; NumPy {np.__version__}")
    for grouped in (False, True):
        models = {kind: model_with_gradients(args.model) for kind in (AdamW, FlatAdamW)}
        optimizers = {kind: make_optimizer(kind, models[kind], grouped) for kind in models}
        params = list(models[AdamW].parameters())
        for optimizer in optimizers.values():  # warm-up: first-step allocations
            seconds_a_step(optimizer, 2)
        times = {kind: [] for kind in optimizers}
        for _ in range(args.rounds):
            for kind, optimizer in optimizers.items():
                times[kind].append(seconds_a_step(optimizer, args.steps))
        size = sum(p.size for p in params)
        label = "two groups (Trainer)" if grouped else "one group (bench train)"
        print(f"\n{args.model} model, {len(params)} parameters, {size:,} elements, {label}:")
        medians = {kind: 1e3 * statistics.median(values) for kind, values in times.items()}
        for kind, values in times.items():
            low, high = 1e3 * min(values), 1e3 * max(values)
            print(f"  {kind.__name__:10s} {medians[kind]:8.3f} ms a step  [{low:.3f}, {high:.3f}]")
        print(f"  FlatAdamW is {medians[AdamW] / medians[FlatAdamW]:.2f}x as fast")


if __name__ == "__main__":
    main()
