"""Load a script of ``examples/`` (or ``benchmarks/``) as a module, the way the tests exercise them."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_example(name: str, folder: str = "examples") -> ModuleType:
    """``FOLDER/NAME.py`` executed as a fresh module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module     # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module
