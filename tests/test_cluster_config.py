"""The Ray cluster-launcher configs (cluster/gpu.yaml for AWS, cluster/gcp.yaml for GCP).

Validated with Ray's OWN code, the steps ``ray up`` runs before it contacts a cloud
(``ray.autoscaler._private.commands._bootstrap_config``): ``prepare_config`` (merge with the
provider's defaults.yaml, merge setup commands, fill node-type limits) then ``validate_config``
(the JSON schema ``ray/autoscaler/ray-schema.json`` + cross-field checks). No cloud call is
made: the provider's ``bootstrap_config`` (IAM, VPC, key pairs) is never invoked.

Deliberately broken copies must be refused by the same validator, so these tests can fail.
The project-specific checks (GPU workers, install command, dataset step, rsync excludes) are
ours: Ray does not know about them.
"""

from __future__ import annotations

import copy
import fnmatch
import os
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"aws": ROOT / "cluster" / "gpu.yaml", "gcp": ROOT / "cluster" / "gcp.yaml"}
SCHEMA = Path(__import__("ray.autoscaler", fromlist=["_"]).__file__).parent / "ray-schema.json"


def _load(name: str) -> dict:
    with open(CONFIGS[name]) as f:  # ray up reads the file with yaml.safe_load too
        return yaml.safe_load(f)


def _ray_validate(config: dict) -> dict:
    """What ``ray up`` does before any cloud call; returns the prepared config."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(params=sorted(CONFIGS))
def cloud(request) -> str:
    return request.param


@pytest.fixture
def raw(cloud) -> dict:
    return _load(cloud)


@pytest.fixture
def prepared(raw) -> dict:
    return _ray_validate(raw)


def _worker_types(config: dict) -> dict[str, dict]:
    head = config["head_node_type"]
    return {k: v for k, v in config["available_node_types"].items() if k != head}


# --------------------------------------------------------------------------- Ray's validator

def test_ray_schema_is_the_installed_one():
    assert SCHEMA.is_file(), SCHEMA


def test_config_passes_rays_own_validation(cloud, raw):
    assert raw["provider"]["type"] == cloud
    prepared = _ray_validate(raw)
    # prepare_config really merged the provider defaults (so validation saw a full config)
    assert "cluster_synced_files" in prepared and "auth" in prepared


def test_raw_file_also_matches_the_json_schema(raw):
    """Before any default is merged in: no key of ours is unknown to Ray."""
    import json
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    assert [e.message for e in validator.iter_errors(raw)] == []


def _break_unknown_top_level_key(c):
    c["max_worker"] = 4  # typo of max_workers


def _break_unknown_node_type_key(c):
    next(iter(_worker_types(c).values()))["min_worker"] = 1


def _break_sum_of_min_workers(c):
    for t in _worker_types(c).values():
        t["min_workers"] = t["max_workers"] = c["max_workers"]  # 2 types x 4 > global 4


def _break_head_type(c):
    c["head_node_type"] = "no_such_type"


def _break_fractional_gpu(c):
    next(iter(_worker_types(c).values()))["resources"]["GPU"] = 0.5


def _break_missing_node_config(c):
    del next(iter(_worker_types(c).values()))["node_config"]


@pytest.mark.parametrize("breaker", [
    _break_unknown_top_level_key, _break_unknown_node_type_key, _break_sum_of_min_workers,
    _break_head_type, _break_fractional_gpu, _break_missing_node_config,
], ids=lambda f: f.__name__.removeprefix("_break_"))
def test_rays_validator_refuses_a_broken_copy(raw, breaker):
    broken = copy.deepcopy(raw)
    breaker(broken)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        _ray_validate(broken)


def test_min_greater_than_max_per_type_is_caught_here(raw):
    """Ray accepts min_workers > max_workers inside one type (it clamps at run time); we don't."""
    broken = copy.deepcopy(raw)
    t = next(iter(_worker_types(broken).values()))
    t["min_workers"], t["max_workers"] = 2, 1
    _ray_validate(broken)  # Ray lets it through ...
    with pytest.raises(AssertionError):
        _check_worker_limits(broken)  # ... our check does not


# --------------------------------------------------------------------------- node types

def _check_worker_limits(config: dict) -> None:
    for name, t in _worker_types(config).items():
        lo, hi = t.get("min_workers", 0), t.get("max_workers", config["max_workers"])
        assert 0 <= lo <= hi <= config["max_workers"], (name, lo, hi)


def test_worker_limits(raw):
    _check_worker_limits(raw)
    assert 1 <= raw["max_workers"]


def test_head_is_cpu_only_and_schedules_no_trials(raw):
    head = raw["available_node_types"][raw["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert head["resources"].get("CPU") == 0, "the head advertises no CPU so no trial lands there"
    assert head.get("max_workers", 0) == 0


def test_every_gpu_worker_type_declares_a_gpu(raw):
    workers = _worker_types(raw)
    assert workers
    for name, t in workers.items():
        assert t["resources"].get("GPU", 0) >= 1, name
        assert t["resources"].get("CPU", 0) >= 1, name
        assert t.get("min_workers", 0) == 0, f"{name}: min_workers 0 keeps an idle cluster free of GPUs"


def test_aws_gpu_workers_can_write_to_s3():
    raw = _load("aws")
    for name, t in _worker_types(raw).items():
        nc = t["node_config"]
        assert re.match(r"^(g[4-6]|p[3-5])", nc["InstanceType"]), (name, nc["InstanceType"])
        assert nc.get("IamInstanceProfile"), f"{name}: workers need an instance profile for S3"
    for name, t in raw["available_node_types"].items():
        assert t["node_config"].get("ImageId"), f"{name}: Ray's default AMI is too old for CUDA 12"
    assert raw["provider"]["cache_stopped_nodes"] is False


def test_gcp_gpu_workers_have_accelerators_and_a_writing_service_account():
    raw = _load("gcp")
    for name, t in _worker_types(raw).items():
        nc = t["node_config"]
        acc = nc["guestAccelerators"]
        assert sum(a["acceleratorCount"] for a in acc) >= t["resources"]["GPU"], name
        assert nc["scheduling"]["onHostMaintenance"] == "TERMINATE", name  # an object, not a list
        assert any("cloud-platform" in s for sa in nc["serviceAccounts"] for s in sa["scopes"]), name


# --------------------------------------------------------------------------- setup

def _cmds(prepared: dict, key: str) -> str:
    return "\n".join(prepared[key])


def test_setup_installs_the_project_with_its_pinned_cluster_extra(prepared):
    mounts = prepared["file_mounts"]
    remote = next(r for r, local in mounts.items() if local == ".")
    for key in ("head_setup_commands", "worker_setup_commands"):  # common + role, as Ray merges
        cmds = _cmds(prepared, key)
        assert f"cd {remote}" in cmds, key
        assert "pip install" in cmds and "-e '.[cluster]'" in cmds, key
        # nothing overrides the pins of pyproject.toml
        assert not re.search(r"\b(torch|torchvision)(==|>=|\s)", cmds.replace("'.[cluster]'", "")), key


def test_setup_downloads_the_dataset_and_workers_cache_it(prepared):
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert "inat-tune data download --root ~/data" in _cmds(prepared, key), key
    assert re.search(r"inat-tune data cache --data ~/data/inaturalist_12K --image-size \d+",
                     _cmds(prepared, "worker_setup_commands"))
    download = next(i for i, c in enumerate(prepared["worker_setup_commands"]) if "data download" in c)
    install = next(i for i, c in enumerate(prepared["worker_setup_commands"]) if ".[cluster]" in c)
    assert install < download


def test_inat_tune_commands_match_the_cli(prepared):
    """Every `inat-tune ...` the nodes run parses with the real CLI parser (no flag drift)."""
    cli = pytest.importorskip("inat_tune.cli")
    parser = cli.get_args_parser()
    found = 0
    for cmd in prepared["head_setup_commands"] + prepared["worker_setup_commands"]:
        for part in re.split(r"&&|;|\|\|", cmd):
            words = shlex.split(part)
            if words and words[0] == "inat-tune":
                parser.parse_args(words[1:])
                found += 1
    assert found >= 3


def test_start_commands_are_the_standard_ones(prepared):
    head = _cmds(prepared, "head_start_ray_commands")
    for flag in ("ray stop", "--head", "--port=6379", "--object-manager-port=8076",
                 "--autoscaling-config=~/ray_bootstrap_config.yaml", "--dashboard-host=0.0.0.0"):
        assert flag in head, flag
    worker = _cmds(prepared, "worker_start_ray_commands")
    assert "--address=$RAY_HEAD_IP:6379" in worker and "ray stop" in worker
    assert prepared["idle_timeout_minutes"] > 0


# --------------------------------------------------------------------------- rsync

def _rsync_excluded(rel: str, patterns: list[str]) -> bool:
    """rsync --exclude semantics for the patterns used here, on a path relative to the root:
    "/x" matches x at the root only; a pattern without "/" matches any path component."""
    parts = rel.split("/")
    for pat in patterns:
        if pat.startswith("/"):
            if fnmatch.fnmatchcase(parts[0], pat[1:]):
                return True
        elif "/" not in pat and any(fnmatch.fnmatchcase(p, pat) for p in parts):
            return True
    return False


def test_rsync_excludes_venv_and_results(raw):
    ex = raw["rsync_exclude"]
    stripped = {p.strip("/") for p in ex}
    assert ".venv" in stripped and "results" in stripped and "data" in stripped
    assert _rsync_excluded(".venv/lib/python3.11/site-packages/ray/__init__.py", ex)
    assert _rsync_excluded("results/exp1/trial_0/checkpoint_000001/model.pt", ex)
    assert _rsync_excluded("data/inaturalist_12K/train/Aves/1.jpg", ex)


def test_rsync_keeps_everything_the_install_needs(raw):
    """An over-eager pattern (e.g. unanchored "data") would drop the package folder inat_tune/data."""
    ex = raw["rsync_exclude"]
    needed = ["pyproject.toml", "README.md"]
    for base in ("inat_tune", "search_spaces", "cluster"):
        for dirpath, dirnames, filenames in os.walk(ROOT / base):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            needed += [os.path.relpath(os.path.join(dirpath, f), ROOT) for f in filenames
                       if not f.endswith((".pyc",))]
    assert any(p.startswith("inat_tune/data/") for p in needed)
    dropped = [p for p in needed if _rsync_excluded(p, ex)]
    assert not dropped, dropped


def test_file_mount_is_the_repository_root(raw):
    assert raw["file_mounts"] == {"~/inat-tune": "."}
    assert (ROOT / raw["file_mounts"]["~/inat-tune"] / "pyproject.toml").is_file()


# --------------------------------------------------------------------------- docs

DOC = ROOT / "README.md"  # its "Running on a cluster" section and every other bash block


def _doc_shell_lines() -> list[str]:
    """Lines of the doc's ```bash blocks, with backslash continuations joined."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    return [ln.split("  #")[0].strip() for ln in text.splitlines() if ln.strip()]


def test_doc_commands_match_the_cli_and_the_configs():
    cli = pytest.importorskip("inat_tune.cli")
    parser = cli.get_args_parser()
    lines = _doc_shell_lines()
    parsed = 0
    for ln in lines:
        if "inat-tune " in ln and not ln.startswith("pip "):
            words = shlex.split(ln[ln.index("inat-tune "):])
            parser.parse_args(words[1:])
            parsed += 1
        for cfg in re.findall(r"cluster/[\w-]+\.yaml", ln):
            assert (ROOT / cfg).is_file(), cfg
    assert parsed >= 3
    submit = next(ln for ln in lines if ln.startswith("ray job submit"))
    assert "--working-dir ." in submit and "--storage s3://" in submit
    assert "--data /home/" in submit  # a path on the nodes, not ~ (the local shell expands it)
    assert any(ln.startswith("ray up cluster/gpu.yaml") for ln in lines)
    assert any(ln.startswith("ray down cluster/gpu.yaml") for ln in lines)


# --------------------------------------------------------------------------- pyproject

def test_pyproject_has_the_cluster_extra():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = meta["optional-dependencies"]["cluster"]
    names = [re.split(r"[<>=!~;\s]", r, maxsplit=1)[0] for r in extra]
    assert "ray[default]" in names, extra
    assert "boto3" in names, extra
    assert any(d.startswith("torch==") for d in meta["dependencies"])
    assert any(d.startswith("torchvision==") for d in meta["dependencies"])
