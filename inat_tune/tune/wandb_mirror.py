"""W&B as a mirror of every trial: Ray's WandbLoggerCallback, offline without an API key,
and never able to stop the sweep."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def wandb_mode() -> str:
    """online with credentials, else offline (WANDB_MODE wins when set)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY") or os.path.exists(os.path.expanduser("~/.netrc")) and \
            "api.wandb.ai" in open(os.path.expanduser("~/.netrc")).read():
        return "online"
    return "offline"


def make_wandb_callback(project: str, group: str, experiment_path: str = "<experiment>"):
    """A WandbLoggerCallback whose failures are logged, not raised; None if wandb is missing."""
    try:
        from ray.air.integrations.wandb import WandbLoggerCallback
    except Exception as e:  # noqa: BLE001
        log.warning("W&B mirror disabled: %s", e)
        return None

    class SafeWandbLoggerCallback(WandbLoggerCallback):
        """Any W&B error (network, quota, auth) becomes a warning: the sweep goes on."""

        _failed = False

        def _guard(self, fn, *args, **kwargs):
            if self._failed:
                return None
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001
                self._failed = True
                log.warning("W&B mirror failed and is now off for this sweep: %s", e)
                return None

        def setup(self, *args, **kwargs):
            return self._guard(super().setup, *args, **kwargs)

        def log_trial_start(self, trial):
            return self._guard(super().log_trial_start, trial)

        def log_trial_result(self, iteration, trial, result):
            return self._guard(super().log_trial_result, iteration, trial, result)

        def log_trial_end(self, trial, failed=False):
            return self._guard(super().log_trial_end, trial, failed)

        def on_experiment_end(self, trials, **info):
            self._guard(super().on_experiment_end, trials, **info)
            if mode == "offline" and not self._failed:
                print(f"W&B ran offline (no API key). To upload: wandb sync {trial_glob}")

    mode = wandb_mode()
    if mode == "offline":
        os.environ["WANDB_MODE"] = "offline"  # Ray's callback then skips its API-key check
    trial_glob = f"{experiment_path}/*/wandb/offline-run-*"
    os.environ.setdefault("WANDB_SILENT", "true")
    return SafeWandbLoggerCallback(project=project, group=group, mode=mode, log_config=True,
                                   excludes=["node_ip", "node_id", "hostname"])
