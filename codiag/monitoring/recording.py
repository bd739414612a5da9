"""Run writing for the monitor: buffered rows, non-finite losses, probe failures, trackers (sinks).

Values stay on the device until an event (or a flush) moves them to the host in one
transfer (``codiag.runs.host_values``); rows are appended to metrics.csv and flushed,
so a killed run keeps every row of every finished event. Non-finite losses (probe
losses, ``mon.log`` values whose key names a loss, per-step losses passed to
``mon.track_loss``) become ``nonfinite_loss`` events once per (probe, key), and the
first one is recorded in run.json as ``diverged_at_step``. Probe failures become
``probe_error`` events and a per-probe count in run.json (``probe_errors``); the report
page shows both. Every written row and event is mirrored to the run's sinks
(``codiag.integrations.sinks``); a sink's failure is counted like a probe's (``sink_errors``).
"""
from __future__ import annotations

import json
import math
import traceback
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from ..errors import UsageError
from ..integrations.sinks import SinkSet
from ..rundir import read_meta
from ..runs import RunWriter, host_values, to_jsonable

Row = tuple[int, int, str, str, Any]


def _is_loss_key(probe: str, key: str) -> bool:
    return "loss" in key or probe == "train" and key == "loss"


class Recorder:
    """The monitor's writing side of one run directory (one :class:`~codiag.runs.RunWriter`)."""

    def __init__(self, writer: RunWriter, sinks: list[Any] | None = None) -> None:
        self.writer = writer
        self.sink_errors: dict[str, int] = dict(writer.meta.get("sink_errors") or {})
        self.sinks = SinkSet(sinks or [], self.sink_error)
        if self.sinks:
            writer.observers.append(self.sinks.event)
        self.pending: list[Row] = []
        self.step_norms: list[tuple[int, int, Tensor]] = []
        self.nonfinite_seen: set[tuple[str, str]] = set()
        self.probe_errors: dict[str, int] = dict(writer.meta.get("probe_errors") or {})
        self._loss_bad: Tensor | None = None
        self._loss_first_bad: Tensor | None = None

    # -- rows -------------------------------------------------------------------------------
    def log(self, step: int, epoch: int, probe: str, mapping: Mapping[str, Any]) -> None:
        for key, value in mapping.items():
            if isinstance(value, Tensor):
                value = value.detach().reshape(()).float()
            self.pending.append((step, epoch, str(probe), str(key), value))

    def flush(self, rows: list[Row], arrays: list[tuple[int, str, Any]], epoch_now: int
              ) -> dict[tuple[str, str], float]:
        """Move all buffered values to the host (one transfer per device), write and flush them."""
        rows = self.pending + [(s, e, "step_update", "l2", v) for s, e, v in self.step_norms] + rows
        self.pending, self.step_norms = [], []
        values = host_values([r[4] for r in rows])
        event_values: dict[tuple[str, str], float] = {}
        for (step, epoch, probe, key, _), value in zip(rows, values):
            self.writer.log(step, epoch, probe, key, value)
            if not math.isfinite(value) and _is_loss_key(probe, key):
                self.nonfinite(step, epoch, probe, key, value=repr(value))
            event_values[(probe, key)] = value
        self._check_tracked_loss(epoch_now)
        for step, name, arr in arrays:
            self.writer.save_array(name, step, arr)
        self.writer.flush()
        if self.sinks:
            self.sinks.log([(*r[:4], v) for r, v in zip(rows, values)])
        return event_values

    # -- failures -----------------------------------------------------------------------------
    def nonfinite(self, step: int, epoch: int, probe: str, key: str, **fields: Any) -> None:
        """One ``nonfinite_loss`` event per (probe, key); the first sets run.json's ``diverged_at_step``."""
        if (probe, key) in self.nonfinite_seen:
            return
        self.nonfinite_seen.add((probe, key))
        self.writer.event("nonfinite_loss", step=step, epoch=epoch, probe=probe, key=key, **fields)
        first = self.writer.meta.get("diverged_at_step")
        if first is None or step < first:
            self.writer.update(diverged_at_step=int(step))

    def probe_error(self, step: int, epoch: int, probe: str, exc: BaseException) -> None:
        """Count a probe failure (run.json ``probe_errors``), write a ``probe_error`` event, warn."""
        self.probe_errors[probe] = self.probe_errors.get(probe, 0) + 1
        warnings.warn(f"codiag probe {probe} failed at step {step}: {exc!r}", RuntimeWarning, stacklevel=4)
        self.writer.event("probe_error", step=step, epoch=epoch, probe=probe, error=repr(exc),
                          traceback=traceback.format_exc(limit=5))
        self.writer.update(probe_errors=dict(self.probe_errors))

    def sink_error(self, name: str, exc: BaseException) -> None:
        """Count a sink failure (run.json ``sink_errors``), write a ``sink_error`` event, warn once per sink."""
        self.sink_errors[name] = self.sink_errors.get(name, 0) + 1
        if self.sink_errors[name] == 1:
            warnings.warn(f"codiag sink {name} failed: {exc!r} (counted in run.json sink_errors; training goes on)",
                          RuntimeWarning, stacklevel=4)
        self.writer.event("sink_error", sink=name, error=repr(exc), traceback=traceback.format_exc(limit=5))
        self.writer.update(sink_errors=dict(self.sink_errors))

    def track_loss(self, loss: Tensor, step: int) -> None:
        """Count non-finite per-step losses on the device (a count and the first bad step)."""
        bad = ~torch.isfinite(loss.detach()).all()
        if self._loss_bad is None:
            self._loss_bad = torch.zeros((), dtype=torch.long, device=loss.device)
            self._loss_first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
        self._loss_first_bad = torch.where(bad & (self._loss_first_bad < 0),
                                           torch.full_like(self._loss_first_bad, step),
                                           self._loss_first_bad)
        self._loss_bad = self._loss_bad + bad.long()

    def _check_tracked_loss(self, epoch_now: int) -> None:
        if self._loss_bad is None:
            return
        count, first = (int(v) for v in torch.stack([self._loss_bad, self._loss_first_bad]).tolist())
        if count > 0:
            self.nonfinite(first, epoch_now, "train", "step_loss", count=count)

    def close(self, status: str, stats: Mapping[str, Any]) -> None:
        try:
            self.writer.update(monitor_stats=dict(stats), probe_errors=dict(self.probe_errors))
        finally:  # the lock is released and the status written even if the disk is full
            try:
                self.writer.close(status)
            finally:   # then the trackers: the report they log is drawn from the closed run
                if self.sinks:
                    self.sinks.close(status, self.writer.path)


def _describe(obj: Any) -> str | None:
    return None if obj is None else getattr(obj, "__qualname__", None) or repr(obj)


def run_config(mon: Any) -> dict[str, Any]:
    """run.json's ``config`` of a monitored run: the user's ``config=`` over what the monitor knows.

    Method, eps, dataset and model come from the monitor's arguments and the
    model where ``config=`` does not give them, so a monitor run reports like a
    trainer run; ``monitor`` records every monitor setting and the probe sets' indices.
    """
    o, ps, ts = mon.options, mon.probe_set, mon.train_set
    data = next((d for d in mon._data if d is not None), None)
    dataset = getattr(data, "dataset", data)
    method = (getattr(o.method, "name", None) or (type(o.method).__name__ if o.method is not None else None)
              or _describe(mon._attack_fn) or "fgsm")
    filled = {"method": method, "eps": mon.eps, "model": type(mon.network).__name__,
              "dataset": getattr(getattr(dataset, "spec", None), "name", None)
              or ("tensors" if isinstance(data, (tuple, list)) else type(dataset).__name__)}
    settings = {
        "eps": mon.eps, **mon.cadence.describe(), "probes": [p.name for p in mon.probes], "seed": o.seed,
        "probe_pgd": {"steps": o.pgd_steps, "alpha": o.pgd_alpha or mon.eps / 4,
                      "random_start": o.pgd_random_start},
        "attack": _describe(mon._attack_fn) or "fgsm", "method": repr(o.method) if o.method is not None else None,
        "reference_model": o.reference_model is not None, "probe_select": o.probe_select,
        "light_n": len(mon.light_set) if o.early_events else None,
        "output_fn": _describe(o.output_fn), "loss_fn": _describe(o.loss_fn) or "cross_entropy",
        "batch_fn": _describe(o.batch_fn),
        "normalization": mon.normalization.describe(), "compiled": mon.network is not mon.model,
        "probe_set": {"source": ps.source, "n": len(ps), "indices": ps.index.tolist()},
        "confirm_n": o.confirm_n,
        "train_probe_set": None if ts is None else {"source": ts.source, "n": len(ts),
                                                    "indices": ts.index.tolist()},
        "instance_grad_start": "method.start" if callable(getattr(o.method, "start", None)) else "clean",
        "probe_stand_in": getattr(o.method, "probe_stand_in", "") or None,
        "step_update_norms": o.step_update_norms, "detector": mon.alarm.describe(),
    }
    return {**filled, **o.config, "monitor": settings}


#: what may differ when a run is resumed: where it runs and what it shows, not what it computes
RESUME_FREE = frozenset({"out", "device", "device_resolved", "data_root", "download", "progress"})
#: what a guarded run that rolled back has switched to its mitigation (the monitor's record of the attack)
GUARD_SWITCHED = frozenset({"attack", "method", "instance_grad_start", "probe_stand_in"})


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def refuse_other_run(run_dir: Path, config: Mapping[str, Any]) -> None:
    """UsageError (one line) unless ``config`` is the one ``run_dir``'s run.json recorded.

    Compared: eps, method, model, dataset and every key of the user's ``config=``, and every
    monitor setting (probes, cadence, probe PGD, probe sets, ...); keys the recorded run does
    not have (an older codiag) and :data:`RESUME_FREE` are left out, and so are the attack and
    method of a run whose guard rolled back (:data:`GUARD_SWITCHED`).
    """
    meta = read_meta(run_dir)
    recorded = meta.get("config") or {}
    now = json.loads(json.dumps(to_jsonable(config)))
    guard = meta.get("guard") if isinstance(meta.get("guard"), dict) else {}
    # after the guard's roll-back the loop trains with its mitigation: the attack may differ
    free = RESUME_FREE | (GUARD_SWITCHED if guard.get("rollbacks") else frozenset())
    pairs = [(k, recorded[k], v) for k, v in now.items() if k != "monitor" and k in recorded]
    mine, theirs = now.get("monitor") or {}, recorded.get("monitor") or {}
    pairs += [(k, theirs[k], v) for k, v in mine.items() if isinstance(theirs, dict) and k in theirs]
    seen, diff = set(), []
    for key, old, new in pairs:
        if key not in free and old != new and key not in seen:
            seen.add(key)
            diff.append(f"{key}={_short(old)} there, {_short(new)} here")
    if diff:
        raise UsageError(f"monitor: {run_dir} was written with other settings ({'; '.join(diff[:3])}"
                         f"{f' and {len(diff) - 3} more' if len(diff) > 3 else ''}): resume=True continues "
                         "a run with its own eps, probes and config")
