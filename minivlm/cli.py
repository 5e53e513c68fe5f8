"""The `minivlm` command: one sub-command a job, each a thin layer over the Python API."""

from __future__ import annotations

import argparse
import sys


def _gradcheck(args: argparse.Namespace) -> int:
    from .gradcheck_table import run_model_table, run_op_table

    if args.model:
        return run_model_table(args.device, args.fusion)
    return run_op_table(args.ops, args.device)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minivlm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("gradcheck", help="check every op's backward against finite differences")
    check.add_argument("ops", nargs="*", help="ops to check (default: all); a prefix selects a family")
    check.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    check.add_argument("--model", action="store_true", help="check a tiny VLM of each fusion kind instead")
    check.add_argument("--fusion", nargs="*", default=None, help="with --model: which fusion kinds")
    check.set_defaults(handler=_gradcheck)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
