"""Catastrophic-overfitting detection: an online alarm during training and an offline ``detect_co``.

Of the papers' repositories, only ELLE-A's (LIONS-EPFL/ELLE, ``core/utils/train.py``,
the ``onoff`` lambda schedule) reacts online: it keeps the history of its local-linearity
error, and when a batch's error exceeds mean + ``sensitivity`` * std of that history (a
z-score rule) it switches its regulariser on, then lets it decay. That rule watches a
training-loss quantity of its own regulariser, not robust accuracy. The rules below encode
instead the signature every paper describes at the collapse:

* GradAlign Fig. 4 / 11 and ATAS Sec. II: the PGD accuracy falls suddenly
  (CIFAR-10: 40 % -> 0 % within an epoch) *while the FGSM accuracy jumps*
  (43 % -> 87 %): the model now beats its own training attack but not PGD.
  This "FGSM-PGD gap" separates catastrophic overfitting from a run that
  simply diverges (where both accuracies fall).
* GradAlign Sec. 4: gradient alignment collapses (0.95 -> 0.05; codiag's
  threshold is 0.3) together with the PGD accuracy.

Rule ``pgd_collapse`` fires at the first probe event where

    peak_pgd >= min_peak  and  pgd_acc <= (1 - drop) * peak_pgd  and  fgsm_acc - pgd_acc >= min_gap

(``peak_pgd`` = running max of the PGD accuracy over the events so far that measured at
least as many points as the run's first event: a light event's 128 points do not set it,
since the largest of many noisy values drifts above the true one: on MNIST a light event
read 0.36 inside an epoch whose held-out PGD accuracy ended at 0.32 and whose 256-point
event read 0.28, and a later 0.16 was then "half the peak", a false alarm).
Rule ``pgd_drop_persists`` reads the same collapse at a looser line, but only
when two consecutive probe events (at different steps) both show it:

    peak_pgd >= min_peak  and  pgd_acc <= persist_ratio * peak_pgd  and  fgsm_acc - pgd_acc >= persist_gap

The probe set is small (256 points: a PGD accuracy near 0.1 has a sampling
error of about 0.02), so a collapse from a low peak can sit a few points short
of ``pgd_collapse``'s lines at every event; one event past the looser line can
be noise, two in a row much less often (``docs/DETECTOR.md``).
An event that comes near a line without crossing it (past the looser line, or
``pgd_acc <= sig_pgd`` with FGSM ``min_gap`` above it) leaves the detector
``suspect``; the monitor then measures ``robust_acc`` again at once on
``confirm_n`` (1024) points and feeds that as one more event at the same step
(rows of probe ``confirm``, read through :data:`SIGNALS`, so the replay sees it
too): four times the points halve the sampling error, paid only near a line.
Rule ``grad_align_collapse`` fires where gradient alignment, after having
reached ``align_high``, is below ``align_low`` and the PGD accuracy has
fallen by at least ``align_drop`` of its peak (or no PGD accuracy is
recorded). A quarter of the peak is within the probe set's noise (the peak is the
largest of many noisy values), and alignment can decline without a collapse
(``small_cnn`` under SGD one-cycle with label smoothing 0.4: 0.58 -> 0.23 over eight
epochs while PGD accuracy held at 0.35), so the fall of the PGD accuracy must be
confirmed: by the confirming measurement at the same step (the event leaves the
detector ``suspect``), or, where none is taken, by the next event showing the rule
again. Rule ``signature`` needs no peak at all: it fires where

    pgd_acc <= sig_pgd  and  fgsm_acc - pgd_acc >= sig_gap  and  fgsm_acc >= min_fgsm + sig_rise

i.e. PGD accuracy near zero while FGSM accuracy is far above it and has risen
from its own lowest value: the model beats its training attack but not PGD,
which is how the papers define the collapse (GradAlign Fig. 1 and 4). It
catches runs that collapse inside the first epoch, before the PGD accuracy
ever had a peak to fall from (a CNN on Fashion-MNIST at eps 0.25-0.3: PGD
accuracy never above 0.15, FGSM accuracy climbing past the clean accuracy).
It does not fire inside the first epoch: there a run *not yet robust* shows it too
(FGSM accuracy rises before PGD accuracy does; Fashion-MNIST ``small_cnn`` under SGD
one-cycle with label smoothing: PGD 0.05 beside FGSM 0.43 at the end of epoch 1, PGD
0.33 at epoch 2), at two events in a row and on the confirming measurement alike, and
no measurement inside that epoch told the two apart; a collapse is still there at the
first event of epoch 2, where the rule fires.
It does not ask for collapsed gradient alignment: alignment depends on the
architecture (a narrow CNN's stays under 0.45 from initialisation and falls
by a quarter at the collapse, a 4-filter CNN's starts near 0.95), and on the
scorecard's corpora that condition only ever removed true alarms
(``docs/DETECTOR.md``).

Defaults: drop 0.5, min_peak 0.1, min_gap 0.18, persist_ratio 0.6, persist_gap 0.12,
align_low 0.3, align_high 0.5, align_drop 0.25, sig_pgd 0.1, sig_gap 0.25, sig_rise 0.1
(sig_gap, min_gap and the persist_ lines set on the scorecard's development corpora,
``docs/DETECTOR.md``). All
rules read only probe values (``robust_acc`` and ``grad_align``); missing or
NaN values just disable the rule (or condition) that needs them.

Detectors are pluggable: :data:`DETECTORS` maps a name to a class with the
interface of :class:`Detector` (``signals``, ``update``, ``reset``,
``alarm``); ``codiag.monitor(detector="name")`` and ``detect_co(...,
detector="name")`` pick one, and ``benchmarks/detector_eval.py`` scores every
registered detector on the same corpus. Adding one is a :class:`Detector`
subclass plus its line in :data:`DETECTORS`.

The early warning (:class:`COWarning`) is a separate rule set fed the same events before
the alarm: a collapse likely to come (``docs/DETECTOR.md``).

A second online rule, :class:`ELLEADetector` (``codiag.monitor(..., detector="elle_a")``,
or ``"both"``), is ELLE-A's switch rule (Abad Rocamora et al., ICLR 2024; reference
LIONS-EPFL/ELLE ``core/utils/train.py`` lines 216-227) applied to the ``local_linearity``
probe: it fires at the first probe event whose local-linearity error exceeds the mean plus
``sensitivity`` (2) standard deviations of all earlier events' errors (at least
``min_history`` = 3 of them). It reads one forward pass per event instead of PGD.

The default online detector (:class:`CODetector`, ``"codiag"``) fires
once: the monitor writes one ``co_alarm`` event, sets ``mon.co_detected`` and
calls ``on_co``. :func:`detect_co` replays the same rules over a recorded
run's metrics, so the "CO epoch" of a report equals the online alarm.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import pandas as pd

from codiag.probes.fgsm_pgd_cos import FgsmPgdCos
from codiag.probes.grad_align import GradAlign
from codiag.probes.local_linearity import LocalLinearity
from codiag.probes.robust_acc import RobustAcc

from .errors import UsageError

#: (probe, key) of metrics.csv -> the short name the rules use, from the probes' declarations
SIGNALS: dict[tuple[str, str], str] = {
    RobustAcc.pgd_acc.pair: "pgd_acc",
    RobustAcc.fgsm_acc.pair: "fgsm_acc",
    RobustAcc.clean_acc.pair: "clean_acc",
    GradAlign.mean.pair: "grad_align",
    FgsmPgdCos.mean.pair: "fgsm_pgd_cos",
    LocalLinearity.mse.pair: "lin_err",
}
#: the ``probe`` column of a confirming measurement's rows (``robust_acc`` on the monitor's
#: ``confirm_n`` points, run where the detector is ``suspect``); the alarm reads them as an event
CONFIRM = "confirm"
SIGNALS.update({(CONFIRM, key.pair[1]): SIGNALS[key.pair]
                for key in (RobustAcc.pgd_acc, RobustAcc.fgsm_acc, RobustAcc.clean_acc)})
#: how many points an event measured (every monitor event writes it): fewer than the run's first
#: event means a light event, whose value may not set the running PGD peak
SIGNALS.update({("event", "probe_n"): "n", (CONFIRM, "probe_n"): "n"})


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


class Detector:
    """Interface of an online CO detector (one instance per run).

    ``signals`` maps the (probe, key) rows it reads to short names;
    ``update(step, epoch, values)`` takes one probe event's values keyed by
    those names and returns the alarm dict (step, epoch, rule, reason, values)
    the first time it fires, else None; ``reset()`` re-arms it; ``alarm`` holds
    the alarm once fired. ``suspect`` is True after an event that came near a line
    without crossing it: the monitor then measures the accuracies again at once on
    more points (``confirm_n``) and feeds that measurement as one more event.
    """

    name: ClassVar[str] = ""
    signals: ClassVar[Mapping[tuple[str, str], str]] = SIGNALS
    #: the short names it cannot work without (a run that never recorded them cannot be scored)
    needs: ClassVar[tuple[str, ...]] = ()
    alarm: dict[str, Any] | None = None
    suspect: bool = False

    @property
    def fired(self) -> bool:
        return self.alarm is not None

    def update(self, step: int, epoch: int, values: Mapping[str, Any]) -> dict[str, Any] | None:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """Thresholds recorded in run.json."""
        return {}


@dataclass
class CODetector(Detector):
    """Online CO alarm evaluated at each probe event from that event's probe values.

    ``update(step, epoch, values)`` takes the event's values keyed by the
    short names of :data:`SIGNALS` (``pgd_acc``, ``fgsm_acc``, ``grad_align``,
    ...) and returns the alarm dict (step, epoch, rule, reason, values) the
    first time a rule fires, else None. ``reset()`` re-arms it (e.g. after a
    ZeroGrad roll-back restored weights from before the collapse).
    """

    name: ClassVar[str] = "codiag"
    needs: ClassVar[tuple[str, ...]] = ("pgd_acc", "fgsm_acc")

    drop: float = 0.5
    min_peak: float = 0.1
    min_gap: float = 0.18
    persist_ratio: float = 0.6
    persist_gap: float = 0.12
    align_low: float = 0.3
    align_high: float = 0.5
    align_drop: float = 0.25
    sig_pgd: float = 0.1
    sig_gap: float = 0.25
    sig_rise: float = 0.1
    alarm: dict[str, Any] | None = None
    peak_pgd: float | None = None
    peak_align: float | None = None
    min_fgsm: float | None = None
    #: points of the run's first event that recorded how many it measured (the probe set's size)
    full_n: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)
    #: (step, past the looser line) of the last two steps with an event; a second event at one step
    #: (a light event, then the epoch's) replaces the first's verdict
    lows: list[tuple[int | None, bool]] = field(default_factory=list, repr=False)
    #: (step, alignment) of the last event where alignment collapsed with the PGD accuracy down by
    #: ``align_drop``: ``grad_align_collapse`` fires once a confirmation or the next event shows that fall
    align_hold: tuple[int | None, float] | None = None
    #: the last event came near a line without crossing it: past the looser line of
    #: ``pgd_drop_persists``, PGD at most ``sig_pgd`` with FGSM ``min_gap`` above it, or the PGD
    #: fall of ``grad_align_collapse`` awaits its confirmation
    suspect: bool = False

    THRESHOLDS: ClassVar[tuple[str, ...]] = ("drop", "min_peak", "min_gap", "persist_ratio", "persist_gap",
                                             "align_low", "align_high", "align_drop", "sig_pgd", "sig_gap",
                                             "sig_rise")

    def settings(self) -> dict[str, Any]:
        """The thresholds (recorded in run.json)."""
        return {"rule": "codiag", **{k: getattr(self, k) for k in self.THRESHOLDS}}

    def reset(self) -> None:
        """Forget the running extremes and the alarm: the detector can fire again."""
        self.alarm = None
        self.peak_pgd = None
        self.peak_align = None
        self.min_fgsm = None
        self.history.clear()
        self.lows.clear()
        self.align_hold = None
        self.suspect = False

    @staticmethod
    def _before(record: list[tuple[int | None, bool]], step: int | None, verdict: bool) -> bool:
        """Record this event's verdict in ``record``; return the verdict of the previous step's event."""
        if record and step is not None and record[-1][0] == step:
            record.pop()
        before = bool(record) and record[-1][1]
        record.append((step, verdict))
        del record[:-2]
        return before

    def _fell(self, pgd: float | None, fgsm: float | None, ratio: float, gap: float) -> bool:
        """PGD accuracy at or under ``ratio`` x its running peak (>= min_peak) with FGSM >= ``gap`` above it."""
        peak = self.peak_pgd
        return (pgd is not None and fgsm is not None and peak is not None and peak >= self.min_peak
                and pgd <= ratio * peak and fgsm - pgd >= gap)

    def check(self, values: Mapping[str, Any], step: int | None = None,
              epoch: int | None = None) -> tuple[str, str] | None:
        """Evaluate the rules for one event (running extremes include this event); (rule, reason) or None.

        ``step`` tells two events at one step apart from consecutive ones (None: a new step); ``epoch``
        (1-based; None: past the first) says whether the signature may fire (not inside the first)."""
        pgd = _finite(values.get("pgd_acc"))
        fgsm = _finite(values.get("fgsm_acc"))
        align = _finite(values.get("grad_align"))
        n = _finite(values.get("n"))
        if n is not None and self.full_n is None:
            self.full_n = n
        light = n is not None and n < self.full_n
        if pgd is not None and not light:
            self.peak_pgd = pgd if self.peak_pgd is None else max(self.peak_pgd, pgd)
        if align is not None:
            self.peak_align = align if self.peak_align is None else max(self.peak_align, align)
        if fgsm is not None:
            self.min_fgsm = fgsm if self.min_fgsm is None else min(self.min_fgsm, fgsm)
        peak = self.peak_pgd
        low = self._fell(pgd, fgsm, self.persist_ratio, self.persist_gap)
        low_before = self._before(self.lows, step, low)
        sig = (pgd is not None and fgsm is not None and self.min_fgsm is not None and pgd <= self.sig_pgd
               and fgsm - pgd >= self.sig_gap and fgsm >= self.min_fgsm + self.sig_rise)
        self.suspect = low or (pgd is not None and fgsm is not None and pgd <= self.sig_pgd
                               and fgsm - pgd >= self.min_gap)
        if self._fell(pgd, fgsm, 1 - self.drop, self.min_gap):
            return ("pgd_collapse",
                    f"PGD accuracy fell from its peak {peak:.3f} to {pgd:.3f} "
                    f"({(peak - pgd) / peak:.0%} drop) while FGSM accuracy is {fgsm:.3f}")
        align_low = (align is not None and self.peak_align is not None and self.peak_align >= self.align_high
                     and align < self.align_low)
        # with PGD recorded, alignment alone is not enough: robustness must have fallen too, and that
        # fall must be confirmed (on the confirming measurement at this step, or at the next event)
        pgd_fell = (pgd is not None and peak is not None and peak >= self.min_peak
                    and pgd <= (1 - self.align_drop) * peak)
        held, self.align_hold = self.align_hold, None
        if align_low and pgd is None:
            return ("grad_align_collapse", f"gradient alignment fell from {self.peak_align:.3f} to {align:.3f}")
        same_step = held is not None and step is not None and held[0] == step   # None: a new step
        confirms = held is not None and pgd_fell and ((align is None and same_step) or (align_low and not same_step))
        if confirms:
            how = "the confirming measurement" if align is None else "the next event"
            return ("grad_align_collapse",
                    f"gradient alignment fell from {self.peak_align:.3f} to {held[1] if align is None else align:.3f}; "
                    f"PGD accuracy {pgd:.3f} (peak {peak:.3f}), confirmed by {how}")
        if align_low and pgd_fell:
            self.align_hold = (step, align)
            self.suspect = True
        # in the first epoch a run not yet robust shows the signature as a collapse does (FGSM accuracy
        # rises before PGD accuracy); a collapse is still there at the first event of epoch 2
        if sig and (epoch is None or epoch > 1):
            extra = "" if align is None else (f"; gradient alignment {align:.3f} "
                                              f"(peak {self.peak_align:.3f})")
            return ("signature",
                    f"PGD accuracy {pgd:.3f} near zero while FGSM accuracy rose to {fgsm:.3f} "
                    f"(from {self.min_fgsm:.3f}){extra}")
        if low and low_before:
            return ("pgd_drop_persists",
                    f"PGD accuracy at or under {self.persist_ratio:g} of its peak {peak:.3f} at two events in a "
                    f"row, now {pgd:.3f}, while FGSM accuracy is {fgsm:.3f}")
        return None

    def update(self, step: int, epoch: int, values: Mapping[str, Any]) -> dict[str, Any] | None:
        """Feed one probe event; return the alarm the first time a rule fires, else None."""
        clean = {k: _finite(v) for k, v in values.items()}
        self.history.append({"step": int(step), "epoch": int(epoch), **clean})
        if self.alarm is not None:
            self.suspect = False
            return None
        hit = self.check(clean, step, int(epoch))
        if hit is None:
            return None
        self.suspect = False
        rule, reason = hit
        self.alarm = {"step": int(step), "epoch": int(epoch), "rule": rule, "reason": reason,
                      "values": {k: v for k, v in clean.items() if v is not None},
                      "peak_pgd_acc": self.peak_pgd}
        return self.alarm


@dataclass
class ELLEADetector(Detector):
    """ELLE-A's rule as a CO alarm: ``lin_err > mean + sensitivity * std`` of all earlier events' values.

    ``lin_err`` is the ``local_linearity`` probe's ``mse``; std is the population standard
    deviation (``np.std``, as in the reference); the rule needs ``min_history`` earlier values.
    """

    name: ClassVar[str] = "elle_a"
    needs: ClassVar[tuple[str, ...]] = ("lin_err",)

    sensitivity: float = 2.0
    min_history: int = 3
    alarm: dict[str, Any] | None = None
    values: list[float] = field(default_factory=list, repr=False)

    def settings(self) -> dict[str, Any]:
        return {"rule": "elle_a", "sensitivity": self.sensitivity, "min_history": self.min_history}

    def reset(self) -> None:
        self.alarm = None
        self.values.clear()

    def update(self, step: int, epoch: int, values: Mapping[str, Any]) -> dict[str, Any] | None:
        err = _finite(values.get("lin_err"))
        if err is None:
            return None
        past = self.values
        limit = float(np.mean(past) + self.sensitivity * np.std(past)) if past else math.inf
        past.append(err)
        if self.alarm is not None or len(past) - 1 < self.min_history or err <= limit:
            return None
        self.alarm = {"step": int(step), "epoch": int(epoch), "rule": "elle_a",
                      "reason": (f"local-linearity error {err:.3g} exceeds mean + {self.sensitivity:g} std "
                                 f"of the {len(past) - 1} earlier events ({limit:.3g})"),
                      "values": {"lin_err": err}}
        return self.alarm


@dataclass
class AnyDetector(Detector):
    """Several detectors side by side: the alarm is the first that any of them raises."""

    name: ClassVar[str] = "both"

    detectors: Sequence[Detector] = field(default_factory=lambda: [CODetector(), ELLEADetector()])
    alarm: dict[str, Any] | None = None

    def settings(self) -> dict[str, Any]:
        return {"rule": "any", "detectors": [d.settings() for d in self.detectors]}

    @property
    def suspect(self) -> bool:   # type: ignore[override]
        return self.alarm is None and any(getattr(d, "suspect", False) for d in self.detectors)

    def reset(self) -> None:
        self.alarm = None
        for d in self.detectors:
            d.reset()

    def update(self, step: int, epoch: int, values: Mapping[str, Any]) -> dict[str, Any] | None:
        hits = [d.update(step, epoch, values) for d in self.detectors]
        hit = next((h for h in hits if h is not None), None)
        if self.alarm is not None or hit is None:
            return None
        self.alarm = hit
        return hit


@dataclass
class COWarning:
    """An early warning: a collapse is likely to come but the alarm has not fired (yet).

    Fed the same events as the alarm (light events included) while no alarm stands; fires
    once, at the first event where the rule holds, and returns the warning dict (step,
    epoch, reason, rule, signals). One rule, read on the probe set's losses against the
    run's own history (no absolute level of accuracy: levels depend on the model and eps):

    * ``pgd_loss_rising``: the probe PGD loss is ``loss_rise`` (0.15 nats) or more above its
      lowest value at an earlier full event, while the FGSM loss is ``fgsm_fall`` (0.05) or
      more below its value at that event: the model gets better against its training attack
      and worse against PGD. GradAlign Fig. 4 and Fig. 11 (b): at catastrophic overfitting
      "the PGD loss grows by an order of magnitude while the FGSM loss decreases"; the loss
      starts to grow before the accuracies cross the alarm's lines (PGD accuracy sits near
      zero long before it, so its loss still moves where the accuracy cannot). When both
      losses rise the run diverges; that is not the collapse's signature. The same event's
      FGSM-PGD accuracy gap must be ``min_gap`` (0.15, half the label's line in
      ``benchmarks/detector_eval.py``) or more: ATAS runs whose PGD loss rose and fell back
      kept that gap at 0.10-0.15.

    Only full events set the lowest PGD loss (a light event measures half the points and
    its noisy low value would make every later rise look larger); a light event's losses
    may fire the rule. A confirming measurement (more points than the probe set, another
    sample) is not read. ``reset()`` re-arms it (a roll-back). The alarm's rules are
    :class:`CODetector`'s.
    """

    loss_rise: float = 0.15
    fgsm_fall: float = 0.05
    min_gap: float = 0.15
    warning: dict[str, Any] | None = None
    #: points of the run's first event (the probe set's size): fewer is a light event, more a confirmation
    full_n: float | None = None
    #: (step, PGD loss, FGSM loss) of the full event with the lowest PGD loss so far
    low: tuple[int, float, float] | None = None

    THRESHOLDS: ClassVar[tuple[str, ...]] = ("loss_rise", "fgsm_fall", "min_gap")
    #: the probe rows it reads besides the detector's signals
    signals: ClassVar[dict[tuple[str, str], str]] = {RobustAcc.pgd_loss.pair: "pgd_loss",
                                                     RobustAcc.fgsm_loss.pair: "fgsm_loss"}

    def settings(self) -> dict[str, Any]:
        return {"rule": "warning", **{k: getattr(self, k) for k in self.THRESHOLDS}}

    def reset(self) -> None:
        self.warning = None
        self.low = None

    def check(self, step: int, values: Mapping[str, Any]) -> tuple[str, str] | None:
        """Record this event's losses; (rule, reason) where the rule holds."""
        pgd, fgsm, n, pgd_acc, fgsm_acc = (_finite(values.get(k)) for k in ("pgd_loss", "fgsm_loss", "n", "pgd_acc",
                                                                          "fgsm_acc"))
        if n is not None and self.full_n is None:
            self.full_n = n
        kind = "full" if n is None or self.full_n is None or n == self.full_n else "light" if n < self.full_n \
            else "confirm"
        if pgd is None or fgsm is None or kind == "confirm":
            return None
        hit = None
        if self.low is not None:
            at, low_pgd, low_fgsm = self.low
            gap = None if pgd_acc is None or fgsm_acc is None else fgsm_acc - pgd_acc
            if (pgd - low_pgd >= self.loss_rise and low_fgsm - fgsm >= self.fgsm_fall and gap is not None
                    and gap >= self.min_gap):
                hit = ("pgd_loss_rising", f"PGD loss {pgd:.3f} is {pgd - low_pgd:.3f} above its lowest {low_pgd:.3f} "
                       f"(step {at}) while the FGSM loss fell {low_fgsm - fgsm:.3f} to {fgsm:.3f}; FGSM-PGD "
                       f"accuracy gap {gap:.3f}")
        if kind == "full" and (self.low is None or pgd < self.low[1]):
            self.low = (int(step), pgd, fgsm)
        return hit

    def update(self, step: int, epoch: int, values: Mapping[str, Any]) -> dict[str, Any] | None:
        """Feed one event; return the warning the first time the rule holds, else None."""
        hit = self.check(int(step), values)
        if hit is None or self.warning is not None:
            return None
        rule, reason = hit
        self.warning = {"step": int(step), "epoch": int(epoch), "rule": rule, "reason": reason,
                        "signals": {k: f for k, v in values.items() if (f := _finite(v)) is not None}}
        return self.warning


def detect_warning(metrics: Any, detector: Any = True, **thresholds: Any) -> dict[str, Any] | None:
    """The early warning of a recorded run, replayed as the monitor raises it: the first
    :class:`COWarning` of the events before the alarm (``detector``: as for :func:`detect_co`), else None."""
    if hasattr(metrics, "metrics") and not isinstance(metrics, pd.DataFrame):
        metrics = metrics.metrics
    det = make_detector(detector)
    warner = COWarning(**thresholds)
    own = dict(getattr(det, "signals", SIGNALS))
    for step, epoch, values in event_values(metrics, {**own, **COWarning.signals}):
        if det is not None and det.update(step, epoch, {k: v for k, v in values.items()
                                                        if k in own.values()}) is not None:
            return None
        hit = warner.update(step, epoch, values)
        if hit is not None:
            return hit
    return None


#: name -> detector class: ``codiag.monitor(detector=name)``, ``detect_co(..., detector=name)``;
#: ``benchmarks/detector_eval.py`` scores every entry on the same corpus. Adding a detector is a
#: :class:`Detector` subclass and one line here.
DETECTORS: dict[str, Callable[..., Detector]] = {
    CODetector.name: CODetector,
    ELLEADetector.name: ELLEADetector,
    AnyDetector.name: AnyDetector,
}


def make_detector(spec: Any = True, **thresholds: Any) -> Detector | None:
    """The detector ``spec`` names: True or "codiag" (:class:`CODetector`, the default rules),
    "elle_a" (:class:`ELLEADetector`), "both" (either fires), another name from
    :data:`DETECTORS`, a detector object (used as is), or False/None (no detector).
    ``thresholds`` go to the named detector's constructor."""
    if spec is None or spec is False:
        return None
    if isinstance(spec, str) or spec is True:
        name = CODetector.name if spec is True else spec
        if name not in DETECTORS:
            raise UsageError(f"unknown detector {name!r}; choose from {', '.join(DETECTORS)}")
        return DETECTORS[name](**thresholds)
    if callable(getattr(spec, "update", None)) and hasattr(spec, "alarm"):
        return spec
    raise UsageError(f"detector must be True, False, one of {', '.join(DETECTORS)} or a detector object")


def event_values(metrics: pd.DataFrame, signals: Mapping[tuple[str, str], str] = SIGNALS
                 ) -> list[tuple[int, int, dict[str, float]]]:
    """Group a detector's signals of a tidy metrics frame by probe event: [(step, epoch, values)].

    Two events can share a step (a light event, then the epoch's event when the monitor did
    not know the epoch's length): rows are in the order written, and a signal seen twice at
    one step starts the next event, so the replay sees what the online alarm saw.
    """
    if metrics is None or len(metrics) == 0:
        return []
    m = metrics
    pairs = list(zip(m["probe"].astype(str), m["key"].astype(str)))
    sel = m[[p in signals for p in pairs]]
    if sel.empty:
        return []
    out = []
    for (step, epoch), grp in sel.groupby(["step", "epoch"], sort=True):
        values: dict[str, float] = {}
        for p, k, v in zip(grp["probe"].astype(str), grp["key"].astype(str), grp["value"]):
            name = signals[(p, k)]
            if name in values:
                out.append((int(step), int(epoch), values))
                values = {}
            values[name] = float(v)
        out.append((int(step), int(epoch), values))
    out.sort(key=lambda t: (t[0], t[1]))   # stable: events sharing a step keep their order
    return out


def detect_co(metrics: Any, detector: Any = True, **thresholds: Any) -> dict[str, Any] | None:
    """The collapse of a recorded run, or None if the run shows no catastrophic overfitting.

    ``metrics`` is the tidy frame of ``load_run(dir).metrics`` (columns step,
    epoch, probe, key, value) or a Run. Replays the detector (``detector``: as
    for :func:`make_detector`; the default rules unless told otherwise, with
    ``thresholds`` overriding their defaults) over the probe events in step
    order and returns the first alarm: ``{"step", "epoch", "rule", "reason",
    "values", "peak_pgd_acc"}`` where ``epoch`` is the (1-based) epoch of the
    first probe event after the collapse, the "CO epoch" of a report.
    """
    if hasattr(metrics, "metrics") and not isinstance(metrics, pd.DataFrame):
        metrics = metrics.metrics
    det = make_detector(detector, **thresholds)
    for step, epoch, values in event_values(metrics, getattr(det, "signals", SIGNALS)):
        alarm = det.update(step, epoch, values)
        if alarm is not None:
            return alarm
    return None
