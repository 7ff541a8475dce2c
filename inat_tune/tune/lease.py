"""One driver per experiment: a lease file with host, pid and a heartbeat.

A sweep's driver holds ``<experiment>/driver.lease.json`` while it runs. A second driver on
the same experiment (a ``--resume`` typed while the first still runs, a second machine sharing
the bucket) would start trials of its own into the same folder, so it is refused with a line
naming the first. The holder rewrites the heartbeat every ``HEARTBEAT_S`` seconds; a lease
whose heartbeat is older than ``STALE_S`` (or, on this host, whose process is gone) belongs to
a dead driver and ``--resume`` takes it over. Works on a local folder and on s3:// / gs://
(through pyarrow's filesystems): there, creating a file is not atomic, so a new holder writes
its lease, waits a moment and reads it back, and yields if another holder's lease replaced it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

LEASE_FILE = "driver.lease.json"
HEARTBEAT_S = 10.0
STALE_S = 60.0
SETTLE_S = 1.0  # remote storage: wait before reading a written lease back


class LeaseError(RuntimeError):
    """Another driver holds the experiment; the message names it."""


@dataclass(frozen=True)
class Lease:
    host: str
    pid: int
    token: str
    started: float
    heartbeat: float

    def age(self, now: float | None = None) -> float:
        return (now or time.time()) - self.heartbeat

    def describe(self, now: float | None = None) -> str:
        return (f"host {self.host}, pid {self.pid}, started "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started))}, "
                f"last heartbeat {self.age(now):.0f} s ago")


def _fs(path: str):
    import pyarrow.fs
    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), os.path.abspath(path)


def read_lease(experiment: str) -> Lease | None:
    """The lease of ``experiment`` (a folder or URI), or None when there is none or it is
    unreadable (a half-written lease counts as none: its writer re-writes it within seconds)."""
    fs, root = _fs(experiment)
    try:
        with fs.open_input_stream(f"{root.rstrip('/')}/{LEASE_FILE}") as f:
            raw = json.loads(f.readall())
        return Lease(**{k: raw[k] for k in Lease.__dataclass_fields__})
    except (FileNotFoundError, OSError, ValueError, KeyError, TypeError):
        return None


def is_stale(lease: Lease, now: float | None = None) -> bool:
    """A dead driver's lease: no heartbeat for STALE_S, or its process is gone on this host."""
    if lease.age(now) > STALE_S:
        return True
    if lease.host == socket.gethostname():
        try:
            os.kill(lease.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
    return False


def _write(experiment: str, lease: Lease) -> None:
    fs, root = _fs(experiment)
    fs.create_dir(root, recursive=True)
    path = f"{root.rstrip('/')}/{LEASE_FILE}"
    data = json.dumps(asdict(lease)).encode()
    if "://" in experiment:
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    tmp = f"{path}.{lease.token}.tmp"  # local: whole or nothing (rename)
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class ExperimentLease:
    """Hold the experiment's lease for a ``with`` block (heartbeat on a daemon thread)."""

    def __init__(self, experiment: str, *, takeover: bool) -> None:
        self.experiment = experiment
        self.takeover = takeover
        now = time.time()
        self.lease = Lease(host=socket.gethostname(), pid=os.getpid(), token=uuid.uuid4().hex,
                           started=now, heartbeat=now)
        self.took_over: Lease | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> "ExperimentLease":
        held = read_lease(self.experiment)
        if held is not None and held.token != self.lease.token:
            if not is_stale(held):
                raise LeaseError(f"{self.experiment} is being run by another driver ({held.describe()}); "
                                 "wait for it to end or stop it (a driver that is gone is taken over "
                                 f"by --resume once its heartbeat is {STALE_S:.0f} s old)")
            if not self.takeover:
                raise LeaseError(f"{self.experiment} holds the lease of a driver that is gone "
                                 f"({held.describe()}); --resume takes it over")
            self.took_over = held
        _write(self.experiment, self.lease)
        if "://" in self.experiment:  # not atomic there: make sure this lease is the one that stayed
            time.sleep(SETTLE_S)
            now_held = read_lease(self.experiment)
            if now_held is None or now_held.token != self.lease.token:
                raise LeaseError(f"{self.experiment}: another driver took the lease at the same time"
                                 + (f" ({now_held.describe()})" if now_held else ""))
        self._thread = threading.Thread(target=self._beat, name="inat-tune-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.lease = Lease(**{**asdict(self.lease), "heartbeat": time.time()})
                _write(self.experiment, self.lease)
            except Exception:  # noqa: BLE001 - a missed beat is retried; STALE_S allows several
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        held = read_lease(self.experiment)
        if held is not None and held.token == self.lease.token:
            fs, root = _fs(self.experiment)
            try:
                fs.delete_file(f"{root.rstrip('/')}/{LEASE_FILE}")
            except (FileNotFoundError, OSError):
                pass
            if "://" not in self.experiment:
                try:
                    os.rmdir(root)  # only when empty: a sweep that stopped before writing anything
                except OSError:
                    pass

    def __enter__(self) -> "ExperimentLease":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
