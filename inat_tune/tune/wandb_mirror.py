"""W&B as a mirror of every trial: Ray's WandbLoggerCallback, offline without an API key,
never able to stop the sweep, and never making the driver wait.

Ray's callback gives each trial a logging actor (which runs ``wandb.init`` ... ``wandb.finish``)
fed through a queue actor. What this subclass changes, each measured in a 6-trial sweep on a
loaded 2-core machine (tests/test_wandb_mirror.py runs such a sweep and times every hook):

- **No hook waits.** Ray's ``Queue.put`` is ``ray.get(queue_actor.put.remote(item))``: a
  trial's first result waited in the driver's loop until the queue actor's new worker process
  was up, 4 to 22 s per trial (Ray's "callbacks.on_trial_result took ... s, which may be a
  performance bottleneck"), and no other trial's result or scheduling moved meanwhile. Here
  every message is sent without waiting for it, numbered, and the logging actor takes them in
  that order (Ray does not keep the order of calls to an async actor such as the queue: sent
  unnumbered, a run's epoch 2 came before its epoch 1, and W&B dropped epoch 1).
- **Whole runs.** The logging actor was killed as soon as ``wandb.finish()`` returned, but
  wandb-core writes the run's record log after that, and died with the actor (a 7-byte
  ``.wandb`` file, no metrics). Here the actor's task ends only after ``wandb.teardown()``,
  which waits for wandb-core to exit.
- **In the experiment folder.** Runs were written into Ray's driver staging folder, which
  reaches the experiment folder only with Ray's experiment syncs; the last one comes before
  ``on_experiment_end`` waits for the runs, so the last trials' runs were missing or cut short
  there. With local storage a run is now written into its trial's folder directly; with remote
  storage (s3://, gs://) the runs are copied there after they have finished.
- **Bounded end.** ``on_experiment_end`` ends any run still open and waits at most
  ``finish_timeout_s`` (Ray: 30 minutes) for them to finish.
- **Quiet exit.** Ray's ``__del__`` calls ``ray.is_initialized()`` even at interpreter exit,
  when module globals are already None: an ``AttributeError`` printed after every sweep.
"""

from __future__ import annotations

import functools
import logging
import os
import posixpath

log = logging.getLogger(__name__)
FINISH_TIMEOUT_S = 180.0  # on_experiment_end's wait for the runs to finish (offline: seconds)


# Set by the driver (runner): "1" turns the mirror off. --resume restores the callbacks that
# were pickled with the experiment, so a `--no-wandb` given at --resume reaches them this way.
OFF_ENV = "INAT_TUNE_WANDB_OFF"


def mirror_off() -> bool:
    return os.environ.get(OFF_ENV) == "1"


def wandb_mode() -> str:
    """online with credentials, else offline (WANDB_MODE wins when set)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY") or os.path.exists(os.path.expanduser("~/.netrc")) and \
            "api.wandb.ai" in open(os.path.expanduser("~/.netrc")).read():
        return "online"
    return "offline"


def make_wandb_callback(project: str, group: str, experiment_path: str = "<experiment>",
                        finish_timeout_s: float = FINISH_TIMEOUT_S):
    """A WandbLoggerCallback whose failures are logged, not raised; None if wandb is missing."""
    mode = wandb_mode()
    if mode == "offline":
        os.environ["WANDB_MODE"] = "offline"  # Ray's callback then skips its API-key check
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        cb = callback_class()(project=project, group=group, mode=mode, log_config=True,
                              excludes=["node_ip", "node_id", "hostname"])
    except Exception as e:  # noqa: BLE001
        log.warning("W&B mirror disabled: %s", e)
        return None
    cb.finish_timeout_s = finish_timeout_s
    if mode == "offline":
        cb.offline_hint = ("W&B ran offline (no API key). To upload: "
                           f"wandb sync {experiment_path}/*/wandb/offline-run-*")
    return cb


@functools.lru_cache(maxsize=None)
def callback_class() -> type:
    """SafeWandbLoggerCallback (built on first use: Ray's W&B module is imported only then)."""
    import pyarrow.fs
    import ray
    from ray.air.integrations.wandb import (WandbLoggerCallback, _clean_log, _QueueItem,
                                            _WandbLoggingActor)

    class LoggingActor(_WandbLoggingActor):
        """Ray's logging actor, whose task ends only once wandb-core has written the run out."""

        def __init__(self, logdir, queue, *args, **kwargs):
            if kwargs.get("dir"):
                os.makedirs(kwargs["dir"], exist_ok=True)  # the trial's folder may not exist yet
            super().__init__(logdir, InOrder(queue), *args, **kwargs)

        def run(self):
            try:
                super().run()
            finally:
                # wandb.finish() returns before wandb-core has written the record log; the
                # actor is killed once this task ends, and wandb-core with it.
                self._wandb.teardown()

    def is_local(trial) -> bool:
        return isinstance(trial.storage.storage_filesystem, pyarrow.fs.LocalFileSystem)

    class SafeWandbLoggerCallback(WandbLoggerCallback):
        """Any W&B error (network, quota, auth) becomes a warning: the sweep goes on. No hook
        waits for another process; on_experiment_end waits at most ``finish_timeout_s``."""

        _logger_actor_cls = LoggingActor
        _failed = False
        finish_timeout_s = FINISH_TIMEOUT_S
        offline_hint: str | None = None  # printed at the end of a sweep that ran offline

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._sent: list = []  # refs of the messages sent to the trials' queues
            self._seq: dict = {}  # trial -> number of its next message

        def _guard(self, fn, *args, **kwargs):
            if self._failed or mirror_off():
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

        def _start_logging_actor(self, trial, exclude_results, **wandb_init_kwargs):
            if trial in self._trial_logging_futures:
                return  # a restarted trial: its run goes on
            if is_local(trial):  # the run goes into the trial's folder of the experiment
                wandb_init_kwargs.setdefault("dir", trial.path)
            self._seq[trial] = 0
            super()._start_logging_actor(trial, exclude_results, **wandb_init_kwargs)

        def _send(self, trial, item) -> None:
            """Queue ``item`` for the trial's run, numbered, without waiting for the queue
            actor (Ray's Queue.put waits for it)."""
            seq = self._seq[trial]
            self._seq[trial] = seq + 1
            self._sent.append(self._trial_queues[trial].actor.put.remote((seq, item), None))

        def _check_sent(self) -> None:
            """Forget the messages delivered; one that could not be delivered raises (and the
            guard turns the mirror off). Never waits."""
            if self._sent:
                done, self._sent = ray.wait(self._sent, num_returns=len(self._sent), timeout=0)
                ray.get(done)

        def _signal_logging_actor_stop(self, trial):
            self._send(trial, (_QueueItem.END, None))

        def log_trial_result(self, iteration, trial, result):
            def send():
                self._check_sent()
                if trial not in self._trial_logging_actors:
                    self.log_trial_start(trial)
                self._send(trial, (_QueueItem.RESULT, _clean_log(
                    result, video_kwargs=self.video_kwargs, image_kwargs=self.image_kwargs)))
            return self._guard(send)

        def log_trial_save(self, trial):
            if self.upload_checkpoints and trial.checkpoint and \
                    isinstance(trial.checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
                self._guard(self._send, trial, (_QueueItem.CHECKPOINT, trial.checkpoint.path))

        def log_trial_end(self, trial, failed=False):
            def end():
                self._check_sent()
                # signals the end, then collects the runs that have finished (timeout 0)
                super(SafeWandbLoggerCallback, self).log_trial_end(trial, failed)
            return self._guard(end)

        def _cleanup_logging_actor(self, trial):
            super()._cleanup_logging_actor(trial)  # kills the actor: its run has finished
            self._seq.pop(trial, None)

        def _cleanup_logging_actors(self, timeout: float = 0, kill_on_timeout: bool = False):
            futures = list(self._trial_logging_futures.values())
            if not futures:
                return
            done, remaining = ray.wait(futures, num_returns=len(futures), timeout=timeout)
            for future in done:
                trial = self._logging_future_to_trial.pop(future)
                try:
                    ray.get(future)
                except Exception as e:  # noqa: BLE001
                    log.warning("W&B run of trial %s failed: %s", trial, e)
                self._cleanup_logging_actor(trial)
            if kill_on_timeout:
                for future in remaining:
                    trial = self._logging_future_to_trial.pop(future)
                    log.warning("W&B run of trial %s did not finish within %.0f s; stopped, it may "
                                "lack its last records", trial, timeout)
                    self._cleanup_logging_actor(trial)

        def on_experiment_end(self, trials, **info):
            """End every run still open (an interrupted sweep), wait at most finish_timeout_s
            for all to finish, then copy remote trials' runs into the experiment folder."""
            if mirror_off():
                return
            try:
                for trial in list(self._trial_logging_futures):
                    self._signal_logging_actor_stop(trial)  # a second END is never read
                self._cleanup_logging_actors(timeout=self.finish_timeout_s, kill_on_timeout=True)
                self._sent = []
            except Exception as e:  # noqa: BLE001
                log.warning("W&B mirror: ending the runs failed: %s", e)
            for trial in trials:
                try:
                    if not is_local(trial):
                        copy_runs(trial.local_path, trial.storage.storage_filesystem, trial.path)
                except Exception as e:  # noqa: BLE001
                    log.warning("W&B run of trial %s not copied to %s: %s", trial, trial.path, e)
            if self.offline_hint and not self._failed:
                print(self.offline_hint)

        def __del__(self):
            # Only a sweep that died before on_experiment_end leaves runs open; at interpreter
            # exit any of this may already be torn down, which is no reason to print anything.
            try:
                if getattr(self, "_trial_logging_futures", None) and ray.is_initialized():
                    for trial in list(self._trial_logging_futures):
                        self._signal_logging_actor_stop(trial)
                    self._cleanup_logging_actors(timeout=2, kill_on_timeout=True)
            except Exception:  # noqa: BLE001
                pass

    return SafeWandbLoggerCallback


class InOrder:
    """The logging actor's view of its queue: the items, sent as (number, item), in the order
    they were sent. Ray does not guarantee that an async actor (the queue) runs calls in the
    order they were sent, and W&B drops a step that comes after a later one."""

    def __init__(self, queue) -> None:
        self.queue, self.next, self.held = queue, 0, {}

    def get(self):
        while self.next not in self.held:
            seq, item = self.queue.get()
            self.held[seq] = item
        self.next += 1
        return self.held.pop(self.next - 1)


def copy_runs(trial_dir: str, fs, fs_trial_path: str) -> int:
    """Copy ``<trial_dir>/wandb`` (the driver's copy of a trial's runs) to ``<fs_trial_path>/wandb``
    on the pyarrow filesystem ``fs``: regular files only (``latest-run`` and wandb-core's log
    are symlinks). Returns the number of files copied."""
    src = os.path.join(trial_dir, "wandb")
    n = 0
    for root, _dirs, files in os.walk(src):  # does not descend into symlinked folders
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            dest = posixpath.join(fs_trial_path, "wandb", *os.path.relpath(path, src).split(os.sep))
            fs.create_dir(posixpath.dirname(dest), recursive=True)
            with open(path, "rb") as f, fs.open_output_stream(dest) as out:
                out.write(f.read())
            n += 1
    return n
