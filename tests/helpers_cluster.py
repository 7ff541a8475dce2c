"""Helpers for the fault tests (tests/test_faults.py): tiny spaces, reading an experiment folder
while a sweep writes it, and starting / killing ``inat-tune sweep`` and Ray processes without
leaking them into later tests.

Every Ray instance a fault test starts gets its own ``RAY_TMPDIR`` (a short folder under /tmp:
Unix socket paths are limited to 107 characters). Ray then keeps its sessions, its
``ray_current_cluster`` file and its sockets there, so ``address="auto"`` cannot pick up another
Ray on the same machine, and ``kill_processes_mentioning(tmpdir)`` finds exactly the processes
this test started (their command line or inherited environment names that folder) and nothing
else.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent  # the interpreter running the tests: .venv/bin
INAT_TUNE = str(VENV_BIN / "inat-tune")


def write_space(path: Path, *, epochs: int | list[int] = 3, lrs: list[float] | None = None,
                method: str = "random") -> Path:
    """The tiny scratch-CNN space of these tests: 32 px, 4 filters, dense 8, batch 64.
    A list of ``epochs`` with ``method: grid`` gives trials of different lengths (a short one
    that finishes early and a long one that is still running when the fault is injected)."""
    params: dict[str, Any] = {
        "image_size": {"value": 32},
        "filters": {"value": 4},
        "dense": {"value": 8},
        "batch_size": {"value": 64},
        "augment": {"value": False},
        "epochs": {"values": epochs} if isinstance(epochs, list) else {"value": epochs},
        "lr": {"values": lrs} if lrs and len(lrs) > 1 else {"value": (lrs or [2e-3])[0]},
    }
    space = {"model": "scratch_cnn", "method": method,
             "metric": {"name": "val_acc", "goal": "maximize"}, "parameters": params}
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------------
# Reading an experiment folder while it is being written

def trial_dirs(exp: Path) -> dict[str, Path]:
    """trial id -> trial folder (``<trainable>_<trial_id>``, see runner._trial_dirname)."""
    if not exp.is_dir():
        return {}
    out = {}
    for p in exp.iterdir():
        if p.is_dir() and (p / "params.json").is_file():
            out[p.name.split("_", 3)[-1]] = p  # scratch_cnn_trainable_<id>
    return dict(sorted(out.items()))


def results(trial: Path) -> list[dict]:
    """The trial's result.json lines; a half-written last line (read mid-write) is left out."""
    f = trial / "result.json"
    if not f.is_file():
        return []
    rows = []
    for line in f.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def trial_epochs(trial: Path) -> int | None:
    """The epoch budget of a trial, from its params.json (None while it is being written)."""
    try:
        return int(json.loads((trial / "params.json").read_text())["epochs"])
    except (OSError, ValueError, KeyError):
        return None


def is_finished(trial: Path) -> bool:
    rows = results(trial)
    return bool(rows) and rows[-1]["epoch"] == trial_epochs(trial)


def snapshot(exp: Path) -> dict[str, dict]:
    """trial id -> {status, epoch, checkpoint, kept} from Tune's newest saved experiment state:
    what the driver had recorded, i.e. what ``--resume`` starts from. ``checkpoint`` is the
    folder of the trial's latest recorded checkpoint (the one a resumed trial continues from),
    ``kept`` every checkpoint folder the recorded checkpoint manager still counts on."""
    files = sorted(exp.glob("experiment_state-*.json"))
    if not files:
        return {}
    try:
        state = json.loads(files[-1].read_text())
    except (OSError, json.JSONDecodeError):  # being rewritten
        return {}
    out = {}
    for trial_json, runtime_json in state["trial_data"]:
        t, run = json.loads(trial_json), json.loads(runtime_json)
        last = run.get("last_result") or {}
        latest = last.get("checkpoint_dir_name")
        out[t["trial_id"]] = {"status": t["status"], "epoch": last.get("epoch", 0),
                              "checkpoint": latest, "kept": _kept(run) or ({latest} if latest else set())}
    return out


def _kept(run: dict) -> set[str] | None:
    """Checkpoint folders named by a trial's pickled checkpoint manager (Ray's own format:
    ``{"_type": "CLOUDPICKLE_FALLBACK", "value": hex}``); None if it cannot be read."""
    import pickle

    try:
        manager = pickle.loads(bytes.fromhex(run["checkpoint_manager"]["value"]))  # noqa: S301
        results = [*manager._checkpoint_results, manager._latest_checkpoint_result]
        return {Path(r.checkpoint.path).name for r in results if r is not None}
    except Exception:  # noqa: BLE001 - another Ray version: fall back to the latest only
        return None


def statuses(exp: Path) -> dict[str, str]:
    """trial id -> status (RUNNING, TERMINATED, ERROR, ...) in Tune's newest saved state."""
    return {t: s["status"] for t, s in snapshot(exp).items()}


def wait_for(cond: Callable[[], Any], timeout: float, what: str, *, interval: float = 0.2,
             alive: subprocess.Popen | None = None, log: Path | None = None) -> Any:
    """Poll ``cond`` until it returns something truthy; fail after ``timeout`` s, or at once
    when the process ``alive`` has exited (its log is shown)."""
    t_end = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"while waiting for {what}: process exited with {alive.returncode}"
                                 + (f"\n{tail(log)}" if log else ""))
        if time.monotonic() > t_end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                                 + (f"\n{tail(log)}" if log else ""))
        time.sleep(interval)


def tail(path: Path | None, n: int = 60) -> str:
    if path is None or not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


# ---------------------------------------------------------------------------------------------
# Processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(ray_tmpdir: Path, **extra: str) -> dict[str, str]:
    """Environment of a subprocess: .venv/bin first on PATH (``inat-tune``, ``ray``), its own
    RAY_TMPDIR, W&B offline, plus ``extra``. INAT_TUNE_CACHE comes from the test's env."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update({
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        "RAY_TMPDIR": str(ray_tmpdir),
        "WANDB_MODE": "offline",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    })
    env.update(extra)
    return env


def start(cmd: list[str], log: Path, env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen:
    """Start ``cmd`` as the leader of a new session (so its whole group can be killed)."""
    f = open(log, "ab")  # noqa: SIM115 - closed by the process's exit (inherited)
    try:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                cwd=str(cwd or REPO), start_new_session=True)
    finally:
        f.close()


def kill_group(proc: subprocess.Popen | None, sig: int = signal.SIGKILL) -> None:
    if proc is None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def processes_mentioning(marker: str) -> list[int]:
    """Pids of live processes whose command line or environment contains ``marker`` (a folder
    of this test, e.g. the RAY_TMPDIR it gave a Ray instance: Ray's workers rename themselves
    ``ray::IDLE`` etc., but keep the environment they inherited). Reads /proc (Linux); zombies
    have neither and are not listed."""
    me, needle = os.getpid(), marker.encode()
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        for part in ("cmdline", "environ"):
            try:
                if needle in (d / part).read_bytes():
                    pids.append(int(d.name))
                    break
            except OSError:  # exited meanwhile, or not ours to read
                continue
    return pids


def kill_processes_mentioning(marker: str, timeout: float = 20) -> list[int]:
    """SIGKILL, one by one by pid, the processes that ``processes_mentioning(marker)`` finds (the
    RAY_TMPDIR of the Ray instance this test started); returns their pids."""
    pids = processes_mentioning(marker)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    t_end = time.monotonic() + timeout
    while processes_mentioning(marker) and time.monotonic() < t_end:
        time.sleep(0.2)
    return pids


def sweep_cmd(space: Path, data: Path, storage: Path, name: str, *more: str) -> list[str]:
    return [INAT_TUNE, "sweep", str(space), "--data", str(data), "--storage", str(storage),
            "--name", name, "--no-wandb", *more]
