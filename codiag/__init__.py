"""codiag: see catastrophic overfitting coming in single-step adversarial training.

User code imports only ``codiag``::

    import codiag
    with codiag.monitor(model, optimizer, "runs/fgsm", eps=8/255, probe_data=test_loader) as mon:
        ...
    run = codiag.load_run("runs/fgsm")
    codiag.report(["runs/fgsm"])

Every command is also a function (``codiag.train``, ``codiag.report``, ``codiag.sweep``). A public name is a
function or a module, never both: ``monitor`` lives in ``codiag.monitoring`` and ``train`` in
``codiag.trainer``. Names whose modules pull in plotting libraries are imported on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

from .attacks import evaluate
from .data import dataset_spec, load_dataset, make_loader
from .detector import detect_co
from .errors import UsageError
from .methods import METHODS, get_method
from .models import build_model
from .monitoring import Monitor, monitor
from .runs import RunWriter, load_run
from .sweeps.runner import sweep
from .trainer import TrainConfig, train
from .version import __version__  # noqa: I001  (first: every part may import it)

#: Imported on first use: the report writer loads matplotlib and seaborn (about a second).
_LAZY = {"report": "codiag.reports"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'codiag' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["METHODS", "Monitor", "RunWriter", "TrainConfig", "UsageError", "build_model", "dataset_spec",
           "detect_co", "evaluate", "get_method", "load_dataset", "load_run", "make_loader", "monitor",
           "report", "sweep", "train", "__version__"]
