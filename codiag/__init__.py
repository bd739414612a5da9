"""codiag: see catastrophic overfitting coming in single-step adversarial training.

User code imports only ``codiag``::

    import codiag
    with codiag.monitor(model, optimizer, "runs/fgsm", eps=8/255, probe_data=test_loader) as mon:
        ...
    run = codiag.load_run("runs/fgsm")
    codiag.report(["runs/fgsm"])

Every command is also a function (``codiag.train``, ``codiag.report``, ``codiag.sweep``). A public name is a
function or a module, never both: ``monitor`` lives in ``codiag.monitoring`` and ``train`` in
``codiag.trainer``. Every name is imported on first use, so ``import codiag`` is instant.
"""
from __future__ import annotations

import importlib
from typing import Any

from .version import __version__

#: public name -> its module, imported on first use: ``import codiag`` (and so ``codiag --help``) loads no
#: torch; the report writer loads matplotlib and seaborn, the rest torch.
_LAZY = {
    "evaluate": "codiag.attacks", "dataset_spec": "codiag.data", "load_dataset": "codiag.data",
    "make_loader": "codiag.data", "detect_co": "codiag.detector", "UsageError": "codiag.errors",
    "METHODS": "codiag.methods", "get_method": "codiag.methods", "build_model": "codiag.models",
    "Monitor": "codiag.monitoring", "monitor": "codiag.monitoring", "RunWriter": "codiag.runs",
    "load_run": "codiag.runs", "sweep": "codiag.sweeps.runner", "TrainConfig": "codiag.config",
    "train": "codiag.trainer", "report": "codiag.reports",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value      # once: later look-ups are plain attribute reads
        return value
    raise AttributeError(f"module 'codiag' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["METHODS", "Monitor", "RunWriter", "TrainConfig", "UsageError", "build_model", "dataset_spec",
           "detect_co", "evaluate", "get_method", "load_dataset", "load_run", "make_loader", "monitor",
           "report", "sweep", "train", "__version__"]
