"""Tables of gradient checks for the command line: every op, or tiny whole models."""

from __future__ import annotations

import time

from ..backend import DeviceError, require_cuda


def _print_row(cells, widths) -> None:
    print("  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False)), flush=True)


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
    widths = (30, 26, 14, 14, 6)
    _print_row(("op", "input shapes", "max abs err", "max rel err", "result"), widths)
    failed = []
    for case in cases:
        report, shapes = case.run(device)
        result = "pass" if report.passed else "FAIL"
        _print_row(
            (
                case.name,
                shapes,
                f"{report.max_abs_error:.2e}",
                f"{report.max_rel_error:.2e}",
                result,
            ),
            widths,
        )
        if not report.passed:
            failed.append((case.name, report))
    for name, report in failed:
        print(f"\n{name} failed:\n{report}")
    print(
        f"\n{len(cases) - len(failed)} passed, {len(failed)} failed "
        f"({device}, float64, central differences)"
    )
    return 1 if failed else 0


def run_model_table(
    device: str = "cpu", fusions: list[str] | None = None, token_lags: int = 0
) -> int:
    """Check the loss gradient of a tiny VLM of each fusion kind wrt every parameter."""
    from .model_cases import model_gradcheck

    if not _check_device(device):
        return 2
    widths = (10, 12, 14, 14, 8, 6)
    _print_row(("fusion", "parameters", "max abs err", "max rel err", "seconds", "result"), widths)
    failed = 0
    for fusion in fusions or ["cross", "gated", "prefix"]:
        start = time.perf_counter()
        report = model_gradcheck(fusion, device=device, token_lags=token_lags)
        result = "pass" if report.passed else "FAIL"
        failed += not report.passed
        _print_row(
            (
                fusion,
                len(report.inputs),
                f"{report.max_abs_error:.2e}",
                f"{report.max_rel_error:.2e}",
                f"{time.perf_counter() - start:.1f}",
                result,
            ),
            widths,
        )
        if not report.passed:
            print(report)
    return 1 if failed else 0
