"""``codiag train --guard POLICY``: the trainer's side of the CO guard (:mod:`codiag.monitoring.guard`).

The guard changes training on purpose (the only codiag feature that does). On the
online alarm the monitor restores the model and optimizer of the last healthy probe
event; this module gives it the rest of the trainer's state at that event (the method's
state and the schedule position, in epochs) and, at the roll-back, switches the run to the
policy's method for the rest of training:

* ``n_fgsm`` / ``gradalign`` / ``atas``: that method, with its validated hyper-parameters for
  the dataset (``codiag.methods.settings.nearest_hparams``; ATAS's per-sample store starts empty
  at the switch);
* ``halve-step``: the run's own method with half its step and, for methods with a random
  start, half its noise;
* ``auto`` (``--guard`` alone): the validated mitigation for the dataset and model
  (``codiag.methods.settings.guard_mitigation``).

Training goes on from the restored event's place in the schedule: after an event at an epoch's
end, at the next epoch's start; after one inside an epoch (``--every N`` steps), at the batch after
it, with that epoch's order and augmentation (the loader replays the epoch's tail), so a roll-back
re-trains only the steps since the event. The weight average of ``--weight-averaging`` (an EMA
updated every step) goes back to its state at the restored event, so the steps rolled back leave
no trace in it; so does the checkpoint ``--select best`` keeps (a model of the discarded stretch
is not selected). The guard's state (which method runs, its snapshot with the EMA's, its
roll-backs, a pending place inside an epoch) goes into the resumable checkpoint as weights-only
data, so ``--resume`` after a roll-back continues exactly.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

from .errors import UsageError
from .methods import METHODS, Method, get_method
from .methods.settings import guard_mitigation, nearest_hparams
from .monitoring.guard import Guard
from .protocol import Extras
from .snapshot import cpu_copy

POLICIES = ("auto", "n_fgsm", "gradalign", "atas", "halve-step")


def canonical_policy(name: str) -> str:
    """``halve_step`` -> ``halve-step``; UsageError for an unknown policy."""
    key = str(name).strip().lower().replace("_", "-")
    key = {"n-fgsm": "n_fgsm"}.get(key, key)
    if key not in POLICIES:
        raise UsageError(f"unknown guard policy {name!r}; choose from {', '.join(POLICIES)}")
    return key


def check_policy(policy: str | None, method: str, detector: str) -> str | None:
    """The canonical policy for a run of ``method`` (None: no guard); UsageError where it cannot act."""
    if policy is None:
        return None
    policy = canonical_policy(policy)
    if detector == "none":
        raise UsageError(f"guard={policy!r} acts on the online CO alarm: it needs a detector "
                         "(not detector='none')")
    if method == "zerograd_rollback":
        raise UsageError(f"guard={policy!r}: zerograd_rollback rolls back on the alarm itself; use one of the two")
    if policy == "halve-step" and "step" not in METHODS[method]._all_defaults():
        raise UsageError(f"guard='halve-step': method {method!r} has no step to halve")
    return policy


class TrainerGuard:
    """The trainer's guard: the policy for the monitor, the pending roll-back, the switched method.
    Without ``cfg.guard`` it is inert (no policy, never pending)."""

    def __init__(self, cfg: Any, num_samples: int, method: Method, extras: Extras | None = None) -> None:
        self.cfg, self.num_samples = cfg, num_samples
        # the EMA of --weight-averaging and the checkpoint of --select best: rolled back with the run
        self.averaged = None if extras is None else extras.averaged
        self.best = None if extras is None else extras.best
        self.enabled = cfg.guard is not None
        self.policy_name = canonical_policy(cfg.guard) if self.enabled else None
        self.mitigation = (guard_mitigation(cfg.dataset, cfg.eps, cfg.model) if self.policy_name == "auto"
                           else self.policy_name)
        self.method = method
        self.mitigated = False
        self.position = 0          # the schedule epoch a snapshot taken at an epoch's end returns to
        self.pending: dict[str, Any] | None = None
        self.restart: dict[str, int] | None = None   # a roll-back's place inside an epoch, until trained from

    def policy(self) -> Guard | None:
        """The monitor's ``guard=`` (None without ``--guard``)."""
        if not self.enabled:
            return None
        return Guard(mitigation=self.mitigation, max_rollbacks=3, extra_state=self.extra_state)

    def extra_state(self) -> dict[str, Any]:
        state = {"position": self.position, "mitigated": self.mitigated, "method": self.method.state_dict()}
        if self.averaged is not None:
            state["averaged"] = self.averaged.state_dict()
        if self.best is not None:
            state["best"] = self.best.state_dict()
        return state

    def callback(self) -> Any:
        """The monitor's ``on_co`` (None without ``--guard``)."""
        return self.on_co if self.enabled else None

    def after_step(self, guard: Any, before: int, epoch: int, offset: int, loader: Any) -> None:
        """After the trainer's step (the method's and the weight average's updates done): a snapshot the
        monitor took inside it (``guard.snapshot.step > before``, at an optimizer step hook) gets the
        trainer's state of now, and the place to go on from: batch ``offset`` of ``epoch`` (whose
        order ``loader`` is drawing now), or the next epoch's start after the epoch's last batch."""
        snapshot = getattr(guard, "snapshot", None)
        if not self.enabled or snapshot is None or snapshot.step <= before:
            return
        place = ({"position": epoch + 1} if offset >= len(loader)
                 else {"position": epoch, "offset": offset, "loader_epoch": loader.epoch - 1})
        snapshot.extra = cpu_copy({**self.extra_state(), **place})

    def on_co(self, info: Mapping[str, Any]) -> None:
        """The monitor's ``on_co``: a roll-back is applied by the loop after the current step."""
        if info.get("action") == "rollback":
            self.pending = dict(info)

    def mitigated_method(self) -> Method:
        """The method the run switches to (its own generator, seeded by the run's seed)."""
        cfg = self.cfg
        common = {"seed": cfg.seed, "num_samples": self.num_samples, "epochs": cfg.epochs}
        if self.mitigation == "halve-step":
            args = dict(cfg.method_args)
            cls = METHODS[cfg.method]
            defaults = cls._all_defaults()
            args["step"] = 0.5 * float(args.get("step", defaults["step"]))
            noise = cls.start_radius if isinstance(cls.start_radius, str) else None
            if noise is not None and args.get(noise, defaults.get(noise)) is not None:
                args[noise] = 0.5 * float(args.get(noise, defaults[noise]))
            return get_method(cfg.method, cfg.eps, **{**common, **args})
        return get_method(self.mitigation, cfg.eps,
                          **{**common, **nearest_hparams(self.mitigation, cfg.dataset, cfg.eps)})

    def switch(self) -> tuple[Method, int]:
        """Apply the pending roll-back: (the method to train with, the schedule epoch to resume at)."""
        info, self.pending = self.pending or {}, None
        extra = info.get("extra") or {}
        method = self.mitigated_method()
        if self.averaged is not None and "averaged" in extra:
            self.averaged.load_state_dict(extra["averaged"])    # copies into the EMA's own tensors
        if self.best is not None and "best" in extra:
            self.best.load_state_dict(copy.deepcopy(extra["best"]))   # a copy: the snapshot stays as it was
        if extra.get("mitigated"):   # the restored state was already the mitigation's: its state too
            method.load_state_dict(extra["method"])
        self.method, self.mitigated = method, True
        offset = int(extra.get("offset", 0))
        self.restart = {"offset": offset, "loader_epoch": int(extra["loader_epoch"])} if offset else None
        return method, int(extra.get("position", 0))

    def start_epoch(self, loader: Any) -> int:
        """At an epoch's start: the batch to start from (0, or a pending roll-back's place inside the
        epoch, for which ``loader`` replays that epoch from there)."""
        restart, self.restart = self.restart, None
        if restart is None:
            return 0
        loader.set_epoch(restart["loader_epoch"], start=restart["offset"])
        return restart["offset"]

    def state_dict(self) -> dict[str, Any] | None:
        if not self.enabled:
            return None
        return {"mitigated": self.mitigated, **({"restart": dict(self.restart)} if self.restart else {})}

    def resumed_method(self, state: Mapping[str, Any] | None, method: Method) -> Method:
        """On resume: the method the checkpoint's state belongs to (the mitigation after a roll-back),
        and a roll-back's place inside an epoch that training had not gone on from yet."""
        if state and state.get("mitigated"):
            self.method, self.mitigated = self.mitigated_method(), True
        else:
            self.method = method
        restart = (state or {}).get("restart")
        self.restart = None if not restart else {k: int(restart[k]) for k in ("offset", "loader_epoch")}
        return self.method
