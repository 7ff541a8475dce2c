"""Checking a trial's request against what a cluster can become (inat_tune.tune.capacity), the
runner's use of it on a joined cluster, and the progress line while trials wait for a node.
All fast: no Ray is started (the Ray-reading functions are fed fakes)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from inat_tune.tune import capacity
from inat_tune.tune.capacity import NodeType, fits, merge, types_from_autoscaler_config

REPO = Path(__file__).resolve().parent.parent

HEAD = NodeType("head_cpu", {"CPU": 0, "GPU": 0}, up=1)
A10G = NodeType("gpu_a10g", {"CPU": 4, "GPU": 1}, launchable=4)
A10G_UP = NodeType("gpu_a10g", {"CPU": 4, "GPU": 1}, up=1, launchable=3)
CPU8 = NodeType("cpu8", {"CPU": 8}, launchable=2)
BIG = NodeType("gpu_x4", {"CPU": 16, "GPU": 4}, launchable=1)
LAPTOP = NodeType("node 1234", {"CPU": 2}, up=1)


@pytest.mark.parametrize("request_, types, ok, now, pick, says", [
    # gpu.yaml right after `ray up`: head only, GPU workers launchable -> wait for one
    ({"CPU": 1, "GPU": 0.25}, [HEAD, A10G], True, False, "gpu_a10g",
     "no GPU node is up; the autoscaler can start gpu_a10g (1 GPU, 4 CPU): trials will wait for it"),
    # a GPU worker is up: nothing to say
    ({"CPU": 1, "GPU": 0.25}, [HEAD, A10G_UP], True, True, "gpu_a10g", ""),
    ({"CPU": 4, "GPU": 1}, [HEAD, A10G], True, False, "gpu_a10g", "the autoscaler can start gpu_a10g"),
    # too much for every type: refused, naming the largest
    ({"CPU": 5, "GPU": 1}, [HEAD, A10G], False, False, "gpu_a10g",
     "none of the cluster's node types (cfg) can hold it; the largest is gpu_a10g (1 GPU, 4 CPU)"),
    ({"CPU": 1, "GPU": 2}, [HEAD, A10G, CPU8], False, False, "gpu_a10g", "the largest is gpu_a10g"),
    # the smallest type that fits is started; the largest is named when none fits
    ({"CPU": 1, "GPU": 0.5}, [HEAD, BIG, A10G], True, False, "gpu_a10g", "can start gpu_a10g"),
    ({"CPU": 1, "GPU": 2}, [HEAD, BIG, A10G], True, False, "gpu_x4", "can start gpu_x4 (4 GPU, 16 CPU)"),
    # CPU-only trials on a 0-CPU head: a CPU worker must start
    ({"CPU": 1, "GPU": 0}, [HEAD, CPU8], True, False, "cpu8",
     "no node that can hold a trial (1 CPU) is up; the autoscaler can start cpu8 (0 GPU, 8 CPU)"),
    # a fixed cluster (no autoscaler config): only the nodes up now count
    ({"CPU": 1, "GPU": 0.25}, [LAPTOP], False, False, "node 1234",
     "none of the nodes up now (no autoscaler config found"),
    ({"CPU": 1, "GPU": 0}, [LAPTOP], True, True, "node 1234", ""),
    # a type with max_workers 0 can start nothing
    ({"CPU": 1, "GPU": 1}, [HEAD, NodeType("gpu_a10g", {"CPU": 4, "GPU": 1}, launchable=0)],
     False, False, "head_cpu", "the largest is head_cpu (0 GPU, 0 CPU)"),
])
def test_fits(request_, types, ok, now, pick, says):
    src = "cfg" if any(t.launchable for t in types) else ""
    v = fits(request_, types, src)
    assert (v.ok, v.now, v.node_type.name) == (ok, now, pick)
    assert says in v.message if says else v.message == ""
    assert "torch.cuda" not in v.message


def test_fits_with_no_nodes_at_all():
    v = fits({"CPU": 1, "GPU": 0}, [])
    assert not v.ok and v.node_type is None and "no nodes" in v.message


def test_waiting_for_names_the_type():
    assert fits({"CPU": 1, "GPU": 0.25}, [HEAD, A10G]).waiting_for == "a GPU worker (gpu_a10g)"
    assert fits({"CPU": 1}, [HEAD, CPU8]).waiting_for == "a worker (cpu8)"
    assert fits({"CPU": 1, "GPU": 0.25}, [HEAD, A10G_UP]).waiting_for is None


@pytest.mark.parametrize("path, gpu_types", [("cluster/gpu.yaml", {"gpu_a10g", "gpu_l4"}),
                                              ("cluster/gcp.yaml", {"gpu_l4", "gpu_t4"})])
def test_the_cluster_files_can_start_a_quarter_gpu_trial(path, gpu_types):
    config = yaml.safe_load((REPO / path).read_text())
    types = types_from_autoscaler_config(config)
    head = next(t for t in types if t.name == config["head_node_type"])
    assert head.launchable == 0 and not head.holds({"CPU": 1})
    assert {t.name for t in types if t.launchable and t.resources.get("GPU")} == gpu_types
    # right after `ray up`: the head is the only node
    v = fits({"CPU": 1, "GPU": 0.25}, merge(types, [("node abcd", {"CPU": 0})]), path)
    assert v.ok and not v.now and v.node_type.name in gpu_types
    assert v.message.startswith("no GPU node is up; the autoscaler can start ")
    if path.endswith("gpu.yaml"):  # two types of the same size: either may be started
        assert "can start gpu_a10g (1 GPU, 4 CPU) or gpu_l4 (1 GPU, 4 CPU): trials will wait" in v.message
        assert v.waiting_for == "a GPU worker (gpu_a10g or gpu_l4)"
    assert not fits({"CPU": 1, "GPU": 2}, types, path).ok


def test_cluster_max_workers_caps_each_type():
    types = types_from_autoscaler_config({"max_workers": 2, "head_node_type": "h", "available_node_types": {
        "h": {"resources": {"CPU": 0}}, "w": {"resources": {"GPU": 1}, "max_workers": 10},
        "z": {"resources": {"GPU": 1}, "max_workers": 0}}})
    assert {t.name: t.launchable for t in types} == {"h": 0, "w": 2, "z": 0}


def test_merge_counts_live_nodes_by_type():
    merged = merge([A10G], [("gpu_a10g", {"CPU": 4, "GPU": 1}), ("node ffff", {"CPU": 0})])
    by = {t.name: t for t in merged}
    assert (by["gpu_a10g"].up, by["gpu_a10g"].launchable) == (1, 3)
    assert by["node ffff"].up == 1 and by["node ffff"].launchable == 0


def test_launchable_types_reads_the_bootstrap_config(tmp_path, monkeypatch):
    """No autoscaler config in the GCS (autoscaler v1, what `ray up` runs): the file the head
    was started with, ~/ray_bootstrap_config.yaml (or $INAT_TUNE_AUTOSCALER_CONFIG)."""
    import ray._private.state as state_mod

    monkeypatch.setattr(state_mod.state, "get_cluster_config", lambda: None)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(capacity.CONFIG_ENV, raising=False)
    assert capacity.launchable_types() == ([], "")
    (tmp_path / "ray_bootstrap_config.yaml").write_text((REPO / "cluster" / "gpu.yaml").read_text())
    types, src = capacity.launchable_types()
    assert src.endswith("ray_bootstrap_config.yaml") and "gpu_l4" in {t.name for t in types}
    other = tmp_path / "other.yaml"
    other.write_text((REPO / "cluster" / "gcp.yaml").read_text())
    monkeypatch.setenv(capacity.CONFIG_ENV, str(other))
    types, src = capacity.launchable_types()
    assert src == str(other) and {"head_cpu", "gpu_l4"} <= {t.name for t in types}


def _opts(**kw):
    from inat_tune.tune.runner import SweepOptions
    return SweepOptions(space_path="s.yaml", data_dir="/d", name="n", address="auto", **kw)


def test_check_cluster_prints_the_node_type_it_waits_for(monkeypatch, capsys):
    from inat_tune.tune import runner

    monkeypatch.setattr(capacity, "launchable_types", lambda: ([A10G], "cfg"))
    monkeypatch.setattr(capacity, "live_nodes", lambda: [("node ffff", {"CPU": 0, "GPU": 0})])
    assert runner.check_cluster(_opts(gpus_per_trial=0.25)) == "a GPU worker (gpu_a10g)"
    out = capsys.readouterr().out
    assert "no GPU node is up; the autoscaler can start gpu_a10g (1 GPU, 4 CPU): trials will wait" in out


def test_check_cluster_refuses_naming_the_largest_and_not_the_drivers_cuda(monkeypatch):
    from inat_tune.tune import runner

    monkeypatch.setattr(capacity, "launchable_types", lambda: ([], ""))
    monkeypatch.setattr(capacity, "live_nodes", lambda: [("node ffff", {"CPU": 0, "GPU": 0}),
                                                         ("node eeee", {"CPU": 2})])
    with pytest.raises(runner.SweepError) as e:
        runner.check_cluster(_opts(gpus_per_trial=0.25))
    msg = str(e.value)
    assert msg.startswith("--cpus-per-trial 1 --gpus-per-trial 0.25: ")
    assert "the largest is node eeee (0 GPU, 2 CPU)" in msg and "torch.cuda" not in msg
    with pytest.raises(runner.SweepError, match="must be >= 0"):  # the value's own checks still run
        runner.check_cluster(_opts(gpus_per_trial=-1))


def test_local_message_is_unchanged():
    from inat_tune.tune.runner import SweepError, check_gpus

    with pytest.raises(SweepError) as e:
        check_gpus(0.25, 0)
    assert str(e.value) == ("--gpus-per-trial 0.25: no GPU is visible here (torch.cuda.is_available() "
                            "is False); use --gpus-per-trial 0 or run on a GPU machine")


# ---------------------------------------------------------------------------------------------
# The progress while trials wait for a node

class _Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _trials(*statuses):
    return [SimpleNamespace(trial_id=f"t{i}", status=s, config={}, last_result={})
            for i, s in enumerate(statuses)]


def test_progress_says_what_trials_wait_for():
    from inat_tune.tune.progress import CompactProgress

    space = SimpleNamespace(parameters={})
    cb = CompactProgress(space, every_s=20, wait_notice_s=60, wait_limit_s=600)
    cb.clock = clock = _Clock()
    cb.waiting_for = "a GPU worker (gpu_a10g)"
    waiting = _trials("PENDING", "PENDING", "PENDING", "PENDING")
    assert cb.waiting(waiting) is None  # the wait starts now
    clock.t += 45
    assert cb.waiting(waiting) is None  # under a minute: nothing yet
    clock.t += 15
    assert cb.waiting(waiting) == "[wait]  4 trial(s) pending: waiting for a GPU worker (gpu_a10g) for 60 s"
    clock.t += 5
    assert cb.waiting(waiting) is None  # at most once per every_s
    clock.t += 20
    assert "for 85 s" in cb.waiting(waiting)
    clock.t += 600
    line = cb.waiting(waiting)
    assert "for 685 s; still none after 600 s: the autoscaler could not start it" in line
    assert "ray status" in line
    # a trial runs: the wait is over, and a new wait starts from zero
    assert cb.waiting(_trials("RUNNING", "PENDING")) is None
    clock.t += 30
    assert cb.waiting(waiting) is None
    clock.t += 59
    assert cb.waiting(waiting) is None
    clock.t += 1
    assert "for 60 s" in cb.waiting(waiting)


def test_progress_wait_line_without_a_named_type_and_when_nothing_waits():
    from inat_tune.tune.progress import CompactProgress

    cb = CompactProgress(SimpleNamespace(parameters={}), every_s=20, wait_notice_s=60)
    cb.clock = clock = _Clock()
    assert cb.waiting(_trials("TERMINATED", "RUNNING")) is None
    assert cb.waiting(_trials("PENDING")) is None
    clock.t += 61
    assert cb.waiting(_trials("PENDING")) == ("[wait]  1 trial(s) pending: waiting for a node with room "
                                              "for a trial for 61 s")


def test_progress_prints_the_wait_line_from_on_step_end():
    import io

    from inat_tune.tune.progress import CompactProgress

    out = io.StringIO()
    cb = CompactProgress(SimpleNamespace(parameters={}), every_s=1e9, wait_notice_s=60, stream=out)
    cb.clock = clock = _Clock()
    cb._last = 1e18  # no table
    cb.on_step_end(0, _trials("PENDING"))
    clock.t += 60
    cb.on_step_end(1, _trials("PENDING"))
    assert out.getvalue().count("[wait]") == 1
