"""The online CO alarm: feeds each probe event's values to the run's detector and acts on its alarm.

The detector is pluggable (``codiag.detector.DETECTORS``; ``detector=`` of the
monitor). The first alarm writes one ``co_alarm`` event, is kept as ``alarm`` and is
passed to ``on_co``. Before the alarm, the same events feed the early warning
(:class:`codiag.detector.COWarning`): its first hit writes one ``warning`` event, is kept
as ``warning`` and is passed to ``on_warning``. On resume the detector and the warning are
rebuilt by replaying the recorded events, and the recorded alarm and warning state is kept
(a ``rollback`` after them re-arms both).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from ..detector import SIGNALS, COWarning, Detector, event_values, make_detector
from ..runs import RunWriter


class Alarm:
    """One run's detector and its alarm."""

    def __init__(self, spec: Any, on_co: Callable[[dict[str, Any]], Any] | None = None,
                 on_warning: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self.detector: Detector | None = make_detector(spec)
        self.warner: COWarning | None = COWarning() if self.detector is not None else None
        self.on_co = on_co
        self.on_warning = on_warning
        self.alarm: dict[str, Any] | None = None
        self.warning: dict[str, Any] | None = None

    def describe(self) -> dict[str, Any] | None:
        if self.detector is None:
            return None
        return {"name": getattr(self.detector, "name", "") or type(self.detector).__name__,
                **self.detector.settings()}

    @property
    def suspect(self) -> bool:
        """The last event came near a line of the armed detector: a confirming measurement is due."""
        return self.alarm is None and self.detector is not None and bool(getattr(self.detector, "suspect", False))

    @property
    def signals(self) -> dict[tuple[str, str], str]:
        return dict(getattr(self.detector, "signals", SIGNALS))

    def on_event(self, writer: RunWriter, step: int, epoch: int,
                 values: Mapping[tuple[str, str], float]) -> None:
        """Feed one event's (probe, key) -> value; write and announce the first alarm."""
        if self.detector is None:
            return
        signals = {name: values[pk] for pk, name in self.signals.items() if pk in values}
        if not signals:
            return
        alarm = self.detector.update(step, epoch, signals)
        if alarm is None and self.alarm is None:
            self._warn(writer, step, epoch, {**signals, **{name: values[pk] for pk, name in COWarning.signals.items()
                                                           if pk in values}})
        if alarm is None or self.alarm is not None:
            return
        self.alarm = alarm
        writer.event("co_alarm", **alarm)
        if self.on_co is not None:
            self.on_co(alarm)

    def _warn(self, writer: RunWriter, step: int, epoch: int, signals: Mapping[str, float]) -> None:
        """Feed the early warning (no alarm stands); write and announce its first hit."""
        if self.warner is None:
            return
        warning = self.warner.update(step, epoch, signals)
        if warning is None or self.warning is not None:
            return
        self.warning = warning
        writer.event("warning", **warning)
        if self.on_warning is not None:
            self.on_warning(warning)

    def reset(self) -> None:
        """Re-arm (after a roll-back to weights from before the collapse)."""
        self.alarm = None
        self.warning = None
        if self.detector is not None:
            self.detector.reset()
        if self.warner is not None:
            self.warner.reset()

    def replay(self, metrics: Any, events: list[dict[str, Any]]) -> None:
        """On resume: rebuild the detector from the recorded probe events, and its alarm state.

        The last ``co_alarm`` stands unless a ``rollback`` followed it (the
        roll-back re-armed the detector; the replay restarts after it).
        """
        if self.detector is None:
            return
        kinds = [e.get("kind") for e in events]
        last_alarm = max((i for i, k in enumerate(kinds) if k == "co_alarm"), default=-1)
        last_rollback = max((i for i, k in enumerate(kinds) if k == "rollback"), default=-1)
        after = int(events[last_rollback].get("step", -1)) if last_rollback >= 0 else -1
        last_warning = max((i for i, k in enumerate(kinds) if k == "warning"), default=-1)
        own = self.signals
        for step, epoch, values in event_values(metrics, {**own, **COWarning.signals}):
            mine = {k: v for k, v in values.items() if k in own.values()}
            if step > after and self.detector.update(step, epoch, mine) is None and self.detector.alarm is None:
                if self.warner is not None:
                    self.warner.update(step, epoch, values)
        if self.warner is not None:
            if last_warning > last_rollback:
                self.warning = self.warner.warning = {k: v for k, v in events[last_warning].items()
                                                      if k not in ("kind", "time")}
            else:
                self.warner.warning = None
        if last_alarm > last_rollback:  # written (and perhaps acted on) before the interruption
            self.alarm = self.detector.alarm = {k: v for k, v in events[last_alarm].items()
                                                if k not in ("kind", "time")}
        else:
            self.detector.alarm = None  # none written: it may fire (and be written) from now on
