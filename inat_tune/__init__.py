"""inat-tune: hyperparameter search for image classifiers, built on Ray Tune.

The Python API is what the CLI calls; each name is loaded on first use (PEP 562), so
``import inat_tune`` imports neither torch nor Ray::

    import inat_tune

    exp = inat_tune.sweep("search_spaces/demo.yaml", "data/ds", num_samples=8)  # -> Experiment
    inat_tune.evaluate_experiment(exp.path)   # best trial on the test set
    inat_tune.explain_experiment(exp.path)    # filters, feature maps, guided backprop
    inat_tune.write_report([exp.path])        # report.md / report.html
    trials = inat_tune.load_results(exp.path)  # one row per trial (pandas)
    inat_tune.train_run({"lr": 1e-3, "epochs": 5}, "data/ds", "runs/one")  # one config, no Ray

The functions keep their module's names: ``inat_tune.evaluate``, ``.explain``, ``.report`` and
``.train`` are the submodules, and an attribute of the package named like a submodule is
replaced by the submodule as soon as it is imported.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_API = {
    "sweep": "inat_tune.tune.runner",
    "train_run": "inat_tune.run",
    "evaluate_experiment": "inat_tune.evaluate",
    "explain_experiment": "inat_tune.explain",
    "write_report": "inat_tune.report",
    "load_results": "inat_tune.analysis",
    "load_history": "inat_tune.analysis",
    "load_experiment": "inat_tune.experiment",
    "RunConfig": "inat_tune.config",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
