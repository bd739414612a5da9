"""Sinks: mirror a monitored run into the tracker the user watches (``codiag.monitor(..., sinks=[...])``).

A sink is any object with three methods (the protocol, :class:`Sink`):

* ``log(step, rows)``: the metric rows of one step, ``{"codiag/<probe>/<key>": value}``;
* ``event(kind, fields)``: every event of the run (``events.jsonl``), plus ``"start"`` (``run_dir``,
  ``name``, ``config``, ``resumed``) before anything else and ``"report"`` (``path`` of the HTML report's
  folder) before ``close`` when the sink has ``report = True``;
* ``close(status)``: the run's end status ("finished", "failed", "interrupted").

The run directory stays the record: a sink only mirrors it, in the order it is written. A sink that
raises is counted (run.json ``sink_errors``, a ``sink_error`` event, one warning per sink) and shown
on the report page like a probe failure; it never ends training. Built-in sinks are named by string
(:data:`SINKS`) and import their library only when the run starts.
"""
from __future__ import annotations

import importlib
import importlib.util
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

from ..errors import UsageError

#: name -> (module under codiag.integrations, class, the package it needs, the extra that installs it)
SINKS: dict[str, tuple[str, str, str, str]] = {
    "tensorboard": ("tensorboard", "TensorBoardSink", "tensorboard", "tensorboard"),
    "wandb": ("wandb", "WandbSink", "wandb", "wandb"),
    "mlflow": ("mlflow", "MlflowSink", "mlflow", "mlflow"),
}

#: events a tracker shows as an alert (W&B), a tag (MLflow) or a text entry (TensorBoard)
ALERT_KINDS = ("co_alarm", "warning", "nonfinite_loss", "probe_error")


@runtime_checkable
class Sink(Protocol):
    """What ``sinks=[...]`` accepts besides a name: three methods, no base class needed."""

    def log(self, step: int, rows: Mapping[str, float]) -> None: ...

    def event(self, kind: str, fields: Mapping[str, Any]) -> None: ...

    def close(self, status: str) -> None: ...


def make_sink(spec: Any) -> Any:
    """A sink object from a name in :data:`SINKS` or an object with the protocol; else one-line UsageError."""
    if isinstance(spec, str):
        if spec not in SINKS:
            raise UsageError(f"monitor: unknown sink {spec!r}; choose from {', '.join(sorted(SINKS))} "
                             "or pass an object with log(step, rows), event(kind, fields), close(status)")
        module, cls, package, extra = SINKS[spec]
        if importlib.util.find_spec(package) is None:
            raise UsageError(f"monitor: sink {spec!r} needs the package {package}: pip install 'codiag[{extra}]'")
        return getattr(importlib.import_module(f"codiag.integrations.{module}"), cls)()
    if not isinstance(spec, Sink):
        raise UsageError(f"monitor: a sink must be a name ({', '.join(sorted(SINKS))}) or an object with "
                         f"log(step, rows), event(kind, fields) and close(status); got {type(spec).__name__}")
    return spec


def resolve_sinks(specs: Any) -> list[Any]:
    """``sinks=`` of the monitor as sink objects: a name, an object, or a sequence of them."""
    if specs is None:
        return []
    if isinstance(specs, str) or not isinstance(specs, Sequence):
        specs = [specs]
    return [make_sink(s) for s in specs]


def sink_name(sink: Any) -> str:
    return str(getattr(sink, "name", "") or type(sink).__name__)


def tag(probe: str, key: str) -> str:
    """Where a metric row lands in a tracker."""
    return f"codiag/{probe}/{key}"


def describe(kind: str, fields: Mapping[str, Any]) -> str:
    """One line for an alert, a tag or a text entry: the event's reason (or error) and where it happened."""
    where = f"step {fields['step']}" if "step" in fields else ""
    if fields.get("epoch") is not None and where:
        where += f", epoch {fields['epoch']}"
    what = next((str(fields[k]) for k in ("reason", "message", "error") if fields.get(k)), "")
    if not what:
        what = ", ".join(f"{k}={v}" for k, v in fields.items() if k not in ("step", "epoch", "time", "traceback"))
    return f"codiag {kind}" + (f" at {where}" if where else "") + (f": {what}" if what else "")


class SinkSet:
    """The run's sinks: each call goes to every sink; a failure is counted through ``on_error``."""

    def __init__(self, sinks: Sequence[Any], on_error: Callable[[str, BaseException], None]) -> None:
        self.sinks = list(sinks)
        self.on_error = on_error
        self._busy = False   # an error reported while a call is under way is not mirrored again

    def __bool__(self) -> bool:
        return bool(self.sinks)

    def _each(self, method: str, *args: Any) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            for sink in self.sinks:
                try:
                    getattr(sink, method)(*args)
                except Exception as exc:  # a tracker's failure never ends training
                    self.on_error(sink_name(sink), exc)
        finally:
            self._busy = False

    def start(self, run_dir: Path, config: Mapping[str, Any], resumed: bool) -> None:
        self._each("event", "start", {"run_dir": str(run_dir), "name": run_dir.resolve().name,
                                      "config": dict(config), "resumed": resumed})

    def log(self, rows: Sequence[tuple[int, int, str, str, float]]) -> None:
        """Written rows ``(step, epoch, probe, key, value)``, one ``log`` per step in step order."""
        by_step: dict[int, dict[str, float]] = {}
        for step, _, probe, key, value in rows:
            by_step.setdefault(int(step), {})[tag(probe, key)] = float(value)
        for step in sorted(by_step):
            self._each("log", step, by_step[step])

    def event(self, kind: str, fields: Mapping[str, Any]) -> None:
        if kind != "sink_error":
            self._each("event", kind, {k: v for k, v in fields.items() if k != "kind"})

    def close(self, status: str, run_dir: Path, report: bool = True) -> None:
        """After the run directory is closed: draw the report for sinks that log it, then close each sink.

        The run is closed by now, so a failure here is a warning only (run.json is final).
        """
        self.on_error = _warn
        if report and any(getattr(s, "report", False) for s in self.sinks) and status in ("finished", "failed"):
            try:
                from codiag.reports import report
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    page = report(run_dir, run_dir / "report", analytic=False)   # the run's own figures
                for sink in self.sinks:
                    if getattr(sink, "report", False):
                        try:
                            sink.event("report", {"path": str(page.parent)})
                        except Exception as exc:
                            _warn(sink_name(sink), exc)
            except Exception as exc:
                _warn("report", exc)
        self._each("close", status)


def _warn(name: str, exc: BaseException) -> None:
    warnings.warn(f"codiag sink {name} failed at close: {exc!r}\n{traceback.format_exc(limit=3)}",
                  RuntimeWarning, stacklevel=3)


__all__ = ["ALERT_KINDS", "SINKS", "Sink", "SinkSet", "describe", "make_sink", "resolve_sinks", "tag"]
