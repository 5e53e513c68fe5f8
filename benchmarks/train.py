"""`minivlm bench train`: one training step of our VLM against the same model in PyTorch.

A step is forward, cross-entropy loss over every text position, backward and an AdamW
update (lr 1e-3, weight decay 0.01, no clipping), on random images and tokens. Models:

    reference   VLMConfig.reference(d_model=128): 224 px images, 16 px patches,
                2 encoder layers + 2 blocks; batch 16, text length 32
    demo        the `minivlm demo` model (train_config preset "demo"): 64 px images,
                8 px patches, d_model 128, 2 + 2 layers; batch 64, text length 24

The PyTorch twin is written here with torch.nn.functional, its parameters a dict under
our parameter names, loaded with our initial weights. Before anything is timed, each
(framework, device) computes the loss and every gradient of one batch in eval mode
(no dropout), and they are checked against minivlm on the CPU: a twin that computes
something else is reported WRONG, not timed. Then steps are timed in train mode.

    python -m benchmarks.train [--models reference demo] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from . import timing
from .attention import set_torch_threads
from .machine import blas_threads, describe, keep_freed_memory, machine_facts
from .report import command_line, log_to_stderr, run_module, status_text, write_json

FRAMEWORKS = ("minivlm", "torch")
DEFAULT_OUT = Path(__file__).resolve().parent / "out"
LEARNING_RATE, WEIGHT_DECAY = 1e-3, 0.01
# relative error against minivlm on the CPU: of the loss, and max over the parameters'
# gradients (max |got - want| / max |want| per parameter)
TOLERANCE = {"loss": 1e-5, "gradients": 1e-3}


@dataclass(frozen=True)
class TrainCase:
    """A model (a VLMConfig) and the batch it trains on."""

    name: str
    model: object  # minivlm.models.VLMConfig
    batch: int
    text_length: int


def reference_case() -> TrainCase:
    from minivlm.models import VLMConfig

    return TrainCase("reference", VLMConfig.reference(d_model=128), batch=16, text_length=32)


def demo_case() -> TrainCase:
    from minivlm.data import default_tokenizer
    from minivlm.train import model_config, preset, scene_config

    config = preset("demo")
    vocab = default_tokenizer(scene_config(config)).vocab_size
    return TrainCase("demo", model_config(config, vocab), batch=config.batch_size, text_length=24)


def tiny_case() -> TrainCase:
    """Seconds, not minutes: for --quick and the tests."""
    from minivlm.models import VLMConfig

    config = VLMConfig(
        image_size=16, patch_size=8, d_model=32, n_heads=2, n_encoder_layers=1, n_blocks=1,
        vocab_size=29, encoder_dropout=0.1, max_len=16, token_lags=2,
    )  # fmt: skip
    return TrainCase("tiny", config, batch=4, text_length=8)


CASES = {"reference": reference_case, "demo": demo_case, "tiny": tiny_case}


@dataclass
class TrainBenchConfig:
    models: tuple[str, ...] = ("reference", "demo")
    devices: tuple[str, ...] = ("cpu", "cuda")
    frameworks: tuple[str, ...] = FRAMEWORKS
    repeats: int = 10
    warmup: int = 2
    input_sets: int = 2  # random batches, rotated between steps
    settle_seconds: float = 0.2  # idle before each timed phase (see timing.measure)
    retries: int = 2  # measure again while other processes took more than ...
    max_others_share: float = 0.1  # ... this share of the machine's CPU time
    seed: int = 0

    def __post_init__(self):
        for name in ("repeats", "input_sets"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in self.models:
            if name not in CASES:
                raise ValueError(f"models: {name!r} is not one of {tuple(CASES)}")
        for name in self.frameworks:
            if name not in FRAMEWORKS:
                raise ValueError(f"frameworks: {name!r} is not one of {FRAMEWORKS}")
        for device in self.devices:
            if device not in ("cpu", "cuda"):
                raise ValueError(f"devices must hold 'cpu' and/or 'cuda', got {self.devices}")


QUICK = {"models": ("tiny",), "repeats": 3, "warmup": 1}


def random_batches(case: TrainCase, count: int, seed: int) -> list[tuple[np.ndarray, ...]]:
    """`count` (images (B, 3, S, S) float32, tokens (B, T), targets (B, T)) batches."""
    rng = np.random.default_rng(seed)
    c = case.model
    shape = (case.batch, 3, c.image_size, c.image_size)
    text = (case.batch, case.text_length)
    return [
        (
            rng.random(shape, dtype=np.float32),
            rng.integers(0, c.vocab_size, text),
            rng.integers(0, c.vocab_size, text),
        )
        for _ in range(count)
    ]


# -- minivlm -------------------------------------------------------------------------


class MinivlmTrainer:
    """Our VLM and AdamW on one device."""

    framework = "minivlm"

    def __init__(self, case: TrainCase, state: dict, device: str):
        from minivlm.models import VLM
        from minivlm.optim import AdamW

        self.case, self.device = case, device
        self.model = VLM(case.model)
        self.model.load_state_dict(state)
        self.model.to(device)
        self.optimizer = AdamW(self.model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        self.clock = timing.cupy_clock if device == "cuda" else timing.cpu_clock

    @staticmethod
    def why_unavailable(device: str) -> str | None:
        if device == "cpu":
            return None
        from minivlm.backend import DeviceError, require_cuda

        try:
            require_cuda()
        except DeviceError as err:
            return str(err)
        return None

    def load(self, batch):
        from minivlm.backend import to_device

        return tuple(to_device(array, self.device) for array in batch)

    def loss(self, images, tokens, targets):
        from minivlm import F, Tensor

        logits = self.model(Tensor(images), tokens)  # (B, T, V)
        vocab = logits.shape[-1]
        return F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))

    def loss_and_gradients(self, batch) -> tuple[float, dict[str, np.ndarray]]:
        """Eval mode (no dropout): the loss and every parameter's gradient, in NumPy."""
        from minivlm.backend import to_numpy

        self.model.eval()
        self.model.zero_grad()
        loss = self.loss(*batch)
        loss.backward()
        grads = {name: to_numpy(p.grad) for name, p in self.model.named_parameters()}
        self.model.zero_grad()
        return loss.item(), grads

    def step(self, batch) -> None:
        loss = self.loss(*batch)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def train_mode(self) -> None:
        self.model.train()


# -- the PyTorch twin ----------------------------------------------------------------


class TorchTwin:
    """The same VLM (fusion "cross", post-norm) in torch.nn.functional, our parameter names."""

    framework = "torch"

    def __init__(self, case: TrainCase, state: dict, device: str):
        import torch

        if case.model.fusion != "cross" or case.model.norm != "post":
            raise ValueError(
                f"TorchTwin: mirrors fusion 'cross' with norm 'post', got fusion "
                f"{case.model.fusion!r} and norm {case.model.norm!r}"
            )
        self.case, self.device, self.training = case, device, True
        self.params = {
            name: torch.tensor(array, device=device, requires_grad=True)
            for name, array in state.items()
        }
        self.optimizer = torch.optim.AdamW(
            self.params.values(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY
        )
        self.clock = timing.torch_cuda_clock if device == "cuda" else timing.cpu_clock

    @staticmethod
    def why_unavailable(device: str) -> str | None:
        try:
            import torch
        except ImportError:
            return "PyTorch is not installed"
        if device == "cuda" and not torch.cuda.is_available():
            return f"PyTorch {torch.__version__} sees no CUDA GPU"
        return None

    def load(self, batch):
        import torch

        return tuple(torch.as_tensor(array).to(self.device) for array in batch)

    # each piece mirrors the minivlm module of the same parameter prefix
    def _linear(self, prefix: str, x):
        import torch.nn.functional as tf

        return tf.linear(x, self.params[prefix + ".weight"], self.params[prefix + ".bias"])

    def _layer_norm(self, prefix: str, x):
        import torch.nn.functional as tf

        weight, bias = self.params[prefix + ".weight"], self.params[prefix + ".bias"]
        return tf.layer_norm(x, weight.shape, weight, bias, eps=1e-5)

    def _dropout(self, x):
        import torch.nn.functional as tf

        return tf.dropout(x, self.case.model.encoder_dropout, self.training)

    def _attend(self, q, k, v, causal: bool):
        """q (B, Lq, d), k and v (B, Lk, d) -> heads (B, H, L, dh) -> attention -> (B, Lq, d)."""
        import torch.nn.functional as tf

        heads = self.case.model.n_heads
        batch, len_q, width = q.shape

        def split(x):
            return x.reshape(batch, x.shape[1], heads, width // heads).transpose(1, 2)

        out = tf.scaled_dot_product_attention(split(q), split(k), split(v), is_causal=causal)
        return out.transpose(1, 2).reshape(batch, len_q, width)

    def _encoder_layer(self, prefix: str, x):
        """minivlm.nn.TransformerEncoderLayer, post-norm, ReLU."""
        weight, bias = (
            self.params[prefix + ".self_attn.in_proj_weight"],
            self.params[prefix + ".self_attn.in_proj_bias"],
        )
        q, k, v = (self._rows(weight, bias, i, x) for i in range(3))
        attended = self._linear(prefix + ".self_attn.out_proj", self._attend(q, k, v, causal=False))
        x = self._layer_norm(prefix + ".norm1", x + self._dropout(attended))
        hidden = self._dropout(self._linear(prefix + ".linear1", x).relu())
        return self._layer_norm(
            prefix + ".norm2", x + self._dropout(self._linear(prefix + ".linear2", hidden))
        )

    @staticmethod
    def _rows(weight, bias, which: int, x):
        """x W_which^T + b_which, W_which the which-th third of the in-projection."""
        import torch.nn.functional as tf

        width = weight.shape[1]
        rows = slice(which * width, (which + 1) * width)
        return tf.linear(x, weight[rows], bias[rows])

    def _cross_modal(self, prefix: str, x, context, causal: bool):
        """minivlm.models.CrossModalAttention: queries from x, keys and values from context."""
        q = self._linear(prefix + ".q_linear", x)
        k = self._linear(prefix + ".k_linear", context)
        v = self._linear(prefix + ".v_linear", context)
        return self._linear(prefix + ".out_linear", self._attend(q, k, v, causal))

    def _lagged_embeddings(self, tokens):
        """minivlm.models.VLM.lagged_embeddings: sum_j lag_embeddings.{j-1}[id_{t-j}] for
        j = 1..token_lags, (B, T, d); ids before the first token read row vocab_size."""
        import torch
        import torch.nn.functional as tf

        lags, vocab = self.case.model.token_lags, self.case.model.vocab_size
        batch, length = tokens.shape
        before = torch.full((batch, lags), vocab, dtype=tokens.dtype, device=tokens.device)
        context = torch.cat([before, tokens], dim=1)  # (B, lags + T)
        return sum(
            tf.embedding(
                context[:, lags - j : lags - j + length],
                self.params[f"lag_embeddings.{j - 1}.weight"],
            )
            for j in range(1, lags + 1)
        )

    def logits(self, images, tokens):
        import torch.nn.functional as tf

        c, p = self.case.model, self.params
        batch, size, side = images.shape[0], c.patch_size, c.image_size // c.patch_size
        patches = images.reshape(batch, 3, side, size, side, size).permute(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(batch, side * side, 3 * size * size)  # (B, N, 3 P P)
        x = (
            self._linear("vision_encoder.patch_embedding", patches)
            + p["vision_encoder.position_embedding"]
        )
        for layer in range(c.n_encoder_layers):
            x = self._encoder_layer(f"vision_encoder.transformer_layers.{layer}", x)
        image = self._layer_norm("vision_encoder.norm", x)  # (B, N, d)

        length = tokens.shape[1]
        x = (
            tf.embedding(tokens, p["token_embedding.weight"])
            + p["position_embedding.weight"][:length]
        )
        if c.token_lags:
            x = x + self._lagged_embeddings(tokens)
        for block in range(c.n_blocks):
            prefix = f"vlm_blocks.{block}"
            x = self._layer_norm(
                prefix + ".norm1", x + self._cross_modal(prefix + ".self_attention", x, x, True)
            )
            x = self._layer_norm(
                prefix + ".norm2",
                x + self._cross_modal(prefix + ".cross_attention", x, image, False),
            )
            hidden = self._linear(prefix + ".feed_forward.0", x).relu()
            x = self._layer_norm(
                prefix + ".norm3", x + self._linear(prefix + ".feed_forward.2", hidden)
            )
        return self._linear("output_projection", x)  # (B, T, V)

    def loss(self, images, tokens, targets):
        import torch.nn.functional as tf

        logits = self.logits(images, tokens)
        return tf.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    def loss_and_gradients(self, batch) -> tuple[float, dict[str, np.ndarray]]:
        self.training = False
        for param in self.params.values():
            param.grad = None
        loss = self.loss(*batch)
        loss.backward()
        grads = {name: p.grad.detach().cpu().numpy() for name, p in self.params.items()}
        for param in self.params.values():
            param.grad = None
        return loss.item(), grads

    def step(self, batch) -> None:
        loss = self.loss(*batch)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def train_mode(self) -> None:
        self.training = True


TRAINERS = {"minivlm": MinivlmTrainer, "torch": TorchTwin}


# -- the benchmark -------------------------------------------------------------------


def _row(case: TrainCase, framework: str, device: str, **fields) -> dict:
    row = {
        "model": case.name, "framework": framework, "device": device,
        "batch": case.batch, "text_length": case.text_length,
        "status": "ok", "reason": None, "check": None, "step": None, "samples_per_second": None,
    }  # fmt: skip
    row.update(fields)
    return row


def compare(loss: float, grads: dict, reference: tuple[float, dict]) -> dict[str, float]:
    """Relative error of the loss, and the largest error of any parameter's gradient.

    A gradient's error is max |got - want| / max(max |want|, 1e-3 g), g the largest
    |gradient| of any parameter: a parameter whose true gradient is 0 (a key bias:
    softmax ignores a shift shared by a whole row) is judged against the model's
    gradient scale, not against its own rounding noise.
    """
    reference_loss, reference_grads = reference
    if set(grads) != set(reference_grads):
        differ = sorted(set(reference_grads) ^ set(grads))
        raise ValueError(f"gradients of other parameters than minivlm's: {differ[:5]}")
    scale = max(float(np.abs(want).max()) for want in reference_grads.values())
    worst = 0.0
    for name, want in reference_grads.items():
        got = np.asarray(grads[name], dtype=np.float64)
        if not np.isfinite(got).all():
            return {"loss": math.inf, "gradients": math.inf}
        error = np.abs(got - want).max() / max(np.abs(want).max(), 1e-3 * scale, 1e-30)
        worst = max(worst, float(error))
    loss_error = abs(loss - reference_loss) / max(abs(reference_loss), 1e-30)
    return {"loss": loss_error if math.isfinite(loss) else math.inf, "gradients": worst}


def reference_gradients(case: TrainCase, state: dict, batch) -> tuple[float, dict]:
    """minivlm's loss and gradients on the CPU in float64-converted NumPy: the check's oracle."""
    trainer = MinivlmTrainer(case, state, "cpu")
    loss, grads = trainer.loss_and_gradients(trainer.load(batch))
    return loss, {name: grad.astype(np.float64) for name, grad in grads.items()}


def benchmark_trainer(trainer_class, case, state, device, batches, reference, config) -> dict:
    """Check one (framework, device) against the reference, then time its training step."""
    framework = trainer_class.framework
    try:
        trainer = trainer_class(case, state, device)
        inputs = [trainer.load(batch) for batch in batches]
        errors = compare(*trainer.loss_and_gradients(inputs[0]), reference)
        check = {
            "checked_on": "loss and every gradient of batch 0 in eval mode, against minivlm on cpu",
            "tolerance": TOLERANCE["gradients"],
            "relative_errors": errors,
        }
        wrong = [f"{name}: relative error {errors[name]:.2e} > tolerance {TOLERANCE[name]:.0e}"
                 for name in errors if not errors[name] <= TOLERANCE[name]]  # fmt: skip
        if wrong:
            return _row(
                case, framework, device, status="wrong", reason="; ".join(wrong), check=check
            )
        trainer.train_mode()
        stats = timing.measure(
            lambda i: trainer.step(inputs[i % len(inputs)]),
            clock=trainer.clock,
            **timing.settings(config),
        )
    except Exception as err:  # report it, go on with the others
        return _row(case, framework, device, status="error", reason=f"{type(err).__name__}: {err}")
    finally:
        trainer = inputs = None
        gc.collect()
    return _row(
        case, framework, device, check=check, step=stats.to_json(),
        samples_per_second=case.batch / stats.median,
    )  # fmt: skip


def run_train_benchmark(
    config: TrainBenchConfig,
    cases: Sequence[TrainCase] | None = None,
    trainers: dict | None = None,
    *,
    command: str = "(python API)",
    quick: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Check and time a training step of every model, framework and device.

    `trainers` maps a framework name to a class like MinivlmTrainer (default: those of
    config.frameworks); every one is checked against minivlm's own CPU gradients.
    """
    machine = machine_facts(command)
    from minivlm import manual_seed
    from minivlm.models import VLM

    cases = [CASES[name]() for name in config.models] if cases is None else list(cases)
    trainers = (
        {name: TRAINERS[name] for name in config.frameworks} if trainers is None else trainers
    )
    threads = {"blas": blas_threads()}
    threads["torch"] = set_torch_threads(threads["blas"]) if "torch" in trainers else None
    rows, models = [], []
    for case in cases:
        manual_seed(config.seed)
        model = VLM(case.model)
        state = model.state_dict()
        models.append({
            "name": case.name, "parameters": model.num_parameters(), "config": case.model.to_dict(),
            "batch": case.batch, "text_length": case.text_length,
        })  # fmt: skip
        batches = random_batches(case, config.input_sets, config.seed)
        reference = reference_gradients(case, state, batches[0])
        for device in config.devices:
            for trainer_class in trainers.values():
                why = trainer_class.why_unavailable(device)
                if why is None:
                    row = benchmark_trainer(
                        trainer_class, case, state, device, batches, reference, config
                    )
                else:
                    row = _row(
                        case,
                        trainer_class.framework,
                        device,
                        status="unavailable",
                        reason=f"not available: {why}",
                    )
                rows.append(row)
                log(_progress_line(row))
    return {
        "benchmark": "train",
        "schema_version": 1,
        "machine": machine,
        "config": {**asdict(config), "quick": quick},
        "threads": threads,
        "models": models,
        "results": rows,
        "ratios": train_ratios(rows),
    }


def train_ratios(rows: list[dict]) -> list[dict]:
    """Per model and device: step time of minivlm / step time of PyTorch, one run."""
    ok = {(r["model"], r["device"], r["framework"]): r for r in rows if r["status"] == "ok"}
    ratios = []
    for model, device in dict.fromkeys((r["model"], r["device"]) for r in rows):
        ours, theirs = ok.get((model, device, "minivlm")), ok.get((model, device, "torch"))
        if ours and theirs:
            ratio = ours["step"]["median"] / theirs["step"]["median"]
            ratios.append({"model": model, "device": device, "minivlm_over_torch": ratio})
    return ratios


def _progress_line(row: dict) -> str:
    head = f"{row['model']:<10} {row['framework']:<8} {row['device']:<5}"
    if row["status"] != "ok":
        return f"{head} {status_text(row)}"
    step = timing.format_ms(row["step"]["median"])
    return f"{head} step {step} ms, {row['samples_per_second']:.1f} samples/s"


def format_train_table(report: dict) -> str:
    config, threads = report["config"], report["threads"]
    lines = [
        describe(report["machine"]),
        f"training step (forward, loss, backward, AdamW); ms: median [p10, p90] of "
        f"{config['repeats']} after {config['warmup']} warm-up; BLAS threads {threads['blas']}, "
        f"torch threads {threads['torch']}",
    ]
    for model in report["models"]:
        c = model["config"]
        lines.append(
            f"  {model['name']}: {model['parameters']:,} parameters, images {c['image_size']} px "
            f"in {c['patch_size']} px patches, d_model {c['d_model']}, "
            f"{c['n_encoder_layers']}+{c['n_blocks']} layers, vocab {c['vocab_size']}, dropout "
            f"{c['encoder_dropout']}; batch {model['batch']}, text length {model['text_length']}"
        )
    header = (
        f"{'model':<10} {'framework':<9} {'device':<6} {'step ms':>9} {'[p10, p90]':>19} "
        f"{'samples/s':>10} {'check':>24} {'others%':>7}"
    )
    lines += ["", header, "-" * len(header)]
    for row in report["results"]:
        head = f"{row['model']:<10} {row['framework']:<9} {row['device']:<6}"
        if row["status"] != "ok":
            lines.append(f"{head} {status_text(row)}")
            continue
        step, errors = row["step"], row["check"]["relative_errors"]
        spread = f"[{1e3 * step['p10']:.1f}, {1e3 * step['p90']:.1f}]"
        check = f"loss {errors['loss']:.0e}, grads {errors['gradients']:.0e}"
        rate, others = row["samples_per_second"], timing.format_percent(step["others_cpu_share"])
        median = 1e3 * step["median"]
        lines.append(f"{head} {median:>9.1f} {spread:>19} {rate:>10.1f} {check:>24} {others:>7}")
    if report["ratios"]:
        lines += [
            "",
            "ratio (step time minivlm / step time PyTorch, same run; below 1 means ours is faster)",
        ]
        for entry in report["ratios"]:
            lines.append(
                f"  {entry['model']:<10} {entry['device']:<5} {entry['minivlm_over_torch']:.2f}"
            )
    return "\n".join(lines)


# -- command line --------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainBenchConfig()
    parser.add_argument("--models", nargs="+", choices=tuple(CASES), default=None,
                        help=f"models to train (default {' '.join(defaults.models)})")  # fmt: skip
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    parser.add_argument(
        "--framework", nargs="+", choices=FRAMEWORKS, default=None, help="run only these"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help=f"timed steps (default {defaults.repeats})"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help=f"untimed steps first (default {defaults.warmup})"
    )
    parser.add_argument("--quick", action="store_true", help="a tiny model, few steps")
    parser.add_argument("--json", type=Path, default=DEFAULT_OUT / "train.json", help="report file")
    parser.set_defaults(handler=run_from_args, command_prefix="python -m benchmarks.train")


def run_from_args(args: argparse.Namespace) -> int:
    keep_freed_memory()  # as `minivlm` does for every command
    config = replace(TrainBenchConfig(), **(QUICK if args.quick else {}))
    overrides = {
        "models": None if args.models is None else tuple(args.models),
        "frameworks": None if args.framework is None else tuple(args.framework),
        "repeats": args.repeats, "warmup": args.warmup,
        "devices": ("cpu", "cuda") if args.device == "all" else (args.device,),
    }  # fmt: skip
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    report = run_train_benchmark(
        config, command=command_line(args), quick=args.quick, log=log_to_stderr
    )
    print(format_train_table(report))
    print(f"\nJSON: {write_json(report, args.json)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_module("train", __doc__, add_arguments, argv)


if __name__ == "__main__":
    sys.exit(main())
