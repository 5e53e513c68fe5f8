"""The `minivlm` command: one sub-command a job, each a thin layer over the Python API.

Bad input (a flag, a config field, a file) ends in one line, `minivlm <command>: error:
...`, and exit status 2; a run that cannot give a result (training diverged, an empty
caption) in such a line and exit status 1. `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: `minivlm <command>: error: ...`."""

    def error(self, message: str, prog: str | None = None):
        prog = prog or self.prog
        self.exit(2, f"{prog}: error: {message} (see {prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but unknown arguments are blamed on the sub-command."""
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            command = getattr(namespace, "command", None)
            prog = f"{self.prog} {command}" if command else self.prog
            self.error(f"unrecognized arguments: {' '.join(extras)}", prog)
        return namespace


def _gradcheck(args: argparse.Namespace) -> int:
    from ..checks.table import run_model_functions_table, run_model_table, run_op_table

    if args.per_function and not args.model:
        print("minivlm gradcheck: --per-function goes with --model (each op case is one Function)")
        return 2
    if args.model:
        table = run_model_functions_table if args.per_function else run_model_table
        return table(args.device, args.fusion, args.token_lags)
    return run_op_table(args.ops, args.device)


def _demo(args: argparse.Namespace) -> int:
    from ..train.config import config_from_arguments
    from .demo import run_demo
    from .launch import ranks_to_start, run_ranks

    if args.data_dir:
        raise ValueError(
            f"--data {args.data_dir}: the demo trains and evaluates on the procedural "
            "scenes; train on a folder with `minivlm train --data DIR`"
        )
    config = config_from_arguments(args)
    ranks = ranks_to_start(args.ranks, config.batch_size, config.device)
    if ranks > 1:
        return run_ranks(ranks, args.argv)
    run_demo(config, overwrite=args.overwrite)
    return 0


def _train(args: argparse.Namespace) -> int:
    from ..train.config import config_from_arguments
    from ..train.loop import train
    from .launch import ranks_to_start, run_ranks

    config = config_from_arguments(args)
    ranks = ranks_to_start(args.ranks, config.batch_size, config.device)
    if ranks > 1:
        return run_ranks(ranks, args.argv)
    trainer = train(config, resume=args.resume, overwrite=args.overwrite)
    if trainer.group.rank == 0:
        ranks = f" on {trainer.group.size} ranks" if trainer.group.size > 1 else ""
        print(f"trained to step {trainer.step}{ranks}; checkpoints in {config.out_dir}/checkpoints")
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
    from .files import evaluate_checkpoint, evaluate_checkpoint_on_folder

    if args.data is not None:
        evaluate_checkpoint_on_folder(args.checkpoint, args.data, args.json, args.device)
    else:
        evaluate_checkpoint(
            args.checkpoint, args.captions, args.questions, args.json, args.device, args.style
        )
    return 0


def _number(kind: type, low: float, high: float = math.inf, open_low: bool = False):
    """An argparse type: a finite `kind` in [low, high] ((low, high] with open_low)."""
    brackets = "(" if open_low else "["
    expected = f"{'an int' if kind is int else 'a number'} in {brackets}{low}, {high}]"
    if high == math.inf:
        expected = f"{'an int' if kind is int else 'a number'} {'>' if open_low else '>='} {low}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        too_low = value <= low if open_low else value < low
        if not math.isfinite(value) or too_low or value > high:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


def _add_ranks_argument(parser: argparse.ArgumentParser, default: str | None, auto: str) -> None:
    from .launch import parse_ranks

    def ranks(text: str):
        try:
            return parse_ranks(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error).removeprefix("--ranks: ")) from None

    parser.add_argument(
        "--ranks",
        type=ranks,
        default=default and parse_ranks(default),
        help=f"train on this many MPI ranks, started with mpiexec (default {default or 1}; {auto})",
    )


def _add_debug_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="on an error, show the Python traceback",
    )


def _add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="a run's folder (its latest checkpoint) or one checkpoint folder",
    )
    parser.add_argument(
        "--temperature", type=_number(float, 0), default=0.0, help="0 = greedy (default)"
    )
    parser.add_argument("--top-k", type=_number(int, 0), default=0, help="0 = off (default)")
    parser.add_argument("--top-p", type=_number(float, 0, 1, open_low=True), default=1.0)
    parser.add_argument("--seed", type=_number(int, 0, 2**32 - 1), default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    _add_debug_argument(parser)


def _add_benchmarks(bench: argparse.ArgumentParser) -> None:
    from ..bench import add_subcommands

    add_subcommands(bench.add_subparsers(dest="benchmark", required=True))


def build_parser() -> argparse.ArgumentParser:
    from ..train.config import add_config_arguments

    parser = Parser(prog="minivlm", description=__doc__)
    parser.add_argument(
        "--debug", action="store_true", help="on an error, show the Python traceback"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="train, evaluate and draw the default model (about 10 min on 2 cores)"
    )
    add_config_arguments(demo)
    _add_ranks_argument(demo, "auto", "auto: 2 on 2 or more cores with MPI installed, else 1")
    demo.add_argument(
        "--overwrite", action="store_true", help="replace the run already in --out-dir"
    )
    _add_debug_argument(demo)
    demo.set_defaults(handler=_demo)

    train = commands.add_parser("train", help="train a model (preset, --config FILE, and flags)")
    add_config_arguments(train)
    _add_ranks_argument(train, None, "auto: 2 on 2 or more cores with MPI installed")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from the run's newest checkpoint that verifies",
    )
    train.add_argument(
        "--overwrite", action="store_true", help="replace the run already in --out-dir"
    )
    _add_debug_argument(train)
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
        "eval", help="evaluate a checkpoint on fresh iid and held-out scenes, or on a folder"
    )
    evaluation.add_argument("--checkpoint", required=True, type=Path)
    evaluation.add_argument(
        "--data",
        type=Path,
        help="a folder with captions.jsonl (as train --data reads): loss, perplexity, "
        "exact match and image information gain on its rows instead of the scenes",
    )
    evaluation.add_argument(
        "--captions", type=_number(int, 1), default=256, help="scenes per split"
    )
    evaluation.add_argument(
        "--questions", type=_number(int, 1), default=512, help="questions per split"
    )
    evaluation.add_argument(
        "--style",
        help="also evaluate scenes drawn in this style, of training pairs ('style') and with "
        "a held-out pair ('heldout-style') (a style the run did not train on, e.g. plain; "
        "default: the run's held-out style, if any)",
    )
    evaluation.add_argument("--json", type=Path, help="also write the metrics here")
    evaluation.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    _add_debug_argument(evaluation)
    evaluation.set_defaults(handler=_eval)

    check = commands.add_parser(
        "gradcheck", help="check every op's backward against finite differences"
    )
    check.add_argument(
        "ops",
        nargs="*",
        help="cases to check (default: all); a prefix selects a family, a minivlm.F name "
        "(scaled_dot_product_attention) every case that calls it",
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
    check.add_argument(
        "--per-function",
        action="store_true",
        help="with --model: check every Function the forward records on its own saved "
        "inputs, and name the first whose backward is wrong",
    )
    check.set_defaults(handler=_gradcheck)

    from ..checks.explain import add_explain_command

    add_explain_command(commands)

    bench = commands.add_parser("bench", help="benchmarks: attention, ops, train")
    _add_benchmarks(bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..backend import keep_freed_memory

    keep_freed_memory()  # training steps reuse their large temporaries (see memory.py)
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what --ranks N starts again
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"minivlm {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        status = _exit_status(error)
        if args.debug or status is None:
            raise
        message = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
        print(f"minivlm {args.command}: error: {message}", file=sys.stderr)
        return status


def _exit_status(error: Exception) -> int | None:
    """2 for bad input, 1 for a run that gave no result, None for a bug (traceback)."""
    from .files import NoResult

    if isinstance(error, (ValueError, FileNotFoundError, NotADirectoryError)):
        return 2
    if isinstance(error, (FloatingPointError, NoResult, OSError)):
        return 1
    return None


if __name__ == "__main__":
    sys.exit(main())
