"""Data kept warm in a long-lived process: the next trial on the same worker loads nothing.

Ray Tune reuses a sweep's trial processes (``reuse_actors``), so what one trial loaded can
serve the next: the tuning split (read-only views of the node's memory-mapped decode cache),
its copy on the trial's device, and frozen-backbone features. :data:`WARM` holds them, keyed
by what identifies them (the decode cache's fingerprint of the files, image size, split and
device; the feature cache's key), least recently used first out when the bytes held on a
device would pass the budget.

The budget counts bytes that belong to this process: device copies and features. Views of
the memory-mapped cache cost nothing here (the page cache holds them once per node) and are
counted as 0. On a GPU a process keeps one entry per category (the current data, the current
features): what its memory estimate counts. ``INAT_TUNE_WARM_MB`` sets the budget; the default is a quarter of what the
process may use on that device (its share of the GPU; on the CPU, the machine's RAM divided
by its cores, as a node may run a trial per core);
``0`` turns warm data off.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Hashable, TypeVar

T = TypeVar("T")


@dataclass
class _Entry:
    value: Any
    nbytes: int
    device: str


class WarmCache:
    """A small LRU of loaded data, with a byte budget per device kind ("cpu", "cuda")."""

    def __init__(self) -> None:
        self._items: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, load: Callable[[], T], *, nbytes: Callable[[T], int] = lambda v: 0,
            device: str = "cpu") -> T:
        """The value of ``key``, loading it with ``load()`` on a miss (and keeping it if its
        ``nbytes`` fit the budget of ``device``, dropping older entries to make room)."""
        with self._lock:
            entry = self._items.get(key)
            if entry is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return entry.value
        kind = device.split(":")[0]
        if kind == "cuda":
            # A trial's GPU memory estimate (inat_tune.tune.memory) counts its own data and
            # features only: a miss drops what earlier trials left of the same category
            # ("device" arrays, "features") before loading, so no older copy is still held.
            with self._lock:
                for k in [k for k, e in self._items.items() if e.device == kind and _category(k) == _category(key)]:
                    del self._items[k]
        value = load()
        size = int(nbytes(value))
        budget = budget_bytes(kind)
        with self._lock:
            self.misses += 1
            if size > budget:
                return value  # used once, not kept
            while self._held(kind) + size > budget:
                self._drop_oldest(kind)
            self._items[key] = _Entry(value, size, kind)
        return value

    def _held(self, kind: str) -> int:
        return sum(e.nbytes for e in self._items.values() if e.device == kind)

    def _drop_oldest(self, kind: str) -> None:
        for key, entry in self._items.items():
            if entry.device == kind:
                del self._items[key]
                return

    def held_bytes(self, kind: str | None = None) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._items.values() if kind is None or e.device == kind)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def _category(key: Hashable) -> Hashable:
    return key[0] if isinstance(key, tuple) and key else key


def budget_bytes(kind: str) -> int:
    """Bytes the warm cache may hold on a device kind (see the module docstring)."""
    env = os.environ.get("INAT_TUNE_WARM_MB")
    if env is not None:
        return int(float(env) * 2**20)
    if kind == "cuda":
        import torch
        if not torch.cuda.is_available():
            return 0
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        fraction = float(os.environ.get("INAT_TUNE_GPU_FRACTION", "1") or 1)
        return int(total * min(max(fraction, 0.0), 1.0) / 4)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 8 * 2**30
    return ram // 4 // (os.cpu_count() or 1)  # up to one trial process per core on a node


WARM = WarmCache()
