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
                 max_params: int = 5, stream=None, wait_notice_s: float = 60.0,
                 wait_limit_s: float = 900.0) -> None:
        swept = [k for k, p in space.parameters.items() if p.distribution != "constant"]
        self.params = swept[:max_params]
        self.metric, self.mode = metric, mode
        self.every_s = every_s
        self.stream = stream  # None = sys.stdout at print time (callbacks are pickled by Ray)
        self._last = 0.0
        self._latest: dict[str, dict] = {}
        # Trials waiting for a node: what they wait for ("a GPU worker (gpu_a10g)", set by the
        # runner on a cluster whose autoscaler must start one), since when, and when to say so.
        self.waiting_for: str | None = None
        self.wait_notice_s, self.wait_limit_s = wait_notice_s, wait_limit_s
        self.clock = time.monotonic
        self._waiting_since: float | None = None
        self._wait_said = float("-inf")

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

    def waiting(self, trials) -> str | None:
        """A line while trials wait for a node (some PENDING, none RUNNING) for at least
        ``wait_notice_s``, at most once per ``every_s``; past ``wait_limit_s`` it says what is
        missing. None otherwise."""
        now = self.clock()
        pending = sum(t.status == "PENDING" for t in trials)
        if not pending or any(t.status == "RUNNING" for t in trials):
            self._waiting_since = None
            return None
        if self._waiting_since is None:
            self._waiting_since = now
        waited = now - self._waiting_since
        if waited < self.wait_notice_s or now - self._wait_said < self.every_s:
            return None
        self._wait_said = now
        what = self.waiting_for or "a node with room for a trial"
        line = f"[wait]  {pending} trial(s) pending: waiting for {what} for {waited:.0f} s"
        if waited >= self.wait_limit_s:
            line += (f"; still none after {self.wait_limit_s:.0f} s: the autoscaler could not start "
                     f"{'it' if self.waiting_for else 'one'} (cloud quota or capacity, a failing "
                     "setup command?): see `ray status` and the head's logs/monitor.* files")
        return line

    def on_step_end(self, iteration, trials, **info):
        line = self.waiting(trials)
        if line:
            self._say(line)
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
