"""Scale out and survive faults, shown on this machine with real Ray processes.

1. A sweep runs on a multi-node Ray cluster (``ray.cluster_utils.Cluster``: a head with no CPU
   and two 1-CPU worker nodes, each its own raylet process) and its trials land on both nodes.
2. A worker node is killed mid-sweep (its raylet and workers SIGKILLed): its trial is retried on
   the other node from its last checkpoint; finished trials are not touched.
3. The driver (``inat-tune sweep``) is SIGKILLed mid-sweep, on the cluster and on one machine
   (its own local Ray dies with it); ``inat-tune sweep --resume`` finishes the experiment.
4. ``ray job submit`` to a local head with the dashboard/job server runs a sweep to the end.
5. Two sweeps with different names share one --storage and one decode cache at the same time.

All nodes of a local cluster share this machine's filesystem, so a local ``--storage`` folder
plays the role of the shared storage (S3 / NFS) that a real multi-machine cluster needs
(docs/cluster.md, "Why S3"). Every Ray instance gets its own RAY_TMPDIR, and everything a test
starts is killed by pid in ``finally`` (never ``ray stop``, which would also stop any other Ray
on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

from helpers_cluster import (INAT_TUNE, VENV_BIN, child_env, free_port, is_finished, kill_group,
                             kill_processes_mentioning, processes_mentioning, results, start,
                             statuses, sweep_cmd, tail, trial_dirs, trial_epochs, wait_for,
                             write_space)

pytestmark = pytest.mark.slow

SHORT, LONG = 3, 150  # epochs of the trial that finishes before the fault / is hit by it


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from inat_tune.data.synth import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("faults") / "ds", per_class=12, val_per_class=3,
                          image_size=32)


def _ray_tmpdir() -> Path:
    # short: Ray's Unix sockets live below it (at most 107 characters)
    return Path(tempfile.mkdtemp(prefix="ift", dir="/tmp"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head with 0 CPUs (the driver's node, like cluster/gpu.yaml's head) and two worker
    nodes with 1 CPU each, every node a separate raylet process with its own decode cache."""
    import ray
    from ray.cluster_utils import Cluster

    base = tmp_path_factory.mktemp("cluster")
    ray_tmp = _ray_tmpdir()
    c = None
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", str(ray_tmp))
        try:
            c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
            c.node_count = 0

            def add_worker():
                c.node_count += 1
                node = c.add_node(num_cpus=1, env_vars={
                    "INAT_TUNE_CACHE": str(base / f"cache-node{c.node_count}"), "OMP_NUM_THREADS": "1"})
                c.wait_for_nodes()
                return node

            c.add_worker = add_worker
            add_worker()
            add_worker()
            yield c
        finally:
            ray.shutdown()
            if c is not None:
                c.shutdown()
            kill_processes_mentioning(str(ray_tmp))
            shutil.rmtree(ray_tmp, ignore_errors=True)


def _workers_alive(cluster, n: int = 2) -> None:
    """Bring the cluster back to ``n`` live worker nodes (a previous test may have killed one)."""
    while len(cluster.worker_nodes) < n:
        cluster.add_worker()


def _node_ids(rows) -> set[str]:
    return {r["node_id"] for r in rows}


# ---------------------------------------------------------------------------------------------
# 1. Multi-node sweep


def test_sweep_spreads_trials_over_the_nodes_of_a_cluster(cluster, data, tmp_path):
    import ray

    from inat_tune.tune.runner import SweepOptions, run_sweep
    from inat_tune.tune.space import load_space

    _workers_alive(cluster)
    space = write_space(tmp_path / "space.yaml", epochs=3, lrs=[1e-3, 3e-3])
    opts = SweepOptions(space_path=str(space), data_dir=str(data), name="multi",
                        storage=str(tmp_path / "results"), num_samples=2, use_wandb=False,
                        address=cluster.address)
    try:
        grid = run_sweep(opts, load_space(space))
        workers = {n.node_id for n in cluster.worker_nodes}
    finally:
        ray.shutdown()
    assert len(grid) == 2 and not grid.errors
    trials = trial_dirs(Path(opts.experiment_path))
    rows = {t: results(p) for t, p in trials.items()}
    assert all(len(r) == 3 for r in rows.values()), rows
    used = set().union(*(_node_ids(r) for r in rows.values()))
    # two 1-CPU nodes and two 1-CPU trials at once: one trial per node (the head has no CPU)
    assert len(used) == 2 and used <= workers, (used, workers)
    for r in rows.values():
        assert len(_node_ids(r)) == 1  # a trial stays on its node
        assert {x["node_ip"] for x in r} and all(x["hostname"] for x in r)


# ---------------------------------------------------------------------------------------------
# 2. A worker node dies mid-sweep


def test_trials_of_a_killed_node_continue_on_another_from_their_checkpoint(cluster, data, tmp_path):
    import ray

    from inat_tune.tune.runner import SweepOptions, run_sweep
    from inat_tune.tune.space import load_space

    _workers_alive(cluster)
    space = write_space(tmp_path / "space.yaml", epochs=[SHORT, LONG], method="grid")
    opts = SweepOptions(space_path=str(space), data_dir=str(data), name="nodekill",
                        storage=str(tmp_path / "results"), num_samples=1, use_wandb=False,
                        address=cluster.address, max_failures=2)
    exp = Path(opts.experiment_path)
    out: dict = {}

    def sweep():
        try:
            out["grid"] = run_sweep(opts, load_space(space))
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            out["error"] = e

    thread = threading.Thread(target=sweep, daemon=True)
    thread.start()
    try:
        def ready():
            """(finished trials, the long trial) once the short one finished and the long one
            has a checkpoint and is still running."""
            if "error" in out or "grid" in out:
                raise AssertionError(f"sweep ended before the fault: {out}")
            trials = trial_dirs(exp)
            done = {t: p for t, p in trials.items() if is_finished(p)}
            running = [p for t, p in trials.items() if t not in done and len(results(p)) >= 2]
            return (done, running[0]) if done and running else None

        done, victim_trial = wait_for(ready, 300, "one finished trial and one running on a node")
        before = {t: (p / "result.json").read_bytes() for t, p in done.items()}
        rows = results(victim_trial)
        victim_id = rows[-1]["node_id"]
        victim = next(n for n in cluster.worker_nodes if n.node_id == victim_id)
        t_kill = time.monotonic()
        cluster.remove_node(victim, allow_graceful=False)  # SIGKILL: raylet + its workers
        killed_at = len(rows)

        def retried():
            new = [r for r in results(victim_trial) if r["node_id"] != victim_id]
            return new[0] if new else None

        first_new = wait_for(retried, 300, "the trial of the killed node to report again")
        recovery_s = time.monotonic() - t_kill
        thread.join(timeout=600)
        assert not thread.is_alive(), "sweep did not finish"
    finally:
        ray.shutdown()
        if thread.is_alive():
            thread.join(timeout=60)
    assert "error" not in out, out.get("error")
    grid = out["grid"]
    assert len(grid) == 2 and not grid.errors
    assert set(statuses(exp).values()) == {"TERMINATED"}
    # finished trials are untouched
    for t, text in before.items():
        assert (trial_dirs(exp)[t] / "result.json").read_bytes() == text
    # the killed trial continued from a checkpoint on another node
    rows = results(victim_trial)
    epochs = [r["epoch"] for r in rows]
    old = [r for r in rows if r["node_id"] == victim_id]
    new = [r for r in rows if r["node_id"] != victim_id]
    assert new[0] == first_new
    assert 1 < new[0]["epoch"] <= old[-1]["epoch"] + 1, epochs
    assert [r["epoch"] for r in new] == list(range(new[0]["epoch"], LONG + 1)), epochs
    assert [r["epoch"] for r in old] == list(range(1, len(old) + 1)), epochs
    assert len(_node_ids(new)) == 1 and victim_id not in _node_ids(new)
    print(f"\nnode kill: trial {victim_trial.name} had reported {killed_at} epochs "
          f"({len(old)} in all from the killed node); retried from epoch {new[0]['epoch'] - 1}'s "
          f"checkpoint on another node; first new result {recovery_s:.1f} s after the kill")
