"""Measuring helpers shared by the sections: CPU time, device sync, best of repeats, ratios."""

from __future__ import annotations

import time
from typing import Any

import torch


def cpu_seconds() -> float:
    """CPU time of this process (all threads) plus that of its finished (joined) children:
    the work a measurement cost, whatever share of the cores other programs took meanwhile."""
    try:
        import resource
    except ImportError:  # Windows: this process only
        return time.process_time()
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so wall-clock times include it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is missing or ``b`` is zero."""
    return a / b if a is not None and b else None


def best_of(runs: list[dict[str, Any]], key: str, keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """The run with the highest ``key`` (the least disturbed by other work on the machine),
    with every run's ``key`` (and ``keep`` values) listed under ``runs`` to show the spread."""
    best = max(runs, key=lambda r: r[key] or 0.0)
    return {**best, "repeats": len(runs),
            "runs": [{k: r[k] for k in (key, *keep)} for r in runs]}


class SectionTimer:
    """Prints each section as it starts and records the seconds every section took."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._name: str | None = None
        self._t0 = 0.0

    def start(self, name: str | None) -> None:
        """End the running section (if any) and start ``name`` (None: just end it)."""
        now = time.perf_counter()
        if self._name is not None:
            self.seconds[self._name] = now - self._t0
        self._name, self._t0 = name, now
        if name is not None:
            print(f"[bench] {name} ...", flush=True)
