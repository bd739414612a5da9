"""The CO guard (``guard=``): on the alarm, roll back to the last healthy probe event and mitigate.

**This is the one place where codiag changes training on purpose**, and only when asked:
without ``guard=`` the monitor never touches the model (docs/CONVENTIONS.md).

After every full probe event that is healthy (no alarm, none standing, and not near a line
of the detector: its ``suspect`` is off) the guard keeps a CPU snapshot of the model and
optimizer state (:class:`codiag.snapshot.Snapshot`), with the ``extra_state()`` of its
policy (codiag's trainer: the method's state and the schedule position). When the alarm
fires it restores that snapshot exactly, writes a ``rollback`` event, re-arms the detector
and hands the user's ``on_co(info)`` what it restored and the policy's suggested
``mitigation`` (without ``on_co`` it warns), so that the loop continues with a method that
does not collapse. This is ZeroGrad's roll-back (ZeroGrad paper, Sec. 5.2: "resuming from
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

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..errors import UsageError
from ..snapshot import Snapshot

TRIGGERS = ("alarm", "warning")


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
    """One run's guard: its last healthy snapshot, its roll-backs, its status."""

    def __init__(self, policy: Guard) -> None:
        self.policy = policy
        self.snapshot: Snapshot | None = None
        self.rollbacks: list[dict[str, Any]] = []
        self.status = "watching"     # "rolled_back" after one, "collapsed" once max_rollbacks are used up

    def observe(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, epoch: int,
                healthy: bool) -> None:
        """After a full probe event: keep the state as the last healthy one if the event was healthy."""
        if healthy and self.status != "collapsed":
            extra = self.policy.extra_state() if self.policy.extra_state is not None else {}
            self.snapshot = Snapshot.take(model, optimizer, step, epoch, extra)

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
                "rollbacks": [dict(r) for r in self.rollbacks], "status": self.status}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        snap = state.get("snapshot")
        self.snapshot = None if snap is None else Snapshot.from_state(snap)
        self.rollbacks = [dict(r) for r in state.get("rollbacks", [])]
        self.status = str(state.get("status", "watching"))
