"""The `minivlm` command: the argument parser (main), the demo, and caption/ask/eval on
files."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
