"""The grid of a sweep: one cell per (method, eps, seed), and the protocol they share.

A *cell* is one training run. Its name is its run directory under SWEEP_DIR, e.g.
``fgsm-eps8_255-seed0`` (eps 8/255) or ``fgsm-eps0.2-seed0``. The *protocol* is
everything else a run depends on (every ``codiag train`` option except the cell's
method, eps and seed, and except where it runs: ``out``, ``device``, ``data_root``,
``download``, ``progress``), plus the ``-m`` overrides. Runs of one sweep directory
share one protocol, which makes its cells comparable (GradAlign Fig. 1 and 8: the
methods differ, the evaluation does not).

A method of the grid may be a guarded variant, ``METHOD+guard`` (``codiag train --guard``,
the default policy) or ``METHOD+guard-POLICY`` (``fgsm+guard-n_fgsm``): its cells train
METHOD with the guard, beside METHOD's own cells under the same protocol.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from ..errors import UsageError
from ..methods import METHODS
from ..parsing import parse_eps
from ..trainer import TrainConfig
from ..trainer_guard import canonical_policy

#: TrainConfig fields that say where and how visibly a run runs, not what it computes.
LOCAL_FIELDS = ("out", "device", "data_root", "download", "progress")
#: TrainConfig fields that a cell sets.
CELL_FIELDS = ("method", "eps", "seed", "method_args")
#: the characters of a cell name (its run directory): a method name, an eps tag, a seed
SAFE_NAME = re.compile(r"[a-z0-9_]+(\+guard(-[a-z0-9_-]+)?)?-eps[0-9a-z_.+-]+-seed[0-9]+")


def eps_tag(eps: float) -> str:
    """``8_255`` for a multiple of 1/255 that is not a short decimal, else ``0.2``."""
    short = f"{eps:g}"
    if len(short) <= 5:
        return short
    k = eps * 255
    if abs(k - round(k)) < 1e-6 and round(k) > 0:
        return f"{int(round(k))}_255"
    return short


@dataclass(frozen=True)
class Cell:
    """One run of the grid: a method at one eps (pixel units) and one seed."""

    method: str
    eps: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-eps{eps_tag(self.eps)}-seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "method": self.method, "eps": self.eps, "seed": self.seed}

    @classmethod
    def from_dict(cls, d: Any) -> "Cell":
        """The cell a sweep.json entry describes, every field checked before any path is built
        from it (a sweep directory may come from anyone): UsageError (one line) otherwise."""
        if not isinstance(d, Mapping):
            raise UsageError(f"a cell is {type(d).__name__}, not an object with method, eps and seed")
        method, eps, seed = d.get("method"), d.get("eps"), d.get("seed")
        if not _known_method(method):
            raise UsageError(f"a cell names the method {str(method)[:60]!r}, which is not a codiag method")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 <= eps <= 1.0:
            raise UsageError(f"cell {method}: eps must be a number in [0, 1] (pixel units), got {str(eps)[:40]!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise UsageError(f"cell {method}: seed must be an integer in [0, 2^63), got {str(seed)[:40]!r}")
        cell = cls(method, float(eps), seed)
        if not SAFE_NAME.fullmatch(cell.name) or d.get("name", cell.name) != cell.name:
            raise UsageError(f"a cell is named {str(d.get('name'))[:60]!r}, not {cell.name!r} as codiag names it")
        return cell


def parse_list(text: str | Sequence[Any], what: str) -> list[str]:
    """``"a,b,c"`` or a sequence -> a non-empty list of stripped strings."""
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else [str(s).strip() for s in text]
    items = [s for s in items if s]
    if not items:
        raise UsageError(f"no {what} given")
    return items


GUARD_TAG = "+guard"


def split_variant(name: str) -> tuple[str, str | None]:
    """``fgsm+guard-n_fgsm`` -> (``fgsm``, ``n_fgsm``); ``fgsm+guard`` -> (``fgsm``, ``auto``); ``fgsm`` ->
    (``fgsm``, None)."""
    base, tag, policy = name.partition(GUARD_TAG)
    if not tag:
        return name, None
    if policy and not policy.startswith("-"):
        raise UsageError(f"method {name!r}: write a guarded variant as METHOD+guard or METHOD+guard-POLICY")
    return base, canonical_policy(policy[1:] or "auto")


def method_name(name: str) -> str:
    """A grid method's canonical name (lower case, ``_`` in the method, a guard variant's policy checked)."""
    base, policy = split_variant(name.strip().lower())
    base = base.replace("-", "_")
    if policy is None:
        return base
    return base + GUARD_TAG + ("" if policy == "auto" else f"-{policy}")


def _known_method(method: Any) -> bool:
    """A codiag method or its guarded variant, spelled as codiag spells it."""
    try:
        return isinstance(method, str) and split_variant(method)[0] in METHODS and method == method_name(method)
    except UsageError:           # an unknown guard policy
        return False


def make_cells(methods: str | Sequence[str], eps: str | Sequence[Any],
               seeds: str | Sequence[Any]) -> list[Cell]:
    """The cells of methods x eps x seeds, in that order; names and values checked."""
    names = [method_name(m) for m in parse_list(methods, "methods")]
    unknown = [m for m in names if split_variant(m)[0] not in METHODS]
    if unknown:
        raise UsageError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(sorted(METHODS))}")
    radii = [parse_eps(e) for e in parse_list([str(e) for e in eps] if not isinstance(eps, str) else eps, "eps")]
    seed_list = []
    for s in parse_list([str(s) for s in seeds] if not isinstance(seeds, str) else seeds, "seeds"):
        try:
            seed_list.append(int(s))
        except ValueError:
            raise UsageError(f"seeds must be integers, got {s!r}") from None
        if seed_list[-1] < 0:
            raise UsageError(f"seeds must not be negative, got {s}")
    cells = [Cell(m, e, s) for m in names for e in radii for s in seed_list]
    seen: set[str] = set()
    out = []
    for c in cells:               # "--eps 0.1,0.1" or "8/255,0.0314" must not train one run twice
        if c.name not in seen:
            seen.add(c.name)
            out.append(c)
    return out


def split_method_args(method_args: Mapping[str, Any] | Iterable[tuple[str, Any]] | None,
                      methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``-m`` overrides per method. ``KEY=VALUE`` applies to every method of the grid that has
    the hyper-parameter KEY (at least one must); ``METHOD.KEY=VALUE`` to that method only."""
    items = list(method_args.items()) if isinstance(method_args, Mapping) else list(method_args or [])
    per: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for key, value in items:
        if "." in key:
            method, hp = key.split(".", 1)
            method = method_name(method)
            # a method's overrides apply to its guarded variants too (they train the same method)
            targets = [m for m in per if m == method or split_variant(m)[0] == method]
            if not targets:
                raise UsageError(f"method_args[{key!r}]: {method!r} is not a method of this sweep")
            base = METHODS[split_variant(method)[0]]
            if hp not in base._all_defaults():
                raise UsageError(f"method_args[{key!r}]: {method} has no hyper-parameter {hp!r}; it has "
                                 f"{', '.join(sorted(base._all_defaults())) or 'none'}")
            for m in targets:
                per[m][hp] = value
            continue
        takers = [m for m in methods if key in METHODS[split_variant(m)[0]]._all_defaults()]
        if not takers:
            raise UsageError(f"method_args[{key!r}]: no method of this sweep has a hyper-parameter {key!r}")
        for m in takers:
            per[m][key] = value
    return {m: a for m, a in per.items() if a}


def protocol_of(train_options: Mapping[str, Any], overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The protocol: every TrainConfig option that is neither a cell's nor a local one,
    with the defaults filled in, plus the per-method ``-m`` overrides. Checked by
    TrainConfig itself (one line on bad input)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    cell_given = sorted(set(train_options) & set(CELL_FIELDS))
    if cell_given:
        raise UsageError(f"the grid sets {', '.join(cell_given)}; pass methods, eps and seeds instead")
    unknown = sorted(set(train_options) - names)
    if unknown:
        raise UsageError(f"unknown training option(s): {', '.join(unknown)}")
    base = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            for f in dataclasses.fields(TrainConfig)}
    base.update(train_options)
    proto = {k: v for k, v in base.items() if k not in LOCAL_FIELDS and k not in CELL_FIELDS}
    proto["method_args"] = {m: dict(a) for m, a in sorted(overrides.items())}
    return normalized(proto)


def normalized(protocol: Mapping[str, Any]) -> dict[str, Any]:
    """The protocol as stored: JSON values, and a comma list of probes as the list `codiag
    train` reads it into, so ``"robust_acc,grad_align"`` and ``["robust_acc", "grad_align"]``
    are one protocol."""
    proto = canonical(dict(protocol))
    probes = proto.get("probes")
    if isinstance(probes, str) and probes not in ("default", "all", "none"):
        proto["probes"] = [p.strip() for p in probes.split(",") if p.strip()]
    return proto


def canonical(value: Any) -> Any:
    """A JSON round trip: what sweep.json stores, so stored and fresh protocols compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def protocol_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ (floats compared to 1e-9 relative). A key that only one
    side has (an option added to or renamed in ``codiag train`` since the sweep began) differs
    only when its value there is not today's default."""
    defaults = protocol_of({}, {})
    old, new = normalized(old), normalized(new)
    out = []
    for k in sorted(set(old) | set(new)):
        if k in old and k in new:
            if not _same(old[k], new[k]):
                out.append(k)
        elif k in defaults and not _same((old if k in old else new)[k], defaults[k]):
            out.append(k)
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


def cell_config(cell: Cell, protocol: Mapping[str, Any], out: str, device: str = "auto",
                local: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``codiag.train`` config of one cell. The validated setting for (method, dataset,
    eps) is applied by TrainConfig; the sweep's ``-m`` overrides of this method go on top.
    ``local`` holds where the data is (``data_root``, ``download``)."""
    cfg = {k: v for k, v in protocol.items() if k != "method_args"}
    method, guard = split_variant(cell.method)
    if guard is not None:
        cfg["guard"] = guard
    cfg.update(method=method, eps=cell.eps, seed=cell.seed,
               method_args=dict(protocol.get("method_args", {}).get(cell.method, {})),
               out=out, device=device, progress=False, **dict(local or {}))
    return cfg
