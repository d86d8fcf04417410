"""Interleaved timing rounds: the benchmarks' defence against a shared, busy machine.

Every contender runs once per round, in an order rotated from round to round, so that a burst
of load elsewhere hits all of them alike; ratios are taken within a round (contender / baseline
of the same round), then summarised over rounds as minimum and median. A first, untimed round
warms caches, allocators and lazily built kernels.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


@dataclass
class Rounds:
    """Per contender, its seconds in each timed round (same round index = same round)."""

    seconds: dict[str, list[float]] = field(default_factory=dict)

    def ratios(self, name: str, baseline: str) -> list[float]:
        """``name`` / ``baseline`` within each round."""
        return [a / b for a, b in zip(self.seconds[name], self.seconds[baseline], strict=True)]

    def summary(self, name: str) -> str:
        times = self.seconds[name]
        return f"{min(times):.3f} / {statistics.median(times):.3f}"

    def ratio_summary(self, name: str, baseline: str) -> str:
        ratios = self.ratios(name, baseline)
        return f"{min(ratios):.3f} / {statistics.median(ratios):.3f}"


def interleaved(
    contenders: dict[str, Callable[[], object]],
    *,
    rounds: int = 5,
    device: str = "cpu",
    warmup: bool = True,
    progress: bool = True,
) -> Rounds:
    """Time every contender once per round, rotating the order; returns the seconds.

    Each call's result is dropped before the next contender starts (its memory is freed).
    """
    names = list(contenders)
    result = Rounds({name: [] for name in names})
    with torch.no_grad():
        for index in range(-1 if warmup else 0, rounds):
            shift = max(index, 0) % len(names)
            for name in names[shift:] + names[:shift]:
                sync(device)
                start = time.perf_counter()
                value = contenders[name]()
                sync(device)
                elapsed = time.perf_counter() - start
                del value
                if index >= 0:
                    result.seconds[name].append(elapsed)
            if progress and index >= 0:
                line = "  ".join(f"{n} {result.seconds[n][-1]:.3f}s" for n in names)
                print(f"  round {index + 1}/{rounds}: {line}", flush=True)
    return result
