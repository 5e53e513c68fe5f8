"""The tables of docs/scaling.md: what a ring allreduce of the gradients costs per step,
on paper, for the demo and reference models at 2-1024 ranks over common links.

    python benchmarks/scaling_table.py          (tests/test_docs.py checks the doc holds them)

A ring allreduce of S bytes over P ranks sends and receives 2 (P - 1) / P * S bytes per
rank in 2 (P - 1) messages, so with a link of bandwidth beta and per-message latency
alpha it takes

    t(P) = 2 (P - 1) alpha + 2 (P - 1) / P * S / beta.
"""

from __future__ import annotations

MODELS = {  # parameters (float32 gradients), and a measured step on 2 AMD EPYC cores, s
    "demo": (1_042_631, 64, 0.342),  # batch 64; `minivlm demo` at 187 samples/s
    "reference": (1_075_911, 16, 0.189),  # batch 16; `minivlm bench train`
}
LINKS = {  # bandwidth bytes/s, latency s: round figures for what each achieves
    "shared memory (one machine)": (10e9, 1e-6),
    "1 Gb/s Ethernet": (0.117e9, 50e-6),
    "10 Gb/s Ethernet": (1.17e9, 20e-6),
    "100 Gb/s InfiniBand": (12e9, 2e-6),
    "NVLink 4 (H100, NCCL)": (350e9, 10e-6),
}
RANKS = (2, 4, 8, 16, 64, 256, 1024)


def allreduce_seconds(size_bytes: float, ranks: int, bandwidth: float, latency: float) -> float:
    return 2 * (ranks - 1) * latency + 2 * (ranks - 1) / ranks * size_bytes / bandwidth


def _header(title: str) -> list[str]:
    """A table's first two lines: `title`, then a column a rank count."""
    return [
        f"| {title} | " + " | ".join(f"P = {p}" for p in RANKS) + " |",
        "|---|" + "---|" * len(RANKS),
    ]


def allreduce_table(model: str) -> str:
    parameters = MODELS[model][0]
    size = 4 * parameters
    lines = _header(f"{model}: {parameters:,} gradients, {size / 1e6:.2f} MB")
    for link, (bandwidth, latency) in LINKS.items():
        cells = [allreduce_seconds(size, p, bandwidth, latency) * 1e3 for p in RANKS]
        lines.append(f"| {link} | " + " | ".join(f"{ms:.3g} ms" for ms in cells) + " |")
    return "\n".join(lines)


def efficiency_table(model: str) -> str:
    """Weak scaling: each rank keeps the preset's batch and its 2-core step time t_c;
    efficiency = t_c / (t_c + t_allreduce), nothing overlapped."""
    parameters, _, step = MODELS[model]
    lines = _header(f"{model}, {step * 1e3:.0f} ms a step a rank")
    for link, (bandwidth, latency) in LINKS.items():
        cells = [step / (step + allreduce_seconds(4 * parameters, p, bandwidth, latency))
                 for p in RANKS]  # fmt: skip
        lines.append(f"| {link} | " + " | ".join(f"{e:.2f}" for e in cells) + " |")
    return "\n".join(lines)


def strong_scaling_limit(model: str) -> str:
    """Strong scaling: the preset's global batch B split over P ranks, t_c / P each; the P
    (a divisor of B) with the shortest step, and that step."""
    parameters, batch, step = MODELS[model]
    lines = [f"| {model}, batch {batch} | best P | its step | speed-up |", "|---|---|---|---|"]
    for link, (bandwidth, latency) in LINKS.items():
        options = [p for p in range(1, batch + 1) if batch % p == 0]
        times = {
            p: step / p + (allreduce_seconds(4 * parameters, p, bandwidth, latency) if p > 1 else 0)
            for p in options
        }
        best = min(times, key=times.get)
        lines.append(
            f"| {link} | {best} | {times[best] * 1e3:.1f} ms | {step / times[best]:.1f}x |"
        )
    return "\n".join(lines)


def tables() -> list[str]:
    return [
        *(allreduce_table(m) for m in MODELS),
        *(efficiency_table(m) for m in MODELS),
        *(strong_scaling_limit(m) for m in MODELS),
    ]


if __name__ == "__main__":
    print("\n\n".join(tables()))
