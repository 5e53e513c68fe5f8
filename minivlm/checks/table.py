"""Tables of gradient checks for the command line: every op, or tiny whole models."""

from __future__ import annotations

import time

from ..backend import DeviceError, require_cuda
from ..gradcheck import format_table


def _print_rows(header, rows) -> None:
    print("\n".join(format_table(header, rows)), flush=True)


def _check_device(device: str) -> bool:
    if device == "cuda":
        try:
            require_cuda()
        except DeviceError as err:
            print(f"minivlm gradcheck: {err}")
            return False
    return True


def run_op_table(names: list[str], device: str = "cpu") -> int:
    """Check the ops named (all by default); print a table; 0 when every one passes."""
    from .op_cases import select

    if not _check_device(device):
        return 2
    try:
        cases = select(names)
    except ValueError as err:
        print(f"minivlm gradcheck: {err}")
        return 2
    rows, failed = [], []
    for case in cases:
        report = case.run(device)
        inputs = ", ".join(f"{c.name} {'x'.join(map(str, c.shape)) or '()'}" for c in report.inputs)
        rows.append((
            case.name, inputs, f"{report.max_abs_error:.2e}", f"{report.max_rel_error:.2e}",
            "pass" if report.passed else "FAIL",
        ))  # fmt: skip
        if not report.passed:
            failed.append((case.name, report))
    _print_rows(("op", "inputs", "max abs err", "max rel err", "result"), rows)
    for name, report in failed:
        print(f"\n{name} failed:\n{report}")
    print(
        f"\n{len(cases) - len(failed)} passed, {len(failed)} failed "
        f"({device}, float64, central differences; `minivlm explain OP` shows one case in full)"
    )
    return 1 if failed else 0


def run_model_table(
    device: str = "cpu", fusions: list[str] | None = None, token_lags: int = 0
) -> int:
    """Check the loss gradient of a tiny VLM of each fusion kind wrt every parameter."""
    from .model_cases import model_gradcheck

    if not _check_device(device):
        return 2
    header = ("fusion", "parameters", "max abs err", "max rel err", "seconds", "result")
    print("  ".join(header))
    failed = 0
    for fusion in fusions or ["cross", "gated", "prefix"]:
        start = time.perf_counter()
        report = model_gradcheck(fusion, device=device, token_lags=token_lags)
        failed += not report.passed
        row = (
            fusion, str(len(report.inputs)), f"{report.max_abs_error:.2e}",
            f"{report.max_rel_error:.2e}", f"{time.perf_counter() - start:.1f}",
            "pass" if report.passed else "FAIL",
        )  # fmt: skip
        print("  ".join(cell.ljust(len(h)) for cell, h in zip(row, header, strict=True)))
        if not report.passed:
            print(report)
    return 1 if failed else 0


def run_model_functions_table(
    device: str = "cpu", fusions: list[str] | None = None, token_lags: int = 0
) -> int:
    """Check every Function a tiny VLM's loss forward records, each on its own saved inputs;
    print a table per fusion kind and name the first Function whose backward is wrong."""
    from .model_cases import model_functions_check

    if not _check_device(device):
        return 2
    failed = 0
    for fusion in fusions or ["cross", "gated", "prefix"]:
        start = time.perf_counter()
        report = model_functions_check(fusion, device=device, token_lags=token_lags)
        failed += not report.passed
        print(
            f"{fusion}: {len(report.functions)} Functions recorded by one loss forward, each "
            f"checked on its own saved inputs ({time.perf_counter() - start:.1f} s)"
        )
        print(f"{report}\n", flush=True)
    return 1 if failed else 0
