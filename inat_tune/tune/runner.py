"""Run a sweep: validate everything, build the decode cache once, run Ray Tune.

``sweep(space, data, ...)`` is the library's entry point (the CLI's ``inat-tune sweep`` calls
it with its flags as keyword arguments); ``plan_sweep`` does its checks and returns the typed
:class:`SweepOptions` without starting anything; ``run_sweep(opts, spec)`` runs them.

The experiment folder ``<storage>/<name>`` is Ray Tune's own, plus ``sweep.json`` (the
sweep's settings, so ``--resume``, ``evaluate`` and ``report`` need no flags),
``space.yaml`` (the resolved search space) and ``split_manifest.json``.

About 600 lines on purpose: one concern, starting and resuming a sweep, with the
checks that must run before Ray does (storage, GPUs, memory, cluster capacity, saved state, the
driver lease).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from ..config import parse_overrides
from ..data.pipeline import load_tuning_data
from ..data.scan import scan_dataset
from ..experiment import SPACE_FILE, SWEEP_FILE, Experiment, ExperimentError, best_trial, load_experiment
from .budget import describe, num_trials, search_lines
from .space import SweepSpec, load_space, max_epochs, num_grid_trials, override, spec_to_dict, with_split
from .trainables import TrialSettings, make_trainable

log = logging.getLogger(__name__)
DEFAULT_NUM_SAMPLES = 20
OPTUNA_JOURNAL = "optuna-journal.log"  # the study of a bayes sweep (optuna-dashboard opens it)


class SweepError(ValueError):
    """A sweep that cannot start; the message says which option is wrong."""


@dataclass(frozen=True)
class SweepOptions:
    """A sweep's settings, checked (``plan_sweep``); written to sweep.json as they are."""

    space_path: str  # the space file, or "<mapping>" for a space given as a mapping
    data_dir: str
    name: str
    storage: str = "results"
    num_samples: int = DEFAULT_NUM_SAMPLES
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    use_wandb: bool = True
    wandb_project: str = "inat-tune"
    address: str | None = None
    seed: int = 0
    max_failures: int = 2
    overrides: tuple[str, ...] = ()
    fresh_process: bool = False  # True: a new worker process per trial (no reuse, no warm data)

    @property
    def experiment_path(self) -> str:
        return join_uri(self.storage, self.name)


def join_uri(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if "://" in base else str(Path(base).expanduser().resolve() / name)


# ---------------------------------------------------------------------------------------------
# Checks before Ray starts

def check_storage(storage: str) -> None:
    """Fail now, not after the first epoch, if the storage cannot be written."""
    # A probe of its own: two sweeps starting at once on one storage must not delete each
    # other's probe (the second unlink would fail, reported as "cannot write there").
    probe_name = f".inat-tune-write-test-{uuid.uuid4().hex}"
    if "://" in storage:
        import pyarrow.fs
        try:
            fs, path = pyarrow.fs.FileSystem.from_uri(storage)
            fs.create_dir(path, recursive=True)
            with fs.open_output_stream(f"{path.rstrip('/')}/{probe_name}") as f:
                f.write(b"ok")
            fs.delete_file(f"{path.rstrip('/')}/{probe_name}")
        except Exception as e:  # noqa: BLE001 - any filesystem error means the same thing
            raise SweepError(f"--storage {storage}: cannot write there ({e})") from None
        return
    p = Path(storage).expanduser()
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / probe_name
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise SweepError(f"--storage {storage}: cannot write there ({e.strerror or e})") from None


def check_gpus(gpus_per_trial: float, available: float | None) -> None:
    if gpus_per_trial < 0:
        raise SweepError(f"--gpus-per-trial {gpus_per_trial}: must be >= 0")
    if gpus_per_trial == 0:
        return
    if gpus_per_trial > 1:
        # fit() trains on one device: a second GPU per trial would sit idle
        raise SweepError(f"--gpus-per-trial {gpus_per_trial}: at most 1 (fractions <= 1 share GPUs; "
                         "one trial uses one GPU)")
    if not available:
        raise SweepError(f"--gpus-per-trial {gpus_per_trial}: no GPU is visible here "
                         "(torch.cuda.is_available() is False); use --gpus-per-trial 0 or run on a GPU machine")
    if gpus_per_trial > available:
        raise SweepError(f"--gpus-per-trial {gpus_per_trial}: more than the {available:g} GPU(s) available")


def check_cluster(opts: SweepOptions) -> str | None:
    """On a joined cluster (after ray.init): can one trial ever run there? Judged on what the
    cluster can become (the node types its autoscaler can start, plus the nodes up now), not on
    the nodes up now. Prints which node type will be started when none is up that fits; returns
    what trials wait for ("a GPU worker (gpu_a10g)"), or None."""
    import math

    from .capacity import cluster_verdict

    check_gpus(opts.gpus_per_trial, math.inf)  # the value's own checks; no local GPU is asked for
    verdict = cluster_verdict(opts.cpus_per_trial, opts.gpus_per_trial)
    if not verdict.ok:
        flags = f"--cpus-per-trial {opts.cpus_per_trial:g}" + (
            f" --gpus-per-trial {opts.gpus_per_trial:g}" if opts.gpus_per_trial else "")
        raise SweepError(f"{flags}: {verdict.message}")
    if verdict.message:
        print(verdict.message, flush=True)
    return verdict.waiting_for


def check_backbones(space: SweepSpec) -> None:
    """Every (backbone, strategy) pair the space can draw names a real backbone and stage."""
    from ..config import RunConfig
    from ..models.backbones import get_backbone
    from ..models.freezing import trainable_stages

    def points(key: str) -> list:
        p = space.parameters.get(key)
        return list(p.points()) if p is not None else [getattr(RunConfig(), key)]

    for backbone in points("backbone"):
        try:
            stages = get_backbone(backbone).stages
        except ValueError as e:
            raise SweepError(f"parameters.backbone: {e}") from None
        for strategy in points("strategy"):
            try:
                trainable_stages(strategy, stages)
            except ValueError as e:
                raise SweepError(f"parameters.strategy ({backbone}): {e}") from None


def _local_gpus() -> int:
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_memory(opts: SweepOptions, space: SweepSpec, images: Any, *, dry_run: bool = False) -> str:
    """The memory pre-flight (:mod:`inat_tune.tune.memory`): the estimated peak of the space's
    largest trial against what its GPU fraction leaves once the CUDA context is taken, when
    trials take a GPU visible here (measured in a fresh process: this one keeps no CUDA
    context). A joined cluster's GPUs are not known here: not checked. Raises SweepError, with
    the numbers and what fits, when the trial cannot fit. ``dry_run``: returns the estimate's
    line (also on a CPU); else the measured context goes to $INAT_TUNE_CUDA_CONTEXT_BYTES for
    the trials of a local Ray (started after this), which subtract it from their allocator cap."""
    from .memory import CONTEXT_ENV, MemoryPreflightError, measure_device, sweep_memory

    device = None
    if opts.gpus_per_trial > 0 and opts.address is None and _local_gpus():
        device = measure_device()
        if device is None:
            log.warning("memory pre-flight skipped: the GPU could not be measured in a fresh process")
        elif not dry_run:
            os.environ.setdefault(CONTEXT_ENV, str(int(device["context"])))
    if device is None and not dry_run:
        return ""  # nothing to check against
    try:
        return sweep_memory(space, images.train_labels, len(images.classes), opts.gpus_per_trial,
                            device=device)
    except MemoryPreflightError as e:
        raise SweepError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - an estimate that fails must not stop a sweep
        log.warning("memory pre-flight skipped: %s: %s", type(e).__name__, e)
        return f"peak memory per trial: not estimated ({type(e).__name__}: {e})"


def plan_sweep(space: str | Path | Mapping[str, Any], data: str | Path, *, name: str | None = None,
               storage: str | Path = "results", num_samples: int | None = None,
               cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0,
               max_concurrent: int | None = None, use_wandb: bool = True,
               wandb_project: str = "inat-tune", address: str | None = None, seed: int = 0,
               max_failures: int = 2, overrides: Mapping[str, Any] | Iterable[str] = (),
               val_fraction: float | None = None, split_seed: int | None = None,
               resume: bool = False, fresh_process: bool = False) -> tuple[SweepOptions, SweepSpec]:
    """The checked options and search space of a sweep; nothing is started or written.

    Arguments are ``sweep``'s. Raises SpaceError (naming the key), ConfigError (a bad
    override) or SweepError (naming the option). With ``resume`` the experiment's saved
    sweep.json settings are kept (``address``, when given, still wins: the cluster may be new).
    """
    if resume and not name:
        raise SweepError("--resume needs --name NAME (the experiment to continue)")
    spec = load_space(space)
    fixed, override_texts = _overrides(overrides)
    if fixed:
        spec = override(spec, fixed)
    spec = with_split(spec, val_fraction, split_seed)  # the sweep's one validation split
    if num_samples is not None and num_samples < 1:
        raise SweepError(f"--num-samples {num_samples}: must be >= 1")
    if cpus_per_trial <= 0:
        raise SweepError(f"--cpus-per-trial {cpus_per_trial}: must be > 0")
    if gpus_per_trial < 0:
        raise SweepError(f"--gpus-per-trial {gpus_per_trial}: must be >= 0")
    cores = os.cpu_count() or 1
    if address is None and "RAY_ADDRESS" not in os.environ and cpus_per_trial > cores:
        # a local Ray has this machine's cores only: such a trial would stay PENDING forever
        raise SweepError(f"--cpus-per-trial {cpus_per_trial:g}: this machine has {cores} CPUs, so no "
                         f"trial could ever start; use --cpus-per-trial <= {cores}, or --address to "
                         "join a cluster with larger nodes")
    if max_concurrent is not None and max_concurrent < 1:
        raise SweepError(f"--max-concurrent {max_concurrent}: must be >= 1")
    if spec.model == "finetune":
        check_backbones(spec)
    num = num_samples or spec.run_cap or DEFAULT_NUM_SAMPLES
    if spec.method == "grid":
        num = 1  # Ray repeats the whole grid num_samples times: one pass is the grid
    space_path = "<mapping>" if isinstance(space, Mapping) else str(space)
    stem = "sweep" if isinstance(space, Mapping) else Path(space).stem
    opts = SweepOptions(space_path=space_path, data_dir=str(Path(data).expanduser().resolve()),
                        name=name or f"{stem}-{datetime.now():%Y%m%d-%H%M%S}", storage=str(storage),
                        num_samples=num, cpus_per_trial=cpus_per_trial,
                        gpus_per_trial=gpus_per_trial, max_concurrent=max_concurrent,
                        use_wandb=use_wandb, wandb_project=wandb_project, address=address,
                        seed=seed, max_failures=max_failures, overrides=override_texts,
                        fresh_process=bool(fresh_process))
    if not resume and _experiment_exists(opts.experiment_path):
        raise SweepError(f"--name {opts.name}: {opts.experiment_path} already holds an experiment; "
                         f"--resume --name {opts.name} continues it, another --name starts a new one")
    if resume:
        saved = Path(opts.experiment_path) / SWEEP_FILE
        if saved.is_file():  # keep the original settings of the experiment
            prev = json.loads(saved.read_text())
            kept = {k: prev[k] for k in SweepOptions.__dataclass_fields__ if k in prev and k != "overrides"}
            if address is not None:  # the cluster may be a new one: the argument wins
                kept["address"] = address
            if not use_wandb:  # --no-wandb at --resume: the resumed part logs nothing to W&B
                kept["use_wandb"] = False
            opts = SweepOptions(**kept, overrides=tuple(prev.get("overrides", ())))
    return opts, spec


def _experiment_exists(path: str) -> bool:
    """A sweep already wrote there (its sweep.json, or Ray's state): a new one would mix in."""
    if "://" in path:
        import pyarrow.fs
        try:
            fs, root = pyarrow.fs.FileSystem.from_uri(path)
            return fs.get_file_info(f"{root.rstrip('/')}/{SWEEP_FILE}").type != pyarrow.fs.FileType.NotFound
        except Exception:  # noqa: BLE001 - unreachable storage is reported by check_storage
            return False
    p = Path(path)
    return (p / SWEEP_FILE).is_file() or any(p.glob("experiment_state-*.json"))


def sweep(space: str | Path | Mapping[str, Any], data: str | Path, *, name: str | None = None,
          storage: str | Path = "results", num_samples: int | None = None, cpus_per_trial: float = 1.0,
          gpus_per_trial: float = 0.0, max_concurrent: int | None = None, use_wandb: bool = True,
          wandb_project: str = "inat-tune", address: str | None = None, seed: int = 0,
          max_failures: int = 2, overrides: Mapping[str, Any] | Iterable[str] = (),
          val_fraction: float | None = None, split_seed: int | None = None,
          resume: bool = False, fresh_process: bool = False) -> Experiment | str:
    """Run (or, with ``resume``, continue) a Ray Tune sweep; returns the finished experiment.

    ``space``: a W&B sweep file or the same as a mapping (plus ``model:``); ``data``: the
    dataset folder. ``overrides`` fix config keys for every trial: a mapping, or "key=value"
    strings as the CLI's ``--set``. ``name`` defaults to ``<space stem>-<timestamp>``;
    ``num_samples`` to the space's run_cap, else 20. ``address`` joins a running Ray cluster.
    Resuming needs ``name``, and keeps the settings saved in the experiment's sweep.json.
    ``val_fraction`` / ``split_seed`` set the sweep's one validation split (else the space's
    top-level keys, else RunConfig's defaults). Trial processes are reused from trial to
    trial (warm: no start-up, data already loaded); ``fresh_process`` starts a new one for
    every trial instead.

    Returns ``inat_tune.experiment.load_experiment`` of ``<storage>/<name>``, or that path as
    a string when ``storage`` is remote (s3://, gs://). Raises SweepError, SpaceError,
    ConfigError or DatasetError, each with a one-line message, before anything starts.
    """
    opts, spec = plan_sweep(space, data, name=name, storage=storage, num_samples=num_samples,
                            cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                            max_concurrent=max_concurrent, use_wandb=use_wandb,
                            wandb_project=wandb_project, address=address, seed=seed,
                            max_failures=max_failures, overrides=overrides,
                            val_fraction=val_fraction, split_seed=split_seed, resume=resume,
                            fresh_process=fresh_process)
    run_sweep(opts, spec, resume=resume)
    if "://" in opts.experiment_path:
        return opts.experiment_path
    return load_experiment(opts.experiment_path)


def preview(space: str | Path | Mapping[str, Any], data: str | Path, **kwargs: Any) -> str:
    """``inat-tune sweep --dry-run``: every check ``sweep`` makes before Ray (space, overrides,
    options, the dataset's layout, GPUs on this machine unless joining a cluster), then what the
    sweep would do: the resolved parameters, the searcher, ASHA's rungs and the epoch budget.
    Starts nothing and writes nothing. Keyword arguments are ``sweep``'s."""
    opts, spec = plan_sweep(space, data, **kwargs)
    images = scan_dataset(opts.data_dir)
    if opts.address is None:
        check_gpus(opts.gpus_per_trial, _local_gpus())
    return describe(opts, spec) + "\n" + check_memory(opts, spec, images, dry_run=True)


def _overrides(overrides: Mapping[str, Any] | Iterable[str] | str) -> tuple[dict[str, Any], tuple[str, ...]]:
    """(key -> value, the "key=value" texts sweep.json records) from either form."""
    if isinstance(overrides, str):
        overrides = [overrides]
    if isinstance(overrides, Mapping):
        fixed = dict(overrides)
        return fixed, tuple(f"{k}={_yaml_value(v)}" for k, v in fixed.items())
    texts = tuple(overrides)
    return parse_overrides(list(texts)), texts


def _yaml_value(value: Any) -> str:
    """``value`` as --set would take it (parse_overrides reads it back as YAML)."""
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip()
    return text.removesuffix("\n...").strip()


def _image_sizes(space: SweepSpec) -> list[int]:
    p = space.parameters.get("image_size")
    if p is None:
        from ..config import RunConfig
        return [RunConfig().image_size]
    try:
        return sorted({int(v) for v in p.points()})
    except Exception:  # a continuous range: trials build their size's cache on demand
        return []


# ---------------------------------------------------------------------------------------------

def _callbacks(opts: SweepOptions, space: SweepSpec) -> list:
    from .progress import CompactProgress
    callbacks: list = [CompactProgress(space, metric=space.metric, mode=space.mode)]
    if opts.use_wandb:
        from .wandb_mirror import make_wandb_callback
        cb = make_wandb_callback(project=opts.wandb_project, group=opts.name,
                                 experiment_path=opts.experiment_path)
        if cb is not None:
            callbacks.append(cb)
    return callbacks


def _write_experiment_files(opts: SweepOptions, space: SweepSpec, manifest_src: Path) -> None:
    files = {
        SWEEP_FILE: json.dumps({**asdict(opts), "overrides": list(opts.overrides),
                                "created": datetime.now().isoformat(timespec="seconds")}, indent=1),
        SPACE_FILE: yaml.safe_dump(spec_to_dict(space), sort_keys=False),
        "split_manifest.json": manifest_src.read_text(),
    }
    path = opts.experiment_path
    if "://" in path:
        import pyarrow.fs
        fs, root = pyarrow.fs.FileSystem.from_uri(path)
        fs.create_dir(root, recursive=True)
        for name, text in files.items():
            with fs.open_output_stream(f"{root}/{name}") as f:
                f.write(text.encode())
    else:
        Path(path).mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (Path(path) / name).write_text(text)


def run_sweep(opts: SweepOptions, space: SweepSpec, *, resume: bool = False,
              callbacks: Iterable[Any] = ()):
    """Run (or resume) the sweep; returns Ray's ResultGrid. ``callbacks``: more Ray Tune
    callbacks, after the sweep's own (progress, W&B).

    The driver holds the experiment's lease (:mod:`inat_tune.tune.lease`) while it runs: a
    second driver on the same experiment is refused (SweepError naming the first), and the
    lease of a driver that is gone is taken over."""
    from .lease import ExperimentLease, LeaseError

    scan_dataset(opts.data_dir)  # layout errors before anything is written
    check_storage(opts.storage)
    try:
        # A stale lease is taken over: on --resume its driver is gone; on a new sweep (plan_sweep
        # refused an existing experiment) it is what an attempt that died before writing left.
        lease = ExperimentLease(opts.experiment_path, takeover=True).acquire()
    except LeaseError as e:
        raise SweepError(str(e)) from None
    except OSError as e:
        raise SweepError(f"--storage {opts.storage}: cannot write the experiment's lease ({e})") from None
    if lease.took_over is not None:
        print(f"took over the experiment from a driver that is gone ({lease.took_over.describe()})")
    try:
        return _run_sweep(opts, space, resume=resume, callbacks=callbacks)
    finally:
        lease.release()


def _run_sweep(opts: SweepOptions, space: SweepSpec, *, resume: bool, callbacks: Iterable[Any]):
    import ray
    from ray import tune

    from .search import make_scheduler, make_search_alg, to_tune_param_space

    images = scan_dataset(opts.data_dir)  # layout errors before anything starts
    check_storage(opts.storage)
    if opts.address is None:
        check_gpus(opts.gpus_per_trial, _local_gpus())
    check_memory(opts, space, images)  # before ray.init: the trials inherit the context it measured

    # Decode once, before the trials: every trial on this node then maps the same cache. A
    # continuous image-size range is cached by the trials themselves (under the same lock).
    from ..config import RunConfig
    manifest = Path(os.environ.get("TMPDIR", "/tmp")) / f"inat-tune-manifest-{os.getpid()}.json"
    for size in _image_sizes(space) or [RunConfig().image_size]:
        # the split every trial uses (to_tune_param_space gives each trial these two values)
        data = load_tuning_data(opts.data_dir, size, space.val_fraction, space.split_seed,
                                images=images)
        data.write_manifest(manifest)  # the split is the same for every size
        del data

    # One checkpoint per epoch makes Ray snapshot often on tiny runs; the warning is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    callbacks = _callbacks(opts, space) + list(callbacks)  # before ray.init: sets WANDB_MODE
    # --resume restores the W&B callback pickled with the experiment: this switches it off
    from .wandb_mirror import OFF_ENV
    os.environ[OFF_ENV] = "0" if opts.use_wandb else "1"
    if not ray.is_initialized():
        # Joining a cluster (address) takes the cluster's resources; locally Ray uses this machine.
        ray.init(address=opts.address, include_dashboard=False, log_to_driver=False,
                 configure_logging=True, logging_level=logging.WARNING)
    waiting_for = check_cluster(opts) if opts.address is not None else None
    for cb in callbacks:
        if hasattr(cb, "waiting_for"):
            cb.waiting_for = waiting_for  # named by the progress while trials wait for a node

    settings = TrialSettings(data_dir=opts.data_dir, cpus_per_trial=opts.cpus_per_trial,
                             gpus_per_trial=opts.gpus_per_trial)
    trainable = make_trainable(space.model, settings)
    run_config = tune.RunConfig(
        name=opts.name,
        storage_path=opts.storage if "://" in opts.storage else str(Path(opts.storage).expanduser().resolve()),
        callbacks=callbacks,
        # Keeps each trial's best checkpoint (by the metric) and its latest (Ray never deletes the
        # latest). num_to_keep=1 also makes Tune save the experiment state after every checkpoint
        # (it forces a snapshot every num_to_keep checkpoints of a trial): with 2, the latest
        # checkpoint that the saved state names could already be deleted when the driver is
        # killed, and --resume then fails that trial ("Could not recover from checkpoint as it
        # does not exist on storage anymore"); tests/test_faults.py kills the driver.
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute=space.metric, checkpoint_score_order=space.mode),
        failure_config=tune.FailureConfig(max_failures=opts.max_failures),
        verbose=0,  # the CompactProgress callback prints instead of Ray's full table
    )
    t0 = time.time()
    if resume:
        path = opts.experiment_path
        if not tune.Tuner.can_restore(path):
            raise SweepError(f"--resume: no experiment to resume at {path}")
        check_saved_state(path)
        # Finished trials stay as they are; unfinished and errored ones continue from their
        # last checkpoints; the searcher's saved state is restored with the experiment.
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        _write_experiment_files(opts, space, manifest)
        for line in search_lines(opts, space):
            print(line)
        searcher = make_search_alg(space, seed=opts.seed, max_concurrent=opts.max_concurrent,
                                   num_samples=num_trials(opts, space), storage=_optuna_storage(opts, space),
                                   study_name=opts.name)
        tuner = tune.Tuner(
            trainable,
            param_space=to_tune_param_space(space),
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=make_scheduler(space, max_epochs(space)),
                num_samples=opts.num_samples,  # metric/mode live in the searcher and scheduler
                # Warm trials: a trial process is reused for the next trial (no start-up, data
                # already loaded); run_trial resets it so it gives what a fresh one would.
                reuse_actors=not opts.fresh_process,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=run_config,
        )
    results = tuner.fit()
    manifest.unlink(missing_ok=True)
    _print_summary(results, opts, space, time.time() - t0)
    return results


def _optuna_storage(opts: SweepOptions, spec: SweepSpec) -> Any:
    """A bayes sweep's Optuna study lives in the experiment folder as a journal file, so
    ``optuna-dashboard <exp>/optuna-journal.log`` shows it while the sweep runs and
    ``optuna.load_study(study_name=<name>, storage=JournalStorage(...))`` reads it after; on
    --resume Tune restores the searcher, and with it this storage. A journal needs a local
    filesystem with file locks: on s3:// or gs:// the study stays in Tune's searcher state."""
    if spec.method != "bayes":
        return None
    if "://" in opts.experiment_path:
        print(f"optuna: the study is kept in Tune's searcher state ({opts.experiment_path} is "
              "remote; a journal file needs a local filesystem)")
        return None
    import optuna
    from optuna.storages.journal import JournalFileBackend

    path = Path(opts.experiment_path) / OPTUNA_JOURNAL
    print(f"optuna: study {opts.name!r} in {path} (optuna-dashboard {path})")
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


# The state files Tune restores an experiment from; it reads the newest (by name) of each kind.
_STATE_FILES = ("tuner.pkl", "experiment_state-", "basic-variant-state-", "search_gen_state-",
                "searcher-state-", "callback-states-")


def check_saved_state(path: str) -> None:
    """Refuse to resume from a damaged experiment state. A driver killed while Tune was writing
    its state can leave one of these files cut short; Tune.restore then logs "Failed to restore
    the run state" and silently starts a new experiment, with an empty config, in the same folder."""
    import pyarrow.fs
    import ray.cloudpickle as cloudpickle

    if "://" in path:
        fs, root = pyarrow.fs.FileSystem.from_uri(path)
    else:
        fs, root = pyarrow.fs.LocalFileSystem(), path
    names = sorted(i.base_name for i in fs.get_file_info(pyarrow.fs.FileSelector(root))
                   if i.type == pyarrow.fs.FileType.File)
    for kind in _STATE_FILES:
        newest = max((n for n in names if n.startswith(kind)), default=None)
        if newest is None:
            continue
        try:
            with fs.open_input_stream(f"{root.rstrip('/')}/{newest}") as f:
                data = f.readall()
            json.loads(data) if newest.startswith("experiment_state-") else cloudpickle.loads(data)
        except Exception as e:  # noqa: BLE001 - any reading error means the same thing
            raise SweepError(f"--resume: {newest} in {path} cannot be read ({type(e).__name__}: {e}); "
                             "the driver was probably killed while saving it, and Ray would start the "
                             "sweep over in this folder, so nothing was started") from None


def _trial_dirname(trial) -> str:
    return f"{trial.trainable_name}_{trial.trial_id}"


def _print_summary(results, opts: SweepOptions, space: SweepSpec, wall: float) -> None:
    df = results.get_dataframe()
    errors = sum(1 for r in results if r.error is not None)
    print()
    print(f"sweep {opts.name}: {len(results)} trials ({errors} errored) in {wall:.0f} s wall")
    if "gpu_seconds" in df:
        gpu = df["gpu_seconds"].fillna(0).sum()
        cpu = df["cpu_seconds"].fillna(0).sum()
        print(f"cost: {gpu:.0f} GPU-seconds" if gpu > 0 else f"cost: {cpu:.0f} CPU-seconds (no GPU)")
    exp = opts.experiment_path
    best = _best(results, exp, space)
    if best is None:
        return
    trial_id, config, value, checkpoint = best
    swept = {k: config.get(k) for k in space.parameters}
    print(f"best {space.metric}: {value:.4f} (trial {trial_id}, checkpoint: {checkpoint or '-'})")
    print(f"best config: {json.dumps(swept, default=str)}")
    print(f"experiment: {exp}")
    print(f"next: inat-tune evaluate {exp}\n      inat-tune explain {exp}\n      inat-tune report {exp}")


def _best(results, path: str, space: SweepSpec) -> tuple[str, dict[str, Any], float, str | None] | None:
    """(trial id, config, metric at its best epoch, that epoch's checkpoint folder) of the best
    trial; None, after printing why, when there is none.

    Local experiments use ``inat_tune.experiment.best_trial``, the rule evaluate, explain and
    the report use (finished trials only). A remote one is not read back here: Ray's own pick
    from the result grid (over every trial and epoch) stands in.
    """
    if "://" not in path:
        try:
            bt = best_trial(load_experiment(path))
        except ExperimentError as e:
            print(f"no best trial: {e}")
            return None
        return bt.trial.trial_id, bt.trial.config, bt.value, str(bt.checkpoint.parent)
    try:
        best = results.get_best_result(metric=space.metric, mode=space.mode, scope="all")
    except RuntimeError:
        print("no trial reported a result")
        return None
    history = best.metrics_dataframe[space.metric]
    value = history.max() if space.mode == "max" else history.min()  # the best epoch, not the last
    ckpt = best.get_best_checkpoint(space.metric, space.mode) if best.checkpoint else None
    return best.metrics.get("trial_id"), best.config, float(value), ckpt.path if ckpt else None
