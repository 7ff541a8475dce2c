"""What one bench run is asked for (:class:`BenchOptions`, the boundary) and what it then
measures (:class:`BenchSettings`, the sizes, shrunk by ``quick``). Imports no torch."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

from ..config import MIN_IMAGE_SIZE, ConfigError

MAX_CONCURRENT = 64  # processes of ``--concurrent``: a typo should not start thousands


@dataclass(frozen=True)
class BenchOptions:
    """The options of ``inat-tune bench``, validated when built (ConfigError names the key).

    ``data`` None: generated photo-sized JPEGs. ``search``: compare TPE+ASHA with random search
    on the bench's own fixed dataset and image size instead (``data`` and ``image_size`` are then
    not used). ``quick``: smoke-test sizes (see :meth:`BenchSettings.quickened`).
    ``concurrent`` N: only train the default scratch CNN in N processes at once on one device
    against one alone (:mod:`.concurrent`; synthetic images on the device, so no ``data``).
    """

    data: str | None = None
    image_size: int = 64
    json_path: str | None = None
    search: bool = False
    quick: bool = False
    concurrent: int | None = None

    def __post_init__(self) -> None:
        for key in ("data", "json_path"):  # paths are kept as text: they go to the JSON as given
            value = getattr(self, key)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, key, os.fspath(value))
            elif value is not None and not isinstance(value, str):
                raise ConfigError(f"{key}={value!r}: expected a path or None")
            if getattr(self, key) == "":
                raise ConfigError(f"{key}='': expected a path or None")
        for key in ("search", "quick"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key}={getattr(self, key)!r}: expected True or False")
        size = self.image_size
        if isinstance(size, bool) or not isinstance(size, int):
            raise ConfigError(f"image_size={size!r}: expected a whole number of pixels")
        if size < MIN_IMAGE_SIZE:  # the scratch CNN's five 2x2 max-pools; refused before any work
            raise ConfigError(f"image_size={size!r}: must be >= {MIN_IMAGE_SIZE} (five 2x2 "
                              "max-pools halve it five times)")
        n = self.concurrent
        if n is not None:
            if isinstance(n, bool) or not isinstance(n, int):
                raise ConfigError(f"concurrent={n!r}: expected a whole number of processes or None")
            if not 1 <= n <= MAX_CONCURRENT:
                raise ConfigError(f"concurrent={n!r}: must be from 1 to {MAX_CONCURRENT} "
                                  "(processes training at once)")
            if self.search:
                raise ConfigError(f"concurrent={n} with search=True: two different bench modes; "
                                  "choose one")
            if self.data is not None:
                raise ConfigError(f"concurrent={n} with data={self.data!r}: the concurrent "
                                  "trainings use synthetic images already on the device; drop data")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "BenchOptions":
        """Options from keyword values; an unknown key raises ConfigError (with a hint)."""
        known = [f.name for f in fields(cls)]
        for key in raw:
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                raise ConfigError(f"unknown bench option {key!r}"
                                  + (f" (did you mean {hint[0]!r}?)" if hint else "")
                                  + f"; known options: {', '.join(known)}")
        return cls(**raw)


@dataclass(frozen=True)
class BenchSettings:
    """What one bench run measures; ``from_options`` maps the options, ``quick`` shrinks it.
    Its fields are the JSON's ``settings``."""

    image_size: int = 64
    data: str | None = None  # None: generated photo-sized JPEGs
    json_path: str | None = None
    quick: bool = False
    batch_size: int = 64  # RunConfig's default: the same for every pipeline
    photos_per_class: int = 48  # train/ images per class of the generated set (+ 1/4 in val/)
    naive_max_batches: int | None = None  # None: one full epoch
    repeats: int = 3  # timed measurements are repeated; the best is reported, all are kept
    loader_seconds: float = 3.0  # least time the cached loader is iterated for
    train_seconds: float = 4.0  # target time of the timed training steps
    train_steps: tuple[int, int] = (5, 200)  # least and most timed steps
    finetune_images: int | None = None  # cap on train images for the ResNet50 epochs
    search_trials: int = 12
    trial_count: int = 12  # short trials of the trial-start sweep (section trials)
    search_epochs: int = 6
    search_image_size: int = 32
    search_per_class: int = 160  # 1280 training images: 20 steps per epoch at batch 64
    search_seed: int = 0  # searcher seed of both sweeps (not a CLI flag: change it in Python)
    concurrent: int | None = None  # N processes training at once (only that is measured)

    @classmethod
    def from_options(cls, options: BenchOptions) -> "BenchSettings":
        base = cls(image_size=options.image_size, data=options.data,
                   json_path=options.json_path, quick=options.quick,
                   concurrent=options.concurrent)
        return base.quickened() if base.quick else base

    def quickened(self) -> "BenchSettings":
        """A smoke-test sized run (< 60 s on a 2-core CPU)."""
        return replace(self, quick=True, batch_size=16, photos_per_class=6, naive_max_batches=4,
                       repeats=1, loader_seconds=0.3, train_seconds=0.5, train_steps=(3, 20),
                       finetune_images=32, search_trials=4, trial_count=3, search_epochs=2, search_per_class=16)
