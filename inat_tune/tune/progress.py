"""A compact console view of a sweep: one line per finished epoch-rung, a small table now and
then, instead of Ray's full default output."""

from __future__ import annotations

import sys
import time
from typing import Any

from ray.tune import Callback


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(str(x) for x in v) + "]"
    return str(v)


class CompactProgress(Callback):
    """Prints trial start/stop events and, every ``every_s`` seconds, a table of trials:
    trial, up to ``max_params`` swept hyperparameters, epoch, val_acc, status."""

    def __init__(self, space, metric: str = "val_acc", mode: str = "max", every_s: float = 20.0,
                 max_params: int = 5, stream=None) -> None:
        swept = [k for k, p in space.parameters.items() if p.distribution != "constant"]
        self.params = swept[:max_params]
        self.metric, self.mode = metric, mode
        self.every_s = every_s
        self.stream = stream  # None = sys.stdout at print time (callbacks are pickled by Ray)
        self._last = 0.0
        self._latest: dict[str, dict] = {}

    def _say(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def _label(self, trial) -> str:
        cfg = trial.config
        return " ".join(f"{k}={_fmt(cfg.get(k))}" for k in self.params)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._say(f"[start] {trial.trial_id}  {self._label(trial)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._latest[trial.trial_id] = result

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = self._latest.get(trial.trial_id, {})
        self._say(f"[done]  {trial.trial_id}  epochs {r.get('training_iteration', 0)}  "
                  f"{self.metric} {r.get(self.metric, float('nan')):.4f}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._say(f"[error] {trial.trial_id}: see {trial.path}/error.txt")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._say(f"[retry] {trial.trial_id} failed; restarting from its last checkpoint")

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        self._say(self.table(trials))

    def on_experiment_end(self, trials, **info):
        self._say(self.table(trials))

    def table(self, trials) -> str:
        head = ["trial", *self.params, "epoch", self.metric, "status"]
        rows = []
        for t in trials:
            r = self._latest.get(t.trial_id) or t.last_result or {}
            m = r.get(self.metric)
            rows.append([t.trial_id, *(_fmt(t.config.get(k)) for k in self.params),
                         str(r.get("training_iteration", 0)), f"{m:.4f}" if m is not None else "-",
                         t.status])
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
        line = lambda row: "  ".join(str(x).ljust(w) for x, w in zip(row, widths))  # noqa: E731
        counts = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        summary = ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()))
        return "\n".join([f"== {len(trials)} trials: {summary}", line(head), *map(line, rows)])
