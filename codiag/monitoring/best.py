"""The best checkpoint (``keep_best=True``): the weights of the probe event with the highest PGD accuracy.

Only full probe events count (the whole probe set; light events and confirming
measurements do not). At each new best the model's state is copied to the CPU and
written, atomically, as ``checkpoints/best.pt`` (a plain state dict:
``model.load_state_dict(torch.load(path, weights_only=True))``); the event's step, epoch
and accuracies are ``mon.best`` and run.json's ``best``. Copying weights has no side
effect on training (``tests/test_monitor_side_effects.py``). This is the "early stopping"
selection of fast-AT practice (Rice et al., "Overfitting in adversarially robust deep
learning", ICML 2020), made online: the probe set plays the validation split.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from .. import checkpoint
from ..snapshot import cpu_copy, load_model_state

BEST_FILE = "best.pt"
#: the accuracies recorded with the best event (``robust_acc``'s keys)
_ACCURACIES = ("pgd_acc", "fgsm_acc", "clean_acc")


class BestKeeper:
    """Keeps (and writes) the state of the best full probe event by ``robust_acc/pgd_acc``."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "checkpoints" / BEST_FILE
        self.run_dir = Path(run_dir)
        self.info: dict[str, Any] | None = None
        self.state: dict[str, Any] | None = None

    def update(self, model: nn.Module, step: int, epoch: int, values: Mapping[tuple[str, str], float]) -> bool:
        """Take the model's state if this event's PGD accuracy beats the best so far; True if it did."""
        pgd = values.get(("robust_acc", "pgd_acc"))
        if pgd is None or not math.isfinite(pgd) or (self.info is not None and pgd <= self.info["pgd_acc"]):
            return False
        self.info = {"step": int(step), "epoch": int(epoch),
                     **{k: float(values[("robust_acc", k)]) for k in _ACCURACIES if ("robust_acc", k) in values}}
        self.state = cpu_copy(model.state_dict())
        self.write()
        return True

    def write(self) -> None:
        if self.state is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            checkpoint.save(self.state, self.path, inside=self.run_dir)

    def restore(self, model: nn.Module) -> dict[str, Any]:
        """Load the best weights into ``model``; returns ``info``."""
        if self.state is None:
            raise RuntimeError("no best checkpoint yet: no full probe event has measured robust_acc")
        load_model_state(model, self.state)
        return dict(self.info or {})

    def state_dict(self) -> dict[str, Any]:
        return {"info": self.info, "state": self.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.info = None if state.get("info") is None else dict(state["info"])
        self.state = None if state.get("state") is None else cpu_copy(state["state"])
