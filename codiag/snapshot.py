"""In-memory training snapshots: a CPU copy of a model's (and optimizer's) state, restored exactly.

One helper for every part of codiag that keeps weights to come back to: the ZeroGrad
roll-back method, the monitor's best checkpoint (``keep_best``) and the CO guard.
A snapshot holds copies, never references: restoring it twice gives the same weights
twice, and training after a restore never writes into the snapshot (``Optimizer.
load_state_dict`` keeps the tensors it is given when they already sit on the parameters'
device, so the optimizer state is copied again at every restore).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


def cpu_copy(obj: Any) -> Any:
    """``obj`` (a state dict, nested dicts/lists/tuples of tensors and plain values) copied to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return copy.deepcopy(obj)


def load_model_state(model: nn.Module, state: dict[str, Any]) -> None:
    """Copy ``state`` (on any device) into ``model``'s own tensors (parameters keep their identity)."""
    device = next(iter(model.state_dict().values())).device if model.state_dict() else torch.device("cpu")
    model.load_state_dict({k: v.to(device) for k, v in state.items()})


@dataclass
class Snapshot:
    """Model and optimizer state at ``step`` / ``epoch``, on the CPU, with ``extra`` (weights-only data
    of the caller's: a trainer's method state and schedule position)."""

    step: int
    epoch: int
    model: dict[str, Any]
    optimizer: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def take(cls, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, step: int = 0,
             epoch: int = 0, extra: dict[str, Any] | None = None) -> "Snapshot":
        return cls(int(step), int(epoch), cpu_copy(model.state_dict()),
                   None if optimizer is None else cpu_copy(optimizer.state_dict()), cpu_copy(extra or {}))

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Put the weights (and the optimizer state) back exactly; the snapshot stays unchanged."""
        load_model_state(model, self.model)
        if optimizer is not None and self.optimizer is not None:
            optimizer.load_state_dict(cpu_copy(self.optimizer))   # a copy: training must not write into ours

    def to_state(self) -> dict[str, Any]:
        """Weights-only data (``torch.load(..., weights_only=True)`` reads it); :meth:`from_state` inverts it."""
        return {"step": self.step, "epoch": self.epoch, "model": self.model, "optimizer": self.optimizer,
                "extra": self.extra}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Snapshot":
        return cls(int(state["step"]), int(state["epoch"]), cpu_copy(state["model"]),
                   cpu_copy(state["optimizer"]), cpu_copy(state.get("extra") or {}))
