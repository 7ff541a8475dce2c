"""Scale out and survive faults, shown on this machine with real Ray processes.

1. A sweep runs on a multi-node Ray cluster (``ray.cluster_utils.Cluster``: a head with no CPU
   and two 1-CPU worker nodes, each its own raylet process) and its trials land on both nodes.
2. A worker node is killed mid-sweep (its raylet and workers SIGKILLed): its trial is retried on
   the other node from its last checkpoint; finished trials are not touched.
3. The driver (``inat-tune sweep``) is SIGKILLed mid-sweep, on the cluster and on one machine
   (its own local Ray dies with it); ``inat-tune sweep --resume`` finishes the experiment. A
   state file cut short by such a kill makes --resume refuse, not start the sweep over.
4. ``ray job submit`` to a local head with the dashboard / job server runs a sweep to the end.
5. Two sweeps with different names share one --storage and one decode cache at the same time
   (and their storage checks no longer share a probe file).

All nodes of a local cluster share this machine's filesystem, so a local ``--storage`` folder
plays the role of the shared storage (S3, NFS) that a real multi-machine cluster needs
(docs/cluster.md, "Why S3"). Every Ray instance started here gets its own RAY_TMPDIR, and
everything a test starts is killed by pid in ``finally``: never ``ray stop``, which would also
stop every other Ray instance on the machine.

The faults are injected into a grid of two trials of different lengths (SHORT and LONG epochs,
one CPU each, both running at once): the short one has finished, and the long one is running
with checkpoints, when the fault hits.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from helpers_cluster import (VENV_BIN, child_env, free_port, is_finished, kill_group,
                             kill_processes_mentioning, processes_mentioning, results, snapshot,
                             start, statuses, sweep_cmd, tail, trial_dirs, wait_for, write_space)

SHORT, LONG = 3, 120  # epochs of the trial that finishes before the fault / is hit by it


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from inat_tune.data.synth import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("faults") / "ds", per_class=12, val_per_class=3,
                          image_size=32)


def _ray_tmpdir() -> Path:
    # short: Ray's Unix sockets live below it (at most 107 characters)
    return Path(tempfile.mkdtemp(prefix="ift", dir="/tmp"))


def _node_ids(rows) -> set[str]:
    return {r["node_id"] for r in rows}


def _fault_space(tmp_path: Path) -> Path:
    return write_space(tmp_path / "space.yaml", epochs=[SHORT, LONG], method="grid")


# ---------------------------------------------------------------------------------------------
# On a local multi-node cluster (one cluster for the three tests of the class)


@pytest.fixture(scope="class")
def cluster(tmp_path_factory):
    """A head with 0 CPUs (where the driver's node is, like cluster/gpu.yaml's head) and two
    worker nodes with 1 CPU each; every node is a separate raylet process with its own decode
    cache folder, as on separate machines."""
    import ray
    from ray.cluster_utils import Cluster

    base = tmp_path_factory.mktemp("cluster")
    ray_tmp = _ray_tmpdir()
    c = None
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", str(ray_tmp))
        try:
            c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
            added = []

            def add_worker():
                node = c.add_node(num_cpus=1, env_vars={
                    "INAT_TUNE_CACHE": str(base / f"cache-node{len(added) + 1}"), "OMP_NUM_THREADS": "1"})
                added.append(node)
                c.wait_for_nodes()
                return node

            def ensure_workers(n: int = 2):
                """Back to ``n`` live worker nodes (a previous test may have killed one)."""
                while len(c.worker_nodes) < n:
                    add_worker()

            c.ensure_workers = ensure_workers
            c.ray_tmp = ray_tmp
            ensure_workers()
            yield c
        finally:
            ray.shutdown()
            if c is not None:
                c.shutdown()
            kill_processes_mentioning(str(ray_tmp))
            shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
class TestOnALocalCluster:

    def test_sweep_spreads_its_trials_over_the_nodes(self, cluster, data, tmp_path):
        import ray

        from inat_tune.tune.runner import SweepOptions, run_sweep
        from inat_tune.tune.space import load_space

        cluster.ensure_workers()
        space = write_space(tmp_path / "space.yaml", epochs=3, lrs=[1e-3, 3e-3])
        # A new process per trial: with reused processes a short trial's process can take the
        # next trial before the second node's worker has started (what reuse is for), and the
        # placement would depend on that race.
        opts = SweepOptions(space_path=str(space), data_dir=str(data), name="multi",
                            storage=str(tmp_path / "results"), num_samples=2, use_wandb=False,
                            address=cluster.address, fresh_process=True)
        workers = {n.node_id for n in cluster.worker_nodes}
        try:
            grid = run_sweep(opts, load_space(space))
        finally:
            ray.shutdown()
        assert len(grid) == 2 and not grid.errors
        rows = {t: results(p) for t, p in trial_dirs(Path(opts.experiment_path)).items()}
        assert len(rows) == 2 and all(len(r) == 3 for r in rows.values()), rows
        used = set().union(*(_node_ids(r) for r in rows.values()))
        # two 1-CPU trials at once on two 1-CPU nodes (the head has no CPU): one per node
        assert len(used) == 2 and used <= workers, (used, workers)
        for r in rows.values():
            assert len(_node_ids(r)) == 1  # a trial stays on its node
            assert all(x["node_ip"] and x["hostname"] for x in r)

    def test_trials_of_a_killed_node_continue_elsewhere_from_their_checkpoint(self, cluster, data,
                                                                               tmp_path):
        import ray

        from inat_tune.tune.runner import SweepOptions, run_sweep
        from inat_tune.tune.space import load_space

        cluster.ensure_workers()
        space = _fault_space(tmp_path)
        opts = SweepOptions(space_path=str(space), data_dir=str(data), name="nodekill",
                            storage=str(tmp_path / "results"), num_samples=1, use_wandb=False,
                            address=cluster.address, max_failures=2)
        exp = Path(opts.experiment_path)
        out: dict = {}

        def sweep():
            try:
                out["grid"] = run_sweep(opts, load_space(space))
            except BaseException as e:  # noqa: BLE001 - reported below
                out["error"] = e

        thread = threading.Thread(target=sweep, daemon=True)
        thread.start()
        try:
            def ready():
                """(finished trials, the long trial) once the short trial has finished and the
                long one has checkpoints and is still running."""
                if out:
                    raise AssertionError(f"the sweep ended before the fault: {out}")
                trials = trial_dirs(exp)
                done = {t: p for t, p in trials.items() if is_finished(p)}
                running = [p for t, p in trials.items() if t not in done and len(results(p)) >= 2]
                return (done, running[0]) if done and running else None

            done, victim_trial = wait_for(ready, 300, "one finished trial and one running")
            before = {t: (p / "result.json").read_bytes() for t, p in done.items()}
            rows = results(victim_trial)
            victim_id = rows[-1]["node_id"]
            victim = next(n for n in cluster.worker_nodes if n.node_id == victim_id)
            t_kill = time.monotonic()
            cluster.remove_node(victim, allow_graceful=False)  # SIGKILL: raylet + its workers

            def retried():
                new = [r for r in results(victim_trial) if r["node_id"] != victim_id]
                return new[0] if new else None

            first_new = wait_for(retried, 300, "the killed node's trial to report again")
            recovery_s = time.monotonic() - t_kill
            thread.join(timeout=600)
            assert not thread.is_alive(), "the sweep did not finish"
        finally:
            ray.shutdown()
            thread.join(timeout=60)
        assert "error" not in out, out.get("error")
        assert len(out["grid"]) == 2 and not out["grid"].errors
        assert set(statuses(exp).values()) == {"TERMINATED"}
        for t, text in before.items():  # finished trials are untouched
            assert (trial_dirs(exp)[t] / "result.json").read_bytes() == text
        rows = results(victim_trial)
        old = [r for r in rows if r["node_id"] == victim_id]
        new = [r for r in rows if r["node_id"] != victim_id]
        epochs = [r["epoch"] for r in rows]
        assert new[0] == first_new and rows[:len(old)] == old, epochs
        assert [r["epoch"] for r in old] == list(range(1, len(old) + 1)), epochs
        # continued from a checkpoint (not from scratch), at most one epoch lost, to the end
        assert 1 < new[0]["epoch"] <= old[-1]["epoch"] + 1, epochs
        assert [r["epoch"] for r in new] == list(range(new[0]["epoch"], LONG + 1)), epochs
        assert _node_ids(new) <= {n.node_id for n in cluster.worker_nodes}
        # time_since_restore: from the retried trial's start on the new node to that result
        setup_s = new[0]["time_since_restore"]
        print(f"\n[node kill] {victim_trial.name}: {len(old)} epochs on the killed node, resumed at "
              f"epoch {new[0]['epoch']} on the other node; first new result {recovery_s:.1f} s "
              f"after remove_node ({recovery_s - setup_s:.1f} s until the retry started there, "
              f"{setup_s:.1f} s for it to load its data and checkpoint and run an epoch)")

    def test_killed_driver_resumes_on_the_cluster(self, cluster, data, tmp_path):
        cluster.ensure_workers()
        finished, continued = _kill_driver_and_resume(tmp_path, data, cluster.ray_tmp, address=cluster.address,
                                                      nodes={n.node_id for n in cluster.worker_nodes})
        assert finished >= 1 and continued >= 1


# ---------------------------------------------------------------------------------------------
# The driver is killed mid-sweep


@pytest.mark.slow
def test_killed_driver_and_its_local_ray_resume_on_a_fresh_local_ray(data, tmp_path):
    ray_tmp = _ray_tmpdir()
    try:
        finished, continued = _kill_driver_and_resume(tmp_path, data, ray_tmp)
        assert finished >= 1 and continued >= 1
    finally:
        kill_processes_mentioning(str(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _pause_when_consistent(proc, exp: Path, log: Path, timeout: float = 300) -> tuple[dict, int]:
    """SIGSTOP the driver's process group at a moment when one trial is finished in the state
    the driver saved, another is running with a checkpoint, every checkpoint that state names is
    on disk, every state file is complete and every trial's result.json has the epochs the state
    counts; returns (that state, SIGSTOPs undone).

    Windows of a few ms per checkpoint are left out this way. Tune deletes a trial's previous
    latest checkpoint (if it is not its best) when it records a new one and saves the state just
    after (runner: CheckpointConfig(num_to_keep=1)): a kill in between makes --resume look for a
    deleted checkpoint. Tune writes its state and the trials' result.json in a staging folder
    of the driver and then copies them to --storage, file by file and not atomically: a kill
    during the copy leaves a state file cut short, which --resume refuses
    (runner.check_saved_state), or a result.json a line or two behind the state (those epochs
    then have no row after the resume). With real epochs (minutes) a kill almost never lands in
    one of these; with the ~50 ms epochs here it would, hence the pause and check."""
    t_end = time.monotonic() + timeout
    retries = 0
    while True:
        def candidate():
            snap, trials = snapshot(exp), trial_dirs(exp)
            if len(trials) == 2 and all(is_finished(p) for p in trials.values()):
                raise AssertionError(f"both trials finished before the fault (LONG={LONG} too small?)")
            done = [t for t, s in snap.items() if s["status"] == "TERMINATED"]
            running = [t for t, s in snap.items() if s["status"] == "RUNNING" and s["epoch"] >= 2
                       and t in trials and not is_finished(trials[t])]
            return (done, running) if done and running else None

        wait_for(candidate, t_end - time.monotonic(), "one finished trial and one running",
                 alive=proc, log=log, interval=0.1)
        os.killpg(proc.pid, signal.SIGSTOP)
        snap, trials = snapshot(exp), trial_dirs(exp)
        if (candidate() and _readable(exp)
                and all((trials[t] / c).is_dir() for t, s in snap.items() for c in s["kept"])
                and all(len(results(trials[t])) >= s["epoch"] for t, s in snap.items())):
            return snap, retries
        os.killpg(proc.pid, signal.SIGCONT)
        retries += 1
        time.sleep(0.05)


def _readable(exp: Path) -> bool:
    """Every state file that --resume reads is complete (not being written right now)."""
    from inat_tune.tune.runner import SweepError, check_saved_state

    try:
        check_saved_state(str(exp))
        return True
    except SweepError:
        return False


def _kill_driver_and_resume(tmp_path: Path, data: Path, ray_tmp: Path, *, address: str | None = None,
                            nodes: set[str] | None = None) -> tuple[int, int]:
    """Kill the driver mid-sweep, --resume, check everything; returns (finished, continued)."""
    space = _fault_space(tmp_path)
    storage, name = tmp_path / "results", "driverkill"
    exp = storage / name
    more = ["--address", address] if address else []
    env = child_env(ray_tmp)
    log1, log2 = tmp_path / "driver.log", tmp_path / "resume.log"
    driver = start(sweep_cmd(space, data, storage, name, *more), log1, env)
    resumed = None
    try:
        snap, retries = _pause_when_consistent(driver, exp, log1)
        kill_group(driver, signal.SIGKILL)  # the driver, and its local Ray when it has one
        t_kill = time.monotonic()
        assert driver.returncode == -signal.SIGKILL
        if address is None:  # the driver's own Ray instance died with it
            wait_for(lambda: not processes_mentioning(str(ray_tmp)), 60, "the local Ray to exit")
        trials = trial_dirs(exp)
        finished = {t: (trials[t] / "result.json").read_bytes()
                    for t, s in snap.items() if s["status"] == "TERMINATED"}
        running = {t: s for t, s in snap.items() if s["status"] == "RUNNING"}
        # the trial processes that ran before the kill (on a cluster, a trial may still log the
        # result it was computing after its driver died, until Ray ends it)
        old_pids = {t: {r["pid"] for r in results(trials[t])} for t in running}

        resumed = start(sweep_cmd(space, data, storage, name, "--resume", *more), log2, env)
        assert resumed.wait(timeout=480) == 0, tail(log2)
        resume_s = time.monotonic() - t_kill
    finally:
        kill_group(driver)
        kill_group(resumed)
    text = log2.read_text()
    assert f"sweep {name}: 2 trials (0 errored)" in text, tail(log2)
    assert "Could not recover" not in text and "Error handling checkpoint" not in text, tail(log2)
    assert statuses(exp) == {t: "TERMINATED" for t in trials} and len(trials) == 2
    for t, before in finished.items():  # finished trials: not run again, results unchanged
        assert (trials[t] / "result.json").read_bytes() == before
        assert f"[start] {t}" not in text
    for t, s in running.items():  # continued from the checkpoint the saved state names
        rows = results(trials[t])
        old = [r for r in rows if r["pid"] in old_pids[t]]
        new = [r for r in rows if r["pid"] not in old_pids[t]]
        assert [r["epoch"] for r in old] == list(range(1, len(old) + 1))
        assert s["epoch"] >= 2 and len(old) >= s["epoch"]
        assert [r["epoch"] for r in new] == list(range(s["epoch"] + 1, LONG + 1)), \
            (s, [r["epoch"] for r in rows])
        if nodes is not None:
            assert _node_ids(new) <= nodes
        print(f"\n[driver kill{' on a cluster' if address else ''}] {t}: {len(old)} epochs "
              f"reported before SIGKILL, the saved state's checkpoint was epoch {s['epoch']}, "
              f"--resume continued at epoch {s['epoch'] + 1}; resumed sweep done {resume_s:.0f} s "
              f"after the kill ({retries} pause(s) undone)")
    return len(finished), len(running)


def test_resume_refuses_a_state_file_cut_short(tmp_path):
    """A driver killed while Tune copies its state leaves a file cut short; Tune.restore would
    then quietly start a new, empty experiment in the same folder. --resume refuses instead."""
    import ray.cloudpickle as cloudpickle

    from inat_tune.tune.runner import SweepError, check_saved_state

    stamp = "2026-01-01_00-00-00"
    (tmp_path / "tuner.pkl").write_bytes(cloudpickle.dumps({"param_space": {}}))
    (tmp_path / f"experiment_state-{stamp}.json").write_text(json.dumps({"trial_data": []}))
    searcher = tmp_path / f"basic-variant-state-{stamp}.json"
    searcher.write_bytes(cloudpickle.dumps({"counter": 2}))
    check_saved_state(str(tmp_path))  # complete: fine
    searcher.write_bytes(b"")  # what a SIGKILL during the copy left in one run here
    with pytest.raises(SweepError, match=f"basic-variant-state-{stamp}.json .*cannot be read"):
        check_saved_state(str(tmp_path))
    searcher.write_bytes(cloudpickle.dumps({"counter": 2}))
    (tmp_path / f"experiment_state-{stamp}.json").write_text('{"trial_data": [["{')
    with pytest.raises(SweepError, match="experiment_state-"):
        check_saved_state(str(tmp_path))
    # only the newest file of a kind counts (Tune reads that one)
    (tmp_path / "experiment_state-2027-01-01_00-00-00.json").write_text(json.dumps({"trial_data": []}))
    check_saved_state(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# ray job submit against a local head with the job server


def _ray(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "ray"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_ray_job_submit_runs_a_sweep_on_a_local_head(data, tmp_path):
    ray_tmp = _ray_tmpdir()
    # Ray >= 2.5x turns token authentication on for new clusters: give head and client a token
    # of their own (otherwise ~/.ray/auth_token would be read or created).
    env = child_env(ray_tmp, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    dash = free_port()
    url = f"http://127.0.0.1:{dash}"
    # Every fixed default port gets a free one: another Ray on this machine may hold it (the
    # dashboard agent's 52365 especially; its job server then answers "No available agent").
    head_log = tmp_path / "head.log"
    head = start([str(VENV_BIN / "ray"), "start", "--head", f"--port={free_port()}", "--num-cpus=2",
                  "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
                  f"--dashboard-agent-listen-port={free_port()}",
                  f"--ray-client-server-port={free_port()}", "--disable-usage-stats", "--block"],
                 head_log, env)
    try:
        wait_for(lambda: "Ray runtime started" in head_log.read_text(), 240, "ray start --head",
                 alive=head, log=head_log)
        workdir = tmp_path / "job"  # a small working dir: only the space file is uploaded
        workdir.mkdir()
        write_space(workdir / "space.yaml", epochs=2, lrs=[1e-3, 3e-3])
        storage = tmp_path / "results"
        sweep = ["inat-tune", "sweep", "space.yaml", "--data", str(data), "--num-samples", "2",
                 "--no-wandb", "--storage", str(storage), "--name", "J", "--address", "auto"]

        def submitted():
            sid = f"inat-tune-{time.monotonic_ns()}"
            r = _ray("job", "submit", "--address", url, "--working-dir", str(workdir),
                     "--submission-id", sid, "--no-wait", "--", *sweep, env=env)
            if r.returncode == 0:
                return sid
            assert "No available agent" in r.stdout + r.stderr or "Connection" in r.stdout + r.stderr, \
                r.stdout + r.stderr  # the job server is still starting: try again
            return None

        sid = wait_for(submitted, 180, "the job server to accept the job", interval=3, alive=head)

        last: list = []

        def finished():
            r = _ray("job", "status", "--address", url, sid, env=env)
            last[:] = [r.stdout + r.stderr]
            text = (r.stdout + r.stderr).lower()  # "Job 'x' succeeded" / "failed" / "was stopped"
            for state in ("succeeded", "failed", "stopped"):
                if f"' {state}" in text or f"' was {state}" in text:
                    return state.upper()
            return None

        try:
            state = wait_for(finished, 480, f"job {sid}", interval=2, alive=head)
        except AssertionError as e:
            logs = _ray("job", "logs", "--address", url, sid, env=env)
            raise AssertionError(f"{e}\n--- ray job status:\n{last[0][-3000:] if last else ''}\n"
                                 f"--- ray job logs:\n{(logs.stdout + logs.stderr)[-3000:]}") from None
        logs = _ray("job", "logs", "--address", url, sid, env=env).stdout
        assert state == "SUCCEEDED", logs[-5000:]
    finally:
        kill_group(head)  # ray start --block leads the group: GCS, raylet, dashboard, job driver
        kill_processes_mentioning(str(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert "[start]" in logs and "[done]" in logs and "best val_acc" in logs, logs[-5000:]
    assert "sweep J: 2 trials (0 errored)" in logs
    trials = trial_dirs(storage / "J")
    assert len(trials) == 2 and set(statuses(storage / "J").values()) == {"TERMINATED"}


# ---------------------------------------------------------------------------------------------
# Two sweeps at once on one storage and one decode cache


def test_concurrent_storage_checks_do_not_collide(tmp_path):
    """Every sweep probes --storage before Ray starts; with one shared probe name, two sweeps
    starting together could delete each other's probe and fail with "cannot write there"."""
    from inat_tune.tune.runner import check_storage

    errors: list = []

    def probe():
        for _ in range(100):
            try:
                check_storage(str(tmp_path))
            except Exception as e:  # noqa: BLE001 - collected and shown below
                errors.append(e)

    threads = [threading.Thread(target=probe) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_two_sweeps_share_storage_and_decode_cache_without_touching_each_other(data, tmp_path):
    ray_tmp = _ray_tmpdir()  # both local Ray instances in one temp dir, as by default in /tmp/ray
    env = child_env(ray_tmp)
    cache = Path(os.environ["INAT_TUNE_CACHE"])  # this test's own (conftest), empty
    space = write_space(tmp_path / "space.yaml", epochs=2, lrs=[1e-3, 3e-3])
    storage = tmp_path / "results"
    procs = {}
    try:
        for name in ("alpha", "beta"):
            procs[name] = start(sweep_cmd(space, data, storage, name, "--num-samples", "2"),
                                tmp_path / f"{name}.log", env)
        for name, p in procs.items():
            assert p.wait(timeout=480) == 0, tail(tmp_path / f"{name}.log")
    finally:
        for p in procs.values():
            kill_group(p)
        kill_processes_mentioning(str(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert sorted(p.name for p in storage.iterdir()) == ["alpha", "beta"]
    ids = {}
    for name in procs:
        exp = storage / name
        assert f"sweep {name}: 2 trials (0 errored)" in (tmp_path / f"{name}.log").read_text()
        trials = trial_dirs(exp)
        ids[name] = set(trials)
        # exactly its own trials: the folders are the trials its state knows, all finished
        assert statuses(exp) == {t: "TERMINATED" for t in trials} and len(trials) == 2
        for t, p in trials.items():
            assert {r["trial_id"] for r in results(p)} == {t} and len(results(p)) == 2
        assert f'"name": "{name}"' in (exp / "sweep.json").read_text()
    assert not ids["alpha"] & ids["beta"]
    # one decode cache for both sweeps and all their trials, built once, by one of the drivers
    built = [p for p in cache.iterdir() if p.is_dir() and ".rows-" not in p.name]
    assert len(built) == 1, sorted(p.name for p in cache.iterdir())  # no second copy, no *.build-*
    # and one read-only copy of each split's rows (train, validation), shared the same way
    rows = [p for p in cache.iterdir() if p.is_dir() and ".rows-" in p.name]
    assert len(rows) == 2 and all((p / "meta.json").is_file() for p in rows), sorted(p.name for p in rows)
    meta = json.loads((built[0] / "meta.json").read_text())
    assert meta["built_by"] in {p.pid for p in procs.values()}
