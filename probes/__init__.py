"""Diagnostic probes, one module per probe, one small class each (docs/PROBES.md).

``PROBES`` maps each probe's name to its class. Adding a probe is one file
under ``probes/`` with a ``@register``-ed :class:`~codiag.probes.base.Probe`
subclass that declares its outputs (:class:`Key`, :class:`Array`), plus its
module name in ``_MODULES`` below (docs/EXTENDING.md). ``DEFAULT_PROBES`` are those cheap
enough for every epoch (``default = True``); ``resolve_probes`` turns the
monitor's ``probes=`` argument into probe instances.
"""
from __future__ import annotations

import importlib
from typing import Any, Iterable, Mapping

from codiag.errors import UsageError

from .base import PROBES, Array, Key, Probe, ProbeContext, ProbeSet, register

# The registry: importing a module registers its class. Order = run order within an event.
_MODULES = (
    "robust_acc",
    "grad_align",
    "fgsm_pgd_cos",
    "weight_update",
    "perturbation_delta",
    "strength_gap",
    "instance_grad_norm",
    "linear_approx",
    "sign_agreement",
    "perturbation_norm",
    "loss_surface",
    "filters",
    "method_state",
    "local_linearity",
    "abnormal_examples",
    "pert_align",
    "grad_concentration",
)
for _m in _MODULES:
    importlib.import_module(f"{__name__}.{_m}")

DEFAULT_PROBES: tuple[str, ...] = tuple(name for name, cls in PROBES.items() if cls.default)


def resolve_probes(spec: str | Iterable[str] | None = "default",
                   options: Mapping[str, Mapping[str, Any]] | None = None) -> list[Probe]:
    """Instances for ``spec``: "default", "all", "none", a comma-separated string or names.

    Unknown names raise ``codiag.errors.UsageError`` (one clear line for the CLI).
    """

    options = dict(options or {})
    if spec is None or spec == "none":
        names: list[str] = []
    elif spec == "all":
        names = list(PROBES)
    elif spec == "default":
        names = list(DEFAULT_PROBES)
    else:
        raw = spec.split(",") if isinstance(spec, str) else list(spec)
        names = []
        for n in (str(s).strip() for s in raw):
            if n == "default":
                names.extend(DEFAULT_PROBES)
            elif n == "all":
                names.extend(PROBES)
            elif n:
                names.append(n)
    if not names and spec not in (None, "none"):
        raise UsageError(f"no probe named in {spec!r}; give names, default, all, or none")
    unknown = sorted({n for n in names} - set(PROBES))
    if unknown:
        raise UsageError(f"unknown probe(s) {', '.join(unknown)}; choose from {', '.join(PROBES)}, "
                         "default, all")
    bad_opts = sorted(set(options) - set(PROBES))
    if bad_opts:
        raise UsageError(f"options given for unknown probe(s) {', '.join(bad_opts)}")
    ordered = [n for n in PROBES if n in set(names)]  # registry order, no duplicates
    return [PROBES[n](**dict(options.get(n, {}))) for n in ordered]


def output_table() -> str:
    """The Markdown table of every declared metric key and array (docs/RUN_FORMAT.md holds a copy)."""
    lines = ["| probe | kind | name | shape | what |", "|---|---|---|---|---|"]
    for name, cls in PROBES.items():
        for out in [*cls.keys(), *cls.arrays()]:
            kind, shape = ("key", "") if isinstance(out, Key) else ("array", " x ".join(out.shape))
            doc = out.doc.replace("|", r"\|")       # a bar inside a cell would end it
            lines.append(f"| `{name}` | {kind} | `{out.name}` | {shape} | {doc} |")
    return "\n".join(lines) + "\n"


__all__ = ["PROBES", "DEFAULT_PROBES", "Array", "Key", "Probe", "ProbeContext", "ProbeSet", "output_table",
           "register", "resolve_probes"]
