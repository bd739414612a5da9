"""What a probe writes, declared once on its class: :class:`Key` (metrics.csv rows) and :class:`Array`.

A probe lists its outputs as class attributes::

    class RobustAcc(Probe):
        name = "robust_acc"
        pgd_acc = Key("PGD accuracy on the probe set")     # key "pgd_acc"
        ...
        def run(self, ctx):
            ctx.log(self.pgd_acc, correct.float().mean())

A name may hold ``{fields}`` (``Key("...", "mse/{param}")``, filled in by
``ctx.log(self.mse, value, param="conv.weight")``); left out, it is the
attribute's name (arrays: ``<probe>.<attribute>``). Everything that reads runs
derives from these declarations: the CO detector's signals, the figures'
``needs``, the synthetic runs the report tests draw and the docs' table of
metric keys; :meth:`ProbeContext.log` refuses anything undeclared.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

_FIELD = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True, eq=False)
class Output:
    """One declared output of a probe: ``doc`` says what it holds, ``name`` how it is written.

    ``probe`` (the owning probe's registry name) and an empty ``name`` are
    filled in when the class body is executed (``__set_name__``).
    """

    doc: str
    name: str = ""
    probe: str = ""

    def __set_name__(self, owner: type, attr: str) -> None:
        object.__setattr__(self, "probe", str(getattr(owner, "name", "")))
        if not self.name:
            object.__setattr__(self, "name", self._default_name(attr))

    def _default_name(self, attr: str) -> str:
        return attr

    @property
    def fields(self) -> tuple[str, ...]:
        """The ``{field}`` names of a name pattern (empty for a fixed name)."""
        return tuple(_FIELD.findall(self.name))

    def format(self, **fields: Any) -> str:
        """The concrete name: ``Key("", "mse/{param}").format(param="fc.weight") == "mse/fc.weight"``."""
        if set(fields) != set(self.fields):
            raise ValueError(f"{self} takes the field(s) {list(self.fields)}; got {sorted(fields)}")
        return self.name.format(**fields) if fields else self.name

    def parse(self, concrete: str) -> dict[str, str] | None:
        """The fields of ``concrete`` if this declaration covers it (``{}`` for a fixed name), else None."""
        m = self._regex.fullmatch(concrete)
        return None if m is None else m.groupdict()

    @cached_property
    def _regex(self) -> re.Pattern[str]:
        parts = _FIELD.split(self.name)        # literal, field, literal, field, ...
        return re.compile("".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>.+)" for i, p in enumerate(parts)))

    def __str__(self) -> str:
        return f"{self.probe}/{self.name}"


class Key(Output):
    """A metric key: rows ``(step, epoch, probe, key, value)`` of metrics.csv."""

    @property
    def pair(self) -> tuple[str, str]:
        """``(probe, key)`` as metrics.csv holds it."""
        return self.probe, self.name


@dataclass(frozen=True, eq=False)
class Array(Output):
    """An array saved per event as ``arrays/NAME-STEPxxxxxxx.npy``; ``shape`` names its axes."""

    shape: tuple[str, ...] = ()

    def _default_name(self, attr: str) -> str:
        return f"{self.probe}.{attr}"

    def __str__(self) -> str:
        return self.name


def declared(cls: type, kind: type[Output] = Output) -> list[Any]:
    """The outputs of kind ``kind`` declared on ``cls`` and its bases, in declaration order."""
    seen: dict[str, Output] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            if isinstance(value, kind):
                seen[attr] = value
    return list(seen.values())
