"""``inat-tune``: the command line (a parser factory and ``main(argv) -> int``).

Heavy modules (torch, ray, wandb, captum) are imported inside the command that needs them,
so ``inat-tune --help`` and ``inat-tune count`` answer instantly.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

import yaml

from .config import ConfigError, RunConfig, load_config


def get_args_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(prog="inat-tune", formatter_class=fmt,
                                description="Hyperparameter search for image classifiers on iNaturalist-12K (Ray Tune).")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="download, generate or cache a dataset", formatter_class=fmt)
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    dl = dsub.add_parser("download", help="fetch, verify and extract nature_12K.zip", formatter_class=fmt)
    dl.add_argument("--root", default="data", help="folder that receives the zip and inaturalist_12K/")
    dl.add_argument("--url", default=None, help="archive URL (default: the course's public URL)")
    sy = dsub.add_parser("synth", help="generate the SYNTHETIC 10-class dataset", formatter_class=fmt)
    sy.add_argument("--out", required=True, help="output dataset folder")
    sy.add_argument("--per-class", type=int, default=60, help="train images per class")
    sy.add_argument("--val-per-class", type=int, default=None, help="test images per class (default per-class/4)")
    sy.add_argument("--image-size", type=int, default=64, help="nominal image side in pixels")
    sy.add_argument("--seed", type=int, default=0)
    ca = dsub.add_parser("cache", help="decode a dataset once into the shared cache", formatter_class=fmt)
    ca.add_argument("--data", required=True, help="dataset folder (train/ and val/)")
    ca.add_argument("--image-size", type=int, required=True)

    co = sub.add_parser("count", help="parameters and MACs of the 5-block CNN (closed formulas)", formatter_class=fmt)
    co.add_argument("--filters", type=int, required=True, help="m: filters in the first conv layer")
    co.add_argument("--kernel-size", type=int, required=True, help="k: kernel side")
    co.add_argument("--dense", type=int, required=True, help="n: neurons in the dense layer")
    co.add_argument("--image-size", type=int, default=224, help="input side S")
    co.add_argument("--filter-org", choices=["same", "double", "half"], default="same")
    co.add_argument("--batch-norm", action="store_true", help="count batch-norm parameters too")
    co.add_argument("--num-classes", type=int, default=10)

    tr = sub.add_parser("train", help="one training run, no Ray", formatter_class=fmt)
    tr.add_argument("config", nargs="?", default=None, help="YAML of key: value (optional)")
    tr.add_argument("--data", required=True, help="dataset folder (train/ and val/)")
    tr.add_argument("--out", required=True, help="output folder (config, manifest, metrics, checkpoint)")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    tr.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    tr.add_argument("--overwrite", action="store_true", help="replace the run in --out")

    _add_sweep_parser(sub, fmt)

    ev = sub.add_parser("evaluate", help="best trial on the test set", formatter_class=fmt)
    ev.add_argument("experiment", help="experiment folder, or a train run folder (train --out)")
    ev.add_argument("--data", default=None, help="dataset folder (default: the sweep's or run's)")
    _add_wandb_flags(ev)
    ex = sub.add_parser("explain", help="filters, feature maps and guided backprop", formatter_class=fmt)
    ex.add_argument("experiment", help="experiment folder, or a train run folder (train --out)")
    ex.add_argument("--data", default=None, help="dataset folder (default: the sweep's or run's)")
    rp = sub.add_parser("report", help="tables, figures, insights and report.md/html", formatter_class=fmt)
    rp.add_argument("experiments", nargs="+", help="experiment folder(s); several = comparison")
    _add_wandb_flags(rp)
    rp.add_argument("--out", default=None,
                    help="report folder (default: the experiment's own; several: compare-<A>-vs-<B> beside the first)")

    be = sub.add_parser("bench", help="throughput of the data path and training", formatter_class=fmt)
    be.add_argument("--data", default=None, help="dataset folder (default: generated photo-sized JPEGs)")
    be.add_argument("--image-size", type=int, default=64)
    be.add_argument("--json", default=None, help="also write the results as JSON here")
    be.add_argument("--search", action="store_true", help="compare TPE+ASHA with random search")
    be.add_argument("--quick", action="store_true", help="smaller measurements (smoke test)")
    be.add_argument("--concurrent", type=int, default=None, metavar="N",
                    help="only this: N trainings of the scratch CNN at once on one device "
                         "(separate processes, no Ray) against one alone")
    rp_ = be.add_argument_group("--replay: search methods replayed over recorded learning curves (nothing trained)")
    rp_.add_argument("--replay", default=None, metavar="TABLE",
                     help="a finished full-factorial grid experiment folder, or its load_history CSV")
    rp_.add_argument("--seeds", type=int, default=20, help="searcher seeds per method")
    rp_.add_argument("--num-samples", type=int, default=30, help="trials per search")
    rp_.add_argument("--grace-period", type=int, default=1, help="ASHA's first rung (epochs)")
    rp_.add_argument("--eta", type=float, default=3.0, help="ASHA's reduction factor")
    rp_.add_argument("--max-concurrent", type=int, default=4, help="trials running at once")
    rp_.add_argument("--methods", default=None,
                     help="comma-separated (default: all of inat_tune.bench.replay.METHODS)")
    rp_.add_argument("--figure", default=None, help="write the anytime figure (PNG) here")

    de = sub.add_parser("demo", help="the whole pipeline on the synthetic dataset", formatter_class=fmt)
    de.add_argument("--out", default="results/demo", help="where the demo writes everything")
    de.add_argument("--num-samples", type=int, default=8)
    return p


def _add_wandb_flags(p: argparse.ArgumentParser) -> None:
    """--wandb / --no-wandb; neither: the experiment's own setting (its sweep.json's use_wandb,
    i.e. whether the sweep ran with --no-wandb; a train run folder: off)."""
    w = p.add_mutually_exclusive_group()
    w.add_argument("--wandb", dest="use_wandb", action="store_true",
                   help="log to W&B (default: as the sweep did)")
    w.add_argument("--no-wandb", dest="use_wandb", action="store_false",
                   help="do not log to W&B (default: as the sweep did)")
    p.set_defaults(use_wandb=None)


def _add_sweep_parser(sub, fmt) -> None:
    sw = sub.add_parser("sweep", help="a Ray Tune search (Optuna TPE + ASHA)", formatter_class=fmt)
    sw.add_argument("space", help="search-space YAML (W&B sweep syntax + model:)")
    sw.add_argument("--data", required=True, help="dataset folder (train/ and val/)")
    sw.add_argument("--name", default=None, help="experiment name (default: <space>-<timestamp>)")
    sw.add_argument("--storage", default="results", help="local folder or URI (s3://, gs://)")
    sw.add_argument("--num-samples", type=int, default=None, help="trials (default: run_cap or 20)")
    sw.add_argument("--cpus-per-trial", type=float, default=1.0)
    sw.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractions like 0.25 share a GPU")
    sw.add_argument("--max-concurrent", type=int, default=None, help="limit on trials running at once")
    sw.add_argument("--resume", action="store_true", help="continue an interrupted experiment")
    sw.add_argument("--no-wandb", action="store_true", help="do not mirror trials to W&B")
    sw.add_argument("--wandb-project", default="inat-tune")
    sw.add_argument("--address", default=None, help="join a running Ray cluster: auto or ray://host:port")
    sw.add_argument("--seed", type=int, default=0, help="searcher seed")
    sw.add_argument("--max-failures", type=int, default=2, help="retries of a failed trial from its checkpoint")
    sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fix a config key for every trial")
    sw.add_argument("--val-fraction", type=float, default=None,
                    help="the sweep's validation share of train/ (default: the space's, else 0.2)")
    sw.add_argument("--split-seed", type=int, default=None,
                    help="seed of the sweep's validation split (default: the space's, else 0)")
    sw.add_argument("--fresh-process", action="store_true",
                    help="a new worker process for every trial (default: processes are reused, "
                         "reset between trials, and keep their loaded data warm)")
    sw.add_argument("--dry-run", action="store_true",
                    help="check everything and print the parameters, searcher, ASHA rungs and epoch budget; start nothing")


# ---------------------------------------------------------------------------------------------

def cmd_data(args) -> int:
    if args.data_command == "download":
        from .data.download import DEFAULT_URL, download_dataset
        path = download_dataset(args.root, args.url or DEFAULT_URL)
        print(f"dataset ready: {path}")
    elif args.data_command == "synth":
        from .data.synth import SYNTHETIC_NOTE, make_synthetic
        out = make_synthetic(args.out, per_class=args.per_class, val_per_class=args.val_per_class,
                             image_size=args.image_size, seed=args.seed)
        print(f"wrote {out}\nNOTE: {SYNTHETIC_NOTE}")
    else:
        from .config import MIN_IMAGE_SIZE
        from .data.pipeline import cache_dataset
        if args.image_size < MIN_IMAGE_SIZE:  # no model can train on it (train refuses it too)
            raise ConfigError(f"--image-size {args.image_size}: must be >= {MIN_IMAGE_SIZE} (five 2x2 "
                              "max-pools halve it five times)")
        print(json.dumps(cache_dataset(args.data, args.image_size), indent=1))
    return 0


def cmd_count(args) -> int:
    from .config import filter_counts
    from .models.counting import cnn_macs, cnn_param_count
    try:  # the same rules a model of this shape must pass; the message names the flag
        RunConfig.from_dict({"filters": args.filters, "filter_org": args.filter_org,
                             "kernel_size": args.kernel_size, "dense": args.dense,
                             "image_size": args.image_size})
    except ConfigError as e:
        key = str(e).split("=", 1)[0]
        raise ConfigError(f"--{key.replace('_', '-')} {getattr(args, key, '')}: "
                          f"{str(e).split(': ', 1)[-1]}") from None
    if args.num_classes < 2:
        raise ConfigError(f"--num-classes {args.num_classes}: must be >= 2")
    filters = filter_counts(args.filters, args.filter_org)
    kernels = (args.kernel_size,) * 5
    params = cnn_param_count(filters, kernels, args.dense, args.image_size, num_classes=args.num_classes,
                             batch_norm=args.batch_norm)
    macs = cnn_macs(filters, kernels, args.dense, args.image_size, num_classes=args.num_classes)
    print(f"filters per block : {list(filters)}  kernel {args.kernel_size}x{args.kernel_size}  "
          f"dense {args.dense}  image {args.image_size}x{args.image_size}")
    print(f"parameters        : {params:,}")
    print(f"multiply-adds     : {macs:,}  ({2 * macs / 1e9:.3f} GFLOP per image forward)")
    return 0


def cmd_train(args) -> int:
    from .run import train_run

    out = Path(args.out)
    if args.resume and (out / "config.yaml").is_file() and not args.config and not args.set:
        saved = yaml.safe_load((out / "config.yaml").read_text()) or {}
        saved.pop("data", None)
        cfg = RunConfig.from_dict(saved)  # the run's own config
    else:
        cfg = load_config(args.config, args.set)  # refuses bad keys before any work
    result = train_run(cfg, args.data, out, device=args.device, resume=args.resume,
                       overwrite=args.overwrite)
    b = result.best
    print(f"best val_acc {b['val_acc']:.4f} at epoch {b['epoch']}; checkpoint {out / 'best.pt'}")
    quoted = shlex.quote(str(out))
    print(f"next: inat-tune evaluate {quoted}   # best.pt once on the test set (val/)\n"
          f"      inat-tune explain {quoted}    # filters, feature maps, guided backprop")
    return 0


def cmd_sweep(args) -> int:
    from .data.scan import DatasetError
    from .tune.runner import SweepError, preview, sweep
    from .tune.space import SpaceError

    kwargs = dict(name=args.name, storage=args.storage, num_samples=args.num_samples,
                  cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                  max_concurrent=args.max_concurrent, use_wandb=not args.no_wandb,
                  wandb_project=args.wandb_project, address=args.address, seed=args.seed,
                  max_failures=args.max_failures, overrides=args.set,
                  val_fraction=args.val_fraction, split_seed=args.split_seed, resume=args.resume,
                  fresh_process=args.fresh_process)
    try:
        if args.dry_run:
            print(preview(args.space, args.data, **kwargs))
        else:
            sweep(args.space, args.data, **kwargs)
    except (SweepError, SpaceError, ConfigError, DatasetError) as e:
        # On stdout, unlike the other commands' errors: the line ends the sweep's own console
        # output (progress, summary), which users and the cluster tests log as one stream.
        print(f"inat-tune sweep: error: {e}")
        return 2
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate_experiment
    evaluate_experiment(args.experiment, data=args.data, use_wandb=args.use_wandb)
    return 0


def cmd_explain(args) -> int:
    from .explain import explain_experiment
    explain_experiment(args.experiment, data=args.data)
    return 0


def cmd_report(args) -> int:
    from .report import write_report
    write_report(args.experiments, use_wandb=args.use_wandb, out=args.out)
    return 0


def cmd_bench(args) -> int:
    from .bench import BenchOptions, run_bench
    if args.replay is not None:
        from .bench.replay import ReplayOptions, run_replay
        extra = {"methods": tuple(m.strip() for m in args.methods.split(","))} if args.methods else {}
        run_replay(ReplayOptions(table=args.replay, seeds=args.seeds, num_samples=args.num_samples,
                                 grace_period=args.grace_period, eta=args.eta,
                                 max_concurrent=args.max_concurrent, json_path=args.json,
                                 figure_path=args.figure, **extra))
        return 0
    return run_bench(BenchOptions(data=args.data, image_size=args.image_size, json_path=args.json,
                                  search=args.search, quick=args.quick,
                                  concurrent=args.concurrent))


def cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(args.out, num_samples=args.num_samples)


COMMANDS = {"data": cmd_data, "count": cmd_count, "train": cmd_train, "sweep": cmd_sweep,
            "evaluate": cmd_evaluate, "explain": cmd_explain, "report": cmd_report,
            "bench": cmd_bench, "demo": cmd_demo}


# Errors whose message is the whole story (they name the key, file or option): no traceback.
_USER_ERRORS = {
    "inat_tune.data.scan": "DatasetError", "inat_tune.data.download": "DownloadError",
    "inat_tune.tune.space": "SpaceError", "inat_tune.tune.runner": "SweepError",
    "inat_tune.experiment": "ExperimentError", "inat_tune.models.weights": "WeightsError",
    "inat_tune.bench.replay": "ReplayError", "inat_tune.train": "CheckpointError",
}


def _user_errors() -> tuple[type[BaseException], ...]:
    """The user-error classes of the modules loaded so far (a module that raised is loaded)."""
    found = [ConfigError, FileNotFoundError]
    for module, name in _USER_ERRORS.items():
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None:
            found.append(cls)
    return tuple(found)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except Exception as e:  # noqa: BLE001 - user errors become one line, the rest a traceback
        if not isinstance(e, _user_errors()):
            raise
        print(f"inat-tune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
