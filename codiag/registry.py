"""Class registries by name: the one mechanism behind ``METHODS`` and ``PROBES``."""
from __future__ import annotations

from typing import Callable, TypeVar

_C = TypeVar("_C", bound=type)


def registrar(table: dict[str, type], kind: str) -> Callable[[_C], _C]:
    """A class decorator that adds a class to ``table`` under its ``name`` attribute.

    A class without a name, or a second class under a taken name, raises
    ``ValueError`` at import time, where the mistake is.
    """
    def register(cls: _C) -> _C:
        name = getattr(cls, "name", "")
        if not name:
            raise ValueError(f"{cls.__name__} has no registry name")
        if table.get(name, cls) is not cls:
            raise ValueError(f"{kind} name {name!r} registered twice")
        table[name] = cls
        return cls

    register.__doc__ = f"Class decorator: add a {kind} class to the registry under its ``name``."
    return register
