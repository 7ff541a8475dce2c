"""The README's cluster flow (``ray up cluster/gpu.yaml``, then ``ray job submit ... inat-tune
sweep --gpus-per-trial 0.25``), rehearsed on this machine with Ray's fake autoscaling cluster.

The head is ``RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...`` with the
autoscaling config built from cluster/gpu.yaml's own ``available_node_types`` (resources,
min/max workers, the head's 0 CPUs; the idle timeout shortened), written where ``ray up`` writes
it, ``$HOME/ray_bootstrap_config.yaml`` (HOME is a temporary folder for the head and everything
it starts). Its autoscaler is Ray's own (v1, the default), with the fake node provider
(``FakeMultiNodeProvider``, in tests/rehearsal_provider.py with a temp folder per node): a
"launched" node is a raylet process on this machine advertising the node type's resources (a
fake GPU node has no GPU: the trials run on the CPU).

Nothing here runs ``ray stop``: the head gets its own RAY_TMPDIR, ports and HOME, and exactly
the processes that name that RAY_TMPDIR are killed at the end (helpers_cluster).

Ray's ``AutoscalingCluster`` is not used: it begins with ``ray stop --force`` (every Ray of the
user on the machine) and, in Ray 2.60's wheel, reads a defaults file (fake_multi_node/example.yaml)
that the wheel does not ship; the provider is loaded as an "external" one instead.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from helpers_cluster import (REPO, VENV_BIN, child_env, free_port, kill_group, kill_processes_mentioning,
                             results, start, statuses, tail, trial_dirs, wait_for, write_space)

FAKE_PROVIDER = "rehearsal_provider.OwnDiskFakeProvider"  # Ray's fake provider, a temp folder per node
FAKE_HEAD_TYPE = "ray.head.default"  # the type name the fake provider gives its head


def fake_autoscaling_config(cluster_yaml: Path, gcs_address: str, idle_timeout_minutes: float = 0.25
                            ) -> dict:
    """The autoscaling config of a local fake cluster with ``cluster_yaml``'s node types: the
    same names, resources and min/max workers, the same cluster-wide max_workers and
    upscaling_speed; no node_config, no commands (nothing to install on a fake node)."""
    src = yaml.safe_load(cluster_yaml.read_text())
    types = {}
    for name, t in src["available_node_types"].items():
        name = FAKE_HEAD_TYPE if name == src["head_node_type"] else name
        types[name] = {"resources": dict(t["resources"]), "min_workers": t.get("min_workers", 0),
                       "max_workers": t.get("max_workers", 0), "node_config": {}}
    return {
        "cluster_name": f"{src['cluster_name']}-rehearsal",
        "max_workers": src["max_workers"],
        "upscaling_speed": src.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": idle_timeout_minutes,
        # use_node_id_as_ip: the nodes share one ip; the autoscaler tells them apart by node id
        "provider": {"type": "external", "module": FAKE_PROVIDER, "gcs_address": gcs_address,
                     "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "available_node_types": types,
        "head_node_type": FAKE_HEAD_TYPE,
        "docker": {}, "auth": {"ssh_user": "ubuntu"}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


class FakeCluster:
    """A fake autoscaling Ray cluster of its own (RAY_TMPDIR, HOME, ports); ``stop()`` kills
    exactly its processes."""

    def __init__(self, cluster_yaml: Path, workdir: Path) -> None:
        import ray._private.services as services

        self.tmp = Path(tempfile.mkdtemp(prefix="rr", dir="/tmp"))  # short: socket paths
        self.home = self.tmp / "home"
        self.home.mkdir()
        self.port, self.dash = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.dash}"
        ip = services.get_node_ip_address()
        self.gcs = f"{ip}:{self.port}"
        self.config = fake_autoscaling_config(cluster_yaml, self.gcs)
        self.config_path = self.home / "ray_bootstrap_config.yaml"  # where `ray up` puts it
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        head = self.config["available_node_types"][FAKE_HEAD_TYPE]["resources"]
        self.env = child_env(self.tmp, HOME=str(self.home), RAY_FAKE_CLUSTER="1",
                             PYTHONPATH=str(Path(__file__).parent),  # the monitor imports FAKE_PROVIDER
                             AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_AUTH_MODE="token",
                             RAY_AUTH_TOKEN=secrets.token_hex(32))
        self.log = workdir / "head.log"
        self.proc = start([str(VENV_BIN / "ray"), "start", "--head", f"--port={self.port}",
                           f"--num-cpus={head.get('CPU', 0)}", f"--num-gpus={head.get('GPU', 0)}",
                           f"--autoscaling-config={self.config_path}",
                           "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dash}",
                           "--include-dashboard=true", f"--dashboard-agent-listen-port={free_port()}",
                           f"--ray-client-server-port={free_port()}", "--disable-usage-stats", "--block"],
                          self.log, self.env)

    def wait_started(self) -> None:
        wait_for(lambda: "Ray runtime started" in self.log.read_text(), 240, "ray start --head",
                 alive=self.proc, log=self.log)

    def ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(VENV_BIN / "ray"), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def monitor_log(self) -> str:
        logs = sorted(self.tmp.glob("ray/session_*/logs/monitor.*"))  # the head's RAY_TMPDIR/ray/session_*
        return "\n".join(p.read_text(errors="replace") for p in logs if p.suffix in (".log", ".out", ".err"))

    def stop(self) -> None:
        kill_group(self.proc)  # ray start --block leads the group: GCS, raylet, dashboard, monitor
        kill_processes_mentioning(str(self.tmp))  # the fake nodes, the job's driver, trials
        shutil.rmtree(self.tmp, ignore_errors=True)


def _submit(cluster: FakeCluster, workdir: Path, cmd: list[str]) -> str:
    def submitted():
        sid = f"inat-tune-{time.monotonic_ns()}"
        r = cluster.ray("job", "submit", "--address", cluster.url, "--working-dir", str(workdir),
                        "--submission-id", sid, "--no-wait", "--", *cmd)
        if r.returncode == 0:
            return sid
        assert "No available agent" in r.stdout + r.stderr or "Connection" in r.stdout + r.stderr, \
            r.stdout + r.stderr  # the job server is still starting: try again
        return None
    return wait_for(submitted, 180, "the job server to accept the job", interval=3, alive=cluster.proc)


def _job_state(cluster: FakeCluster, sid: str) -> str | None:
    r = cluster.ray("job", "status", "--address", cluster.url, sid)
    text = (r.stdout + r.stderr).lower()
    for state in ("succeeded", "failed", "stopped"):
        if f"' {state}" in text or f"' was {state}" in text:
            return state.upper()
    return None


def test_fake_config_keeps_the_node_types_of_gpu_yaml():
    config = fake_autoscaling_config(REPO / "cluster" / "gpu.yaml", "127.0.0.1:1")
    src = yaml.safe_load((REPO / "cluster" / "gpu.yaml").read_text())
    types = config["available_node_types"]
    assert types[FAKE_HEAD_TYPE]["resources"] == {"CPU": 0, "GPU": 0}
    for name in ("gpu_a10g", "gpu_l4"):
        for key in ("resources", "min_workers", "max_workers"):
            assert types[name][key] == src["available_node_types"][name][key]
    assert config["max_workers"] == src["max_workers"]


# cluster file -> its GPU node types, as the sweep names them before one is up
CLUSTERS = {
    "gpu.yaml": ("gpu_a10g (1 GPU, 4 CPU) or gpu_l4 (1 GPU, 4 CPU)", ("gpu_a10g", "gpu_l4")),
    "gcp.yaml": ("gpu_l4 (1 GPU, 8 CPU) or gpu_t4 (1 GPU, 8 CPU)", ("gpu_l4", "gpu_t4")),
}


@pytest.mark.slow
@pytest.mark.parametrize("cluster_file", list(CLUSTERS))
def test_rehearsal_job_submit_starts_a_gpu_worker_from_zero(cluster_file, synth_data, tmp_path):
    """`ray job submit -- inat-tune sweep --address auto --gpus-per-trial 0.25` on a fake
    cluster/gpu.yaml (or gcp.yaml): no GPU node is up at submission; the sweep says which node
    type the autoscaler will start instead of refusing; one fake GPU worker starts; its four
    0.25-GPU slots take the four trials (none on the head); the job SUCCEEDS; the idle worker
    goes away."""
    named, gpu_types = CLUSTERS[cluster_file]
    cluster = FakeCluster(REPO / "cluster" / cluster_file, tmp_path)
    t0 = time.monotonic()
    logs = ""
    try:
        cluster.wait_started()
        workdir = tmp_path / "job"  # a small working dir: only the space file is uploaded
        workdir.mkdir()
        write_space(workdir / "space.yaml", epochs=2, lrs=[1e-3, 2e-3, 3e-3, 4e-3], method="grid")
        storage = tmp_path / "results"
        sweep = ["inat-tune", "sweep", "space.yaml", "--data", str(synth_data), "--no-wandb",
                 "--storage", str(storage), "--name", "R", "--address", "auto",
                 "--gpus-per-trial", "0.25", "--cpus-per-trial", "1"]
        status0 = cluster.ray("status", "--address", cluster.gcs).stdout
        sid = _submit(cluster, workdir, sweep)
        try:
            state = wait_for(lambda: _job_state(cluster, sid), 600, f"job {sid}", interval=3,
                             alive=cluster.proc)
        finally:
            logs = cluster.ray("job", "logs", "--address", cluster.url, sid).stdout
        t_job = time.monotonic() - t0
        assert state == "SUCCEEDED", logs[-5000:] + "\n--- monitor:\n" + cluster.monitor_log()[-3000:]
        # the idle GPU worker is terminated (idle timeout 15 s here)
        wait_for(lambda: "(idle)" in cluster.monitor_log(), 180, "the idle worker to be terminated",
                 interval=5, alive=cluster.proc)
        t_idle = time.monotonic() - t0
        monitor = cluster.monitor_log()
    finally:
        cluster.stop()
    print(f"{cluster_file}: job done after {t_job:.0f} s, idle worker gone after {t_idle:.0f} s")
    active0 = status0.split("Pending:")[0]
    assert not any(t in active0 for t in gpu_types), status0  # no GPU worker at the start
    assert f"no GPU node is up; the autoscaler can start {named}: trials will wait for it" in logs, \
        logs[-5000:]
    assert "sweep R: 4 trials (0 errored)" in logs, logs[-5000:]
    trials = trial_dirs(storage / "R")
    assert len(trials) == 4 and set(statuses(storage / "R").values()) == {"TERMINATED"}
    nodes = {r["node_id"] for t in trials.values() for r in results(t)}
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID
    assert FAKE_HEAD_NODE_ID not in nodes  # no trial on the head (it has 0 CPUs)
    assert len(nodes) == 1, nodes  # four 0.25-GPU trials share one worker's GPU
    assert {r["device"] for t in trials.values() for r in results(t)} == {"cpu"}  # a fake GPU
    assert "new nodes for launch" in monitor and any(t in monitor for t in gpu_types), monitor[-3000:]
    assert "(idle)" in monitor, monitor[-3000:]


def _node_dirs(cluster: FakeCluster) -> list[Path]:
    """The temp folders of the fake worker nodes started so far (rehearsal_provider)."""
    return sorted(p for p in cluster.tmp.glob("node*") if p.is_dir())


@pytest.mark.slow
@pytest.mark.parametrize("cluster_file", list(CLUSTERS))
def test_rehearsal_a_worker_lost_mid_sweep_is_replaced_and_trials_continue(cluster_file, synth_data,
                                                                           tmp_path):
    """The same submitted sweep; once every trial has reported two epochs its GPU worker is
    killed (all of the fake node's processes: a lost spot instance). The autoscaler starts a
    replacement worker of the same kind, each trial continues there from its last checkpoint
    (no epoch is trained from scratch again), and the job SUCCEEDS with all four trials
    complete."""
    epochs = 16
    cluster = FakeCluster(REPO / "cluster" / cluster_file, tmp_path)
    storage = tmp_path / "results"
    logs = ""
    try:
        cluster.wait_started()
        workdir = tmp_path / "job"
        workdir.mkdir()
        write_space(workdir / "space.yaml", epochs=epochs, lrs=[1e-3, 2e-3, 3e-3, 4e-3], method="grid")
        sweep = ["inat-tune", "sweep", "space.yaml", "--data", str(synth_data), "--no-wandb",
                 "--storage", str(storage), "--name", "L", "--address", "auto",
                 "--gpus-per-trial", "0.25", "--cpus-per-trial", "1", "--max-failures", "3"]
        sid = _submit(cluster, workdir, sweep)

        def two_epochs_each():
            trials = trial_dirs(storage / "L")
            return len(trials) == 4 and all(len(results(t)) >= 2 for t in trials.values())

        wait_for(two_epochs_each, 600, "every trial to report two epochs", interval=1, alive=cluster.proc)
        (first,) = _node_dirs(cluster)
        lost = {r["node_id"] for t in trial_dirs(storage / "L").values() for r in results(t)}
        killed = kill_processes_mentioning(str(first))  # raylet, agents, the trials' workers
        assert killed
        try:
            state = wait_for(lambda: _job_state(cluster, sid), 900, f"job {sid}", interval=3,
                             alive=cluster.proc)
        finally:
            logs = cluster.ray("job", "logs", "--address", cluster.url, sid).stdout
        monitor = cluster.monitor_log()
        nodes_started = _node_dirs(cluster)
    finally:
        cluster.stop()
    assert state == "SUCCEEDED", logs[-5000:] + "\n--- monitor:\n" + monitor[-3000:]
    assert len(nodes_started) >= 2, monitor[-3000:]  # a replacement worker was launched
    trials = trial_dirs(storage / "L")
    assert len(trials) == 4 and set(statuses(storage / "L").values()) == {"TERMINATED"}
    continued = 0
    for t, p in trials.items():
        rows = results(p)
        assert sorted({r["epoch"] for r in rows}) == list(range(1, epochs + 1)), (t, [r["epoch"] for r in rows])
        after = [r for r in rows if r["node_id"] not in lost]
        assert after, f"trial {t} never ran on the replacement node"
        # continued from its checkpoint: the first epoch on the new node follows one trained
        # before the loss, and the rows are each epoch once or, for the one the loss cut, twice
        assert after[0]["epoch"] > 1, (t, [(r["epoch"], r["node_id"][:6]) for r in rows])
        assert len(rows) <= epochs + 1
        continued += 1
    assert continued == 4
    assert "sweep L: 4 trials (0 errored)" in logs, logs[-5000:]
