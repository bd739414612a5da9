"""codiag: see catastrophic overfitting coming in single-step adversarial training.

User code imports only ``codiag``::

    import codiag
    with codiag.monitor(model, optimizer, "runs/fgsm", eps=8/255, probe_data=test_loader) as mon:
        ...
    run = codiag.load_run("runs/fgsm")

Names are resolved lazily, except ``monitor`` and ``train``: they share their names with
their submodules, and importing a submodule (``from codiag.train import TrainConfig``)
rebinds the package attribute to the module, which would make ``codiag.train(...)``
fail with "'module' object is not callable". Importing both first and binding the
functions after keeps the attributes the functions for good.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Monitor": "codiag.monitor",
    "load_run": "codiag.runs",
    "RunWriter": "codiag.runs",
    "UsageError": "codiag.errors",
    "load_dataset": "codiag.data",
    "make_loader": "codiag.data",
    "dataset_spec": "codiag.data",
    "build_model": "codiag.models",
    "get_method": "codiag.methods",
    "METHODS": "codiag.methods",
    "evaluate": "codiag.attacks",
    "detect_co": "codiag.detector",
}

from .monitor import monitor  # noqa: E402  (after the submodule import; see the docstring)
from .train import train  # noqa: E402


def __getattr__(name: str) -> Any:
    if name == "attacks":
        return importlib.import_module("codiag.attacks")
    if name in _EXPORTS:
        module = importlib.import_module(_EXPORTS[name])
        return getattr(module, name)
    raise AttributeError(f"module 'codiag' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS, "attacks"])


__all__ = sorted([*_EXPORTS, "monitor", "train", "attacks", "__version__"])
