"""Training methods against catastrophic overfitting, one module per method.

``METHODS`` maps registry names to classes; ``get_method(name, eps, **hparams)``
builds one. See ``base.py`` for the interface and conventions.
"""
from __future__ import annotations

import importlib

from .base import METHODS, Method, get_method, register

# Importing a module registers its class(es).
_MODULES = ("fgsm", "fgsm_rs", "reduced_fgsm", "n_fgsm", "pgd", "free", "grad_clip",
            "zerograd", "zerograd_rollback", "multigrad", "gradalign", "grad_penalty", "cure",
            "atta", "atas", "apart", "apart_simple")
for _m in _MODULES:
    importlib.import_module(f"{__name__}.{_m}")

__all__ = ["METHODS", "Method", "get_method", "register"]
