"""The benchmarks behind `minivlm bench attention|ops|train`.

Each checks every implementation against a reference before it times it (harness.py),
prints a table with our times over PyTorch's, and writes a JSON report; `attention`
also draws its times against N. torch_twin.py is the VLM in PyTorch, shared with the
tests; it is imported only where PyTorch is used.
"""

from __future__ import annotations

import argparse

from . import attention, ops, train

BENCHMARKS = {
    "attention": (attention, "every attention implementation, checked, then timed, over N"),
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
