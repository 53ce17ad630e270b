"""Wall-clock timing that is robust to a busy machine: interleaved rounds, best of each."""

from __future__ import annotations

import time
from typing import Callable


def best_times(fns: dict[str, Callable[[], object]], rounds: int = 7, warmup: int = 1) -> dict[str, float]:
    """Minimum wall time in seconds of each function, running them in alternation.

    Alternating means a burst of load on a shared machine slows every candidate alike, so ratios stay fair; the
    least disturbed run is the best estimate of a function's cost.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def print_table(rows: list[tuple[str, str, str]], header: tuple[str, str, str] = ("measure", "result", "target")):
    """Print rows as a fixed-width text table."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(3)]
    line = "  ".join("{:<%d}" % w for w in widths)
    print(line.format(*header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line.format(*row))
