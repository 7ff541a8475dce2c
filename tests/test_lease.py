"""One driver per experiment: the lease refuses a second driver, names the first, and lets
--resume take over from a driver that is gone (local folders and a URI filesystem)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict

import pytest

from inat_tune.tune import lease as lease_mod
from inat_tune.tune.lease import LEASE_FILE, ExperimentLease, Lease, LeaseError, read_lease


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _plant(exp, **kw) -> Lease:
    now = time.time()
    held = Lease(**{"host": socket.gethostname(), "pid": os.getpid(), "token": "other",
                    "started": now - 5, "heartbeat": now, **kw})
    exp.mkdir(parents=True, exist_ok=True)
    (exp / LEASE_FILE).write_text(json.dumps(asdict(held)))
    return held


def test_a_second_driver_is_refused_with_a_line_naming_the_first(tmp_path):
    exp = tmp_path / "exp"
    with ExperimentLease(str(exp), takeover=False) as first:
        held = read_lease(str(exp))
        assert (held.host, held.pid, held.token) == (socket.gethostname(), os.getpid(), first.lease.token)
        for takeover in (False, True):  # a live driver is never taken over, not even by --resume
            with pytest.raises(LeaseError) as e:
                ExperimentLease(str(exp), takeover=takeover).acquire()
            msg = str(e.value)
            assert f"host {socket.gethostname()}, pid {os.getpid()}" in msg and "another driver" in msg
            assert "\n" not in msg
    assert not exp.exists()  # released: the lease and the folder it alone was in are gone


def test_resume_takes_over_from_a_driver_that_is_gone(tmp_path):
    exp = tmp_path / "exp"
    gone = _plant(exp, pid=_dead_pid())  # same host, process ended: stale at once
    with pytest.raises(LeaseError, match="is gone .*--resume takes it over"):
        ExperimentLease(str(exp), takeover=False).acquire()
    assert read_lease(str(exp)) == gone  # a refused driver changes nothing
    mine = ExperimentLease(str(exp), takeover=True).acquire()
    try:
        assert mine.took_over == gone and read_lease(str(exp)).token == mine.lease.token
    finally:
        mine.release()


def test_a_lease_from_another_host_is_stale_only_after_its_heartbeat_stops(tmp_path):
    exp = tmp_path / "exp"
    _plant(exp, host="other-node", pid=1, heartbeat=time.time() - 5)
    with pytest.raises(LeaseError, match="other-node, pid 1"):
        ExperimentLease(str(exp), takeover=True).acquire()
    _plant(exp, host="other-node", pid=1, heartbeat=time.time() - lease_mod.STALE_S - 1)
    mine = ExperimentLease(str(exp), takeover=True).acquire()
    mine.release()
    assert mine.took_over.host == "other-node"


def test_the_holder_keeps_its_heartbeat_fresh_and_never_deletes_another_lease(tmp_path, monkeypatch):
    monkeypatch.setattr(lease_mod, "HEARTBEAT_S", 0.05)
    exp = tmp_path / "exp"
    mine = ExperimentLease(str(exp), takeover=False).acquire()
    first = read_lease(str(exp)).heartbeat
    time.sleep(0.3)
    assert read_lease(str(exp)).heartbeat > first
    (exp / "sweep.json").write_text("{}")  # the experiment has files now
    mine._stop.set()
    mine._thread.join()
    other = _plant(exp, token="someone-else")
    mine.release()
    assert read_lease(str(exp)) == other and (exp / "sweep.json").is_file()


def test_the_lease_works_through_a_uri_filesystem(tmp_path, monkeypatch):
    """s3:// and gs:// go through pyarrow's filesystems, as file:// does here."""
    monkeypatch.setattr(lease_mod, "SETTLE_S", 0.01)
    uri = f"file://{tmp_path}/bucket/exp"
    with ExperimentLease(uri, takeover=False):
        assert read_lease(uri).pid == os.getpid()
        with pytest.raises(LeaseError, match="another driver"):
            ExperimentLease(uri, takeover=True).acquire()
    assert read_lease(uri) is None


def test_a_sweep_on_a_held_experiment_is_refused_before_ray_starts(synth_data, tmp_path):
    import ray

    from inat_tune.tune.runner import SweepError, plan_sweep, run_sweep

    space = {"model": "scratch_cnn", "method": "random", "metric": {"name": "val_acc", "goal": "maximize"},
             "parameters": {"epochs": {"value": 1}, "image_size": {"value": 32}}}
    opts, spec = plan_sweep(space, synth_data, name="held", storage=tmp_path, num_samples=1, use_wandb=False)
    _plant(tmp_path / "held", host="other-node", pid=4242)
    with pytest.raises(SweepError, match="being run by another driver .*other-node, pid 4242"):
        run_sweep(opts, spec, resume=True)
    assert not ray.is_initialized()
    assert sorted(p.name for p in (tmp_path / "held").iterdir()) == [LEASE_FILE]  # nothing written
