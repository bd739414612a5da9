"""ZeroGrad with roll-back (Golgooni et al., ZeroGrad paper, Sec. 5.2 and Appendix B.2).

"We choose an approximate q0 ... save checkpoints during training ... Once faced
by catastrophic overfitting, we stop the training, increase q to q1 > q0 ... and
continue the training, resuming from a saved checkpoint at the epoch right
before catastrophic overfitting." B.2 starts at ``q0 = 0.25`` and raises it to
``q1 = 0.45`` on CIFAR-10 and CIFAR-100 -- the defaults here (``qs = (0.25, 0.45)``).

Trainer hook (called after the monitor's epoch end, so the CO alarm of this
epoch is known)::

    rolled_back = method.on_epoch_end(epoch, model, optimizer, mon)   # or co_detected=bool

* without a CO signal it checkpoints model + optimizer state (in memory, on
  the CPU, or as files under ``checkpoint_dir``) and returns False;
* on a *new* CO signal it restores the checkpoint taken ``back`` epoch ends
  before this one (default 1: the end of the previous epoch, "the epoch right
  before CO"), moves to the next q of ``qs``, records ``self.last_rollback``
  (a dict for the run's events.jsonl ``rollback`` event) and returns True.
  ``self.resume_epoch`` is the first epoch after the restored checkpoint, for
  trainers that want to re-run the lost epochs; continuing with the next epoch
  is also fine (the lr schedule just moves on).

The signal may be a bool or any object with ``co_detected`` (the monitor). A
monitor's flag counts as new when its value differs from the one this method
last acted on (rising edge), so a sticky alarm does not roll back every epoch.
At most ``max_rollbacks`` (3) roll-backs are made.
"""
from __future__ import annotations

import contextlib
import os
from collections import deque
from typing import Any

import torch
from torch import nn

from .. import checkpoint
from ..checkpoint import CheckpointError
from ..snapshot import cpu_copy, load_model_state
from .base import StateValue, register
from .checks import SHARE, Integer, Optional, Several, Text
from .zerograd import ZeroGrad

#: what the checkpoint list holds for a checkpoint kept as a file (the file is named by the epoch)
ON_DISK = "on disk"


@register
class ZeroGradRollback(ZeroGrad):
    """ZeroGrad that starts at q0 = qs[0] (0.25) and, on a CO alarm, restores the last checkpoint
    before it and continues with the next q (0.45)."""

    name = "zerograd_rollback"
    from_config = ("checkpoint_dir",)
    defaults: dict[str, Any] = {"qs": (0.25, 0.45), "q": None, "back": 1, "keep": 3,
                                "max_rollbacks": 3, "checkpoint_dir": None}
    checks = {"qs": Several(SHARE), "q": Optional(SHARE), "back": Integer(1), "keep": Integer(1),
              "max_rollbacks": Integer(0), "checkpoint_dir": Optional(Text())}

    def __init__(self, eps: float, **hparams: Any) -> None:
        super().__init__(eps, **hparams)
        if self.q is None:  # start at the first q of the schedule
            self.q = self.hparams["q"] = self.qs[0]
        self.stage = 0
        self.rollbacks = 0
        self.resume_epoch: int | None = None
        self.last_rollback: dict[str, Any] | None = None
        self._checkpoints: deque[tuple[int, Any]] = deque(maxlen=max(int(self.keep), int(self.back)))
        self._acted_on: Any = None

    # ----------------------------------------------------------------- checkpoints
    def _file(self, epoch: Any) -> str:
        """The file of the checkpoint of ``epoch``: named from the live ``checkpoint_dir`` and an
        integer, never from a path stored in a state (a resumed state is data, not a location)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise CheckpointError(f"a zerograd_rollback checkpoint epoch is {epoch!r}, not an integer")
        return os.path.join(str(self.checkpoint_dir), f"zerograd-rollback-{epoch:04d}.pt")

    def _save(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        payload: Any = {"model": cpu_copy(model.state_dict()), "optimizer": cpu_copy(optimizer.state_dict()),
                        "q": float(self.q), "epoch": epoch}
        if self.checkpoint_dir:
            os.makedirs(self.checkpoint_dir, exist_ok=True)
            checkpoint.save(payload, self._file(epoch))   # temp-then-rename: never a half-written checkpoint
            if len(self._checkpoints) == self._checkpoints.maxlen:
                old_epoch, old = self._checkpoints[0]
                if not isinstance(old, dict):   # on disk: its file lies in our own checkpoint_dir
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(self._file(old_epoch))
            payload = ON_DISK
        self._checkpoints.append((epoch, payload))

    def _restore(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> int | None:
        if len(self._checkpoints) < int(self.back):
            return None
        epoch, payload = self._checkpoints[-int(self.back)]
        if not isinstance(payload, dict):
            if not self.checkpoint_dir:
                raise CheckpointError("a zerograd_rollback state keeps checkpoints on disk, but this run "
                                      "has no checkpoint_dir")
            payload = checkpoint.load(self._file(epoch))
        load_model_state(model, payload["model"])
        # a copy: on the CPU the optimizer would keep (and train into) the tensors of the checkpoint
        optimizer.load_state_dict(cpu_copy(payload["optimizer"]))
        # drop checkpoints taken after the restored one: they belong to the abandoned branch
        while self._checkpoints and self._checkpoints[-1][0] > epoch:
            self._checkpoints.pop()
        return epoch

    def load_state_dict(self, state: Any) -> None:
        super().load_state_dict(state)
        entries = self._checkpoints if isinstance(self._checkpoints, deque) else None
        if entries is None or not all(isinstance(e, tuple) and len(e) == 2 and isinstance(e[0], int)
                                      and not isinstance(e[0], bool) and isinstance(e[1], (dict, str))
                                      for e in entries):
            raise CheckpointError("its zerograd_rollback checkpoints are not what codiag writes")
        if not self.checkpoint_dir and any(isinstance(e[1], str) for e in entries):
            raise CheckpointError("its zerograd_rollback state keeps checkpoints as files, but this run has "
                                  "no checkpoint_dir")
        # a file checkpoint is named by its epoch in the live checkpoint_dir, whatever the state said
        self._checkpoints = deque(((e, p if isinstance(p, dict) else ON_DISK) for e, p in entries),
                                  maxlen=max(int(self.keep), int(self.back)))

    def _new_signal(self, co_detected: Any) -> bool:
        """A plain bool is taken as given; a monitor's ``co_detected`` only on a rising edge/new value."""
        if not hasattr(co_detected, "co_detected"):
            return bool(co_detected)
        value = co_detected.co_detected
        previous, self._acted_on = self._acted_on, value
        if not value:
            return False
        if isinstance(value, bool):
            return not previous
        return value != previous

    def on_epoch_end(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                     co_detected: Any = False) -> bool:
        if self._new_signal(co_detected) and self.rollbacks < int(self.max_rollbacks):
            restored = self._restore(model, optimizer)
            old_q = float(self.q)
            self.stage = min(self.stage + 1, len(self.qs) - 1)
            self.q = self.qs[self.stage]
            self.rollbacks += 1
            self.resume_epoch = None if restored is None else restored + 1
            self.last_rollback = {"epoch": epoch, "restored_epoch": restored, "q_from": old_q,
                                  "q_to": float(self.q), "rollbacks": self.rollbacks}
            return restored is not None or old_q != self.q
        self._save(epoch, model, optimizer)
        return False

    def state(self) -> dict[str, StateValue]:
        out = super().state()
        out.update(stage=float(self.stage), rollbacks=float(self.rollbacks))
        return out

