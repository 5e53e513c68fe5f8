"""The `minivlm bench` sub-commands: attention, ops, train.

minivlm/cli.py makes the `bench` parser and hands its sub-parsers to `add_subcommands`:

    bench = commands.add_parser("bench", help="...")
    benchmarks.cli.add_subcommands(bench.add_subparsers(dest="benchmark", required=True))

Each sub-command sets `handler` (args -> exit code), as the other commands do.
"""

from __future__ import annotations

import argparse

from . import attention, ops, train

BENCHMARKS = {
    "attention": (attention, "every attention implementation, checked and timed, over N"),
    "ops": (ops, "linear, layer_norm, softmax, cross_entropy: engine vs plain NumPy vs PyTorch"),
    "train": (train, "a training step of the reference and demo models vs PyTorch"),
}


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register `attention`, `ops` and `train` on the `minivlm bench` sub-parsers."""
    for name, (module, summary) in BENCHMARKS.items():
        parser = subparsers.add_parser(
            name, help=summary, description=module.__doc__.split("\n\n")[0]
        )
        module.add_arguments(parser)
        parser.set_defaults(
            command_prefix="minivlm"
        )  # the command line is then `minivlm bench ...`
