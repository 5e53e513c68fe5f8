"""The `minivlm` command: one sub-command a job, each a thin layer over the Python API."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _gradcheck(args: argparse.Namespace) -> int:
    from ..checks.table import run_model_table, run_op_table

    if args.model:
        return run_model_table(args.device, args.fusion, args.token_lags)
    return run_op_table(args.ops, args.device)


def _demo(args: argparse.Namespace) -> int:
    from ..train.config import config_from_arguments
    from .demo import run_demo

    run_demo(config_from_arguments(args))
    return 0


def _train(args: argparse.Namespace) -> int:
    from ..train.config import config_from_arguments
    from ..train.loop import train

    config = config_from_arguments(args)
    trainer = train(config, resume=args.resume)
    print(f"trained to step {trainer.step}; checkpoints in {config.out_dir}/checkpoints")
    return 0


def _sampling(args: argparse.Namespace):
    from ..generate import SamplingConfig

    return SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)


def _caption(args: argparse.Namespace) -> int:
    from .files import caption_file

    print(
        caption_file(
            args.checkpoint, args.image, _sampling(args), args.seed, args.attention, args.device
        )
    )
    return 0


def _ask(args: argparse.Namespace) -> int:
    from .files import answer_file

    print(
        answer_file(
            args.checkpoint, args.image, args.question, _sampling(args), args.seed, args.device
        )
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .files import evaluate_checkpoint

    evaluate_checkpoint(args.checkpoint, args.captions, args.questions, args.json, args.device)
    return 0


def _add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="a run's folder (its latest checkpoint) or one checkpoint folder",
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])


def _add_benchmarks(bench: argparse.ArgumentParser) -> None:
    """The benchmarks live in the checkout's benchmarks/ folder, beside the package."""
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / "benchmarks" / "cli.py").is_file():
        bench.set_defaults(handler=lambda args: _no_benchmarks(checkout))
        return
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    from benchmarks.cli import add_subcommands

    add_subcommands(bench.add_subparsers(dest="benchmark", required=True))


def _no_benchmarks(checkout: Path) -> int:
    print(
        "minivlm bench: the benchmarks ship with a checkout of the repository, not with the "
        f"wheel (no benchmarks/ beside {checkout / 'minivlm'}); clone the repository and "
        "pip install -e it"
    )
    return 2


def build_parser() -> argparse.ArgumentParser:
    from ..train.config import add_config_arguments

    parser = argparse.ArgumentParser(prog="minivlm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="train, evaluate and draw the default model (about 10 min on 2 cores)"
    )
    add_config_arguments(demo)
    demo.set_defaults(handler=_demo)

    train = commands.add_parser("train", help="train a model (preset, --config FILE, and flags)")
    add_config_arguments(train)
    train.add_argument(
        "--resume", action="store_true", help="continue from the run's latest checkpoint"
    )
    train.set_defaults(handler=_train)

    caption = commands.add_parser("caption", help="caption an image")
    caption.add_argument("image", type=Path)
    _add_sampling_arguments(caption)
    caption.add_argument(
        "--attention", type=Path, help="also draw the attention maps into this PNG"
    )
    caption.set_defaults(handler=_caption)

    ask = commands.add_parser(
        "ask",
        help="answer a question about an image (a model trained with --qa-format describe "
        "captions the image first, then answers)",
    )
    ask.add_argument("image", type=Path)
    ask.add_argument("question")
    _add_sampling_arguments(ask)
    ask.set_defaults(handler=_ask)

    evaluation = commands.add_parser(
        "eval", help="evaluate a checkpoint on fresh iid and held-out scenes"
    )
    evaluation.add_argument("--checkpoint", required=True, type=Path)
    evaluation.add_argument("--captions", type=int, default=256, help="scenes per split")
    evaluation.add_argument("--questions", type=int, default=512, help="questions per split")
    evaluation.add_argument("--json", type=Path, help="also write the metrics here")
    evaluation.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    evaluation.set_defaults(handler=_eval)

    check = commands.add_parser(
        "gradcheck", help="check every op's backward against finite differences"
    )
    check.add_argument(
        "ops", nargs="*", help="ops to check (default: all); a prefix selects a family"
    )
    check.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    check.add_argument(
        "--model", action="store_true", help="check a tiny VLM of each fusion kind instead"
    )
    check.add_argument("--fusion", nargs="*", default=None, help="with --model: which fusion kinds")
    check.add_argument(
        "--token-lags",
        type=int,
        default=0,
        choices=range(8),  # the tiny model has 8 text positions
        metavar="K",
        help="with --model: models that also embed each position's K previous tokens",
    )
    check.set_defaults(handler=_gradcheck)

    from ..checks.explain import add_explain_command

    add_explain_command(commands)

    bench = commands.add_parser("bench", help="benchmarks: attention, ops, train (from a checkout)")
    _add_benchmarks(bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..backend import keep_freed_memory

    keep_freed_memory()  # training steps reuse their large temporaries (see memory.py)
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
