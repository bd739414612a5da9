"""The CO guard (``guard=``): on the alarm, roll back to the last healthy probe event and mitigate.

**This is the one place where codiag changes training on purpose**, and only when asked:
without ``guard=`` the monitor never touches the model (docs/CONVENTIONS.md).

After every full probe event that is a *roll-back target* the guard keeps a CPU snapshot of
the model and optimizer state (:class:`codiag.snapshot.Snapshot`), with the ``extra_state()``
of its policy (codiag's trainer: the method's state and the schedule position); only the latest
is kept. A full event is a target where no alarm stands, no roll-back happened in it, and its
robust accuracies (the confirming measurement's where one ran) show no collapse:

* its PGD accuracy is at least ``KEEP_RATIO`` (0.6, the detector's looser line
  ``persist_ratio``) of the best full event's on the trajectory trained now (since the start,
  or up to the restored event), and
* it is not in the collapse signature: not PGD accuracy <= ``SIG_PGD`` (0.1) with FGSM accuracy
  ``SIG_GAP`` (0.25) or more above it (GradAlign Fig. 1 and 4: the model beats its training
  attack but not PGD). The lines are :class:`codiag.detector.CODetector`'s defaults.

An event without PGD and FGSM accuracies is a target where the detector is not ``suspect``.
An event the detector is only ``suspect`` of (near a line: PGD <= 0.1 with FGSM 0.18 above it)
can be a target: in the first epochs that is as often a run *not yet robust*, and going past it
would send the roll-back back to the initial weights.

When the alarm fires the guard restores that snapshot exactly, writes a ``rollback`` event,
re-arms the detector and hands the user's ``on_co(info)`` what it restored and the policy's
suggested ``mitigation`` (without ``on_co`` it warns), so that the loop continues with a method
that does not collapse. This is ZeroGrad's roll-back (ZeroGrad paper, Sec. 5.2: "resuming from
a saved checkpoint at the epoch right before catastrophic overfitting" with a stronger
setting) driven by the monitor's alarm instead of a method's own flag. After
``max_rollbacks`` roll-backs the next alarm is not undone: the guard writes a
``collapsed`` event and ``mon.collapsed`` turns True (codiag's trainer then stops; the best
checkpoint stays).

The policy's ``on`` names what it acts on: ``("alarm",)`` by default; ``"warning"`` adds
the monitor's early warning (``mon.co_warning``), fed through :meth:`GuardState.act` the
same way. The guard's state (:meth:`GuardState.state_dict`) is weights-only data (no callables,
no paths), so a resumable checkpoint can hold it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..detector import CONFIRM, CODetector
from ..errors import UsageError
from ..snapshot import Snapshot

TRIGGERS = ("alarm", "warning")
#: a roll-back target's PGD accuracy is at least this share of the best so far (the detector's looser line)
KEEP_RATIO = CODetector.persist_ratio
#: a roll-back target is not in the collapse signature: PGD accuracy at most SIG_PGD with FGSM SIG_GAP above it
SIG_PGD, SIG_GAP = CODetector.sig_pgd, CODetector.sig_gap


def robust_accuracies(values: Mapping[tuple[str, str], float]) -> tuple[float | None, float | None]:
    """(PGD, FGSM) accuracy of one event's values: the confirming measurement's (more points) where it ran."""
    for probe in (CONFIRM, "robust_acc"):
        pgd, fgsm = values.get((probe, "pgd_acc")), values.get((probe, "fgsm_acc"))
        if pgd is not None and fgsm is not None and math.isfinite(pgd) and math.isfinite(fgsm):
            return float(pgd), float(fgsm)
    return None, None


@dataclass
class Guard:
    """What the guard does: the mitigation it suggests, how often it may roll back, what it acts on.

    ``mitigation``: a name passed on to ``on_co`` (codiag's trainer: ``n_fgsm``,
    ``gradalign``, ``halve-step``); ``max_rollbacks`` (3); ``on`` (``("alarm",)``);
    ``extra_state``: called at each snapshot, its dict (weights-only data) comes back in
    ``on_co``'s ``info["extra"]`` at the roll-back.
    """

    mitigation: str | None = None
    max_rollbacks: int = 3
    on: tuple[str, ...] = ("alarm",)
    extra_state: Callable[[], dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_rollbacks, bool) or not isinstance(self.max_rollbacks, int) or self.max_rollbacks < 0:
            raise UsageError(f"guard: max_rollbacks must be a non-negative integer, got {self.max_rollbacks!r}")
        self.on = (self.on,) if isinstance(self.on, str) else tuple(self.on)
        bad = [t for t in self.on if t not in TRIGGERS]
        if bad or not self.on:
            raise UsageError(f"guard: on must name some of {', '.join(TRIGGERS)}, got {self.on!r}")
        if self.extra_state is not None and not callable(self.extra_state):
            raise UsageError("guard: extra_state must be callable")

    @classmethod
    def from_spec(cls, spec: Any) -> "Guard | None":
        """``guard=`` of the monitor: None/False (off), True (restore and warn), a mitigation name,
        a dict of :class:`Guard`'s fields, or a Guard."""
        if spec is None or spec is False:
            return None
        if isinstance(spec, Guard):
            return spec
        if spec is True:
            return cls()
        if isinstance(spec, str):
            return cls(mitigation=spec)
        if isinstance(spec, dict):
            try:
                return cls(**spec)
            except TypeError as e:
                raise UsageError(f"guard: {e}") from None
        raise UsageError(f"guard must be True, a mitigation name, a dict or a codiag Guard, got {type(spec).__name__}")

    def describe(self) -> dict[str, Any]:
        return {"mitigation": self.mitigation, "max_rollbacks": self.max_rollbacks, "on": list(self.on)}


class GuardState:
    """One run's guard: its last roll-back target's snapshot, its roll-backs, its status."""

    def __init__(self, policy: Guard) -> None:
        self.policy = policy
        self.snapshot: Snapshot | None = None
        self.rollbacks: list[dict[str, Any]] = []
        self.status = "watching"     # "rolled_back" after one, "collapsed" once max_rollbacks are used up
        self.peak: float | None = None            # best full-event PGD accuracy of the trajectory trained now
        self.snapshot_peak: float | None = None   # ... up to the snapshot's event (the peak after its restore)

    def target(self, values: Mapping[tuple[str, str], float], suspect: bool = False) -> bool:
        """Whether a full event with ``values`` (no alarm standing) is a roll-back target; updates the peak."""
        pgd, fgsm = robust_accuracies(values)
        if pgd is None or fgsm is None:
            return not suspect
        self.peak = pgd if self.peak is None else max(self.peak, pgd)
        return pgd >= KEEP_RATIO * self.peak and not (pgd <= SIG_PGD and fgsm - pgd >= SIG_GAP)

    def observe(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, epoch: int,
                values: Mapping[tuple[str, str], float], alarmed: bool = False, suspect: bool = False) -> None:
        """After a full probe event: keep the state if the event is a roll-back target (:meth:`target`).

        ``alarmed``: an alarm stands, or the event rolled back; ``suspect``: the detector's, read only
        where ``values`` hold no PGD and FGSM accuracies."""
        if alarmed or self.status == "collapsed":
            return
        if self.target(values, suspect):
            extra = self.policy.extra_state() if self.policy.extra_state is not None else {}
            self.snapshot = Snapshot.take(model, optimizer, step, epoch, extra)
            self.snapshot_peak = self.peak

    def act(self, model: nn.Module, optimizer: torch.optim.Optimizer, trigger: dict[str, Any],
            kind: str = "alarm") -> dict[str, Any] | None:
        """Restore the last healthy snapshot for ``trigger`` (the alarm dict); the ``info`` for ``on_co``.

        None where the policy does not act on ``kind``. ``info["action"]`` is ``"rollback"``, or
        ``"none"`` (status ``collapsed``) where ``max_rollbacks`` are used up or no snapshot exists.
        """
        if kind not in self.policy.on or self.status == "collapsed":
            return None
        base = {"trigger": kind, "alarm": dict(trigger), "mitigation": self.policy.mitigation,
                "max_rollbacks": self.policy.max_rollbacks}
        if len(self.rollbacks) >= self.policy.max_rollbacks or self.snapshot is None:
            self.status = "collapsed"
            why = "max_rollbacks reached" if self.snapshot is not None else "no healthy state to restore"
            return {**base, "action": "none", "status": self.status, "reason": why,
                    "rollbacks": len(self.rollbacks)}
        self.snapshot.restore(model, optimizer)
        self.peak = self.snapshot_peak
        record = {"restored_step": self.snapshot.step, "restored_epoch": self.snapshot.epoch,
                  "alarm_step": int(trigger.get("step", -1)), "alarm_rule": str(trigger.get("rule", "")),
                  "mitigation": self.policy.mitigation}
        self.rollbacks.append(record)
        self.status = "rolled_back"
        return {**base, **record, "action": "rollback", "status": self.status, "rollbacks": len(self.rollbacks),
                "extra": self.snapshot.extra}

    def summary(self) -> dict[str, Any]:
        """run.json's ``guard``: the policy, the roll-backs made, the status."""
        return {**self.policy.describe(), "status": self.status, "rollbacks": len(self.rollbacks),
                "history": [dict(r) for r in self.rollbacks]}

    def state_dict(self) -> dict[str, Any]:
        """Weights-only data for a resumable checkpoint (the policy itself is the caller's)."""
        return {"snapshot": None if self.snapshot is None else self.snapshot.to_state(),
                "rollbacks": [dict(r) for r in self.rollbacks], "status": self.status,
                "peak": self.peak, "snapshot_peak": self.snapshot_peak}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        snap = state.get("snapshot")
        self.snapshot = None if snap is None else Snapshot.from_state(snap)
        self.rollbacks = [dict(r) for r in state.get("rollbacks", [])]
        self.status = str(state.get("status", "watching"))
        self.peak, self.snapshot_peak = _float(state.get("peak")), _float(state.get("snapshot_peak"))


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
