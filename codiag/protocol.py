"""The FastAT Benchmark's training protocol as options of ``codiag train``.

Pan & Yao's FastAT Benchmark (2026) trains every method under one protocol: label
smoothing 0.4, an exponential moving average of the weights (tau 0.9995, updated after
every optimizer step, BatchNorm buffers included), 1,000 training images held out, and the
checkpoint chosen by PGD-10 accuracy on them at each epoch end, the raw and the averaged
model both being candidates. This module holds those pieces; ``codiag.trainer`` wires them.

- :func:`label_smoothing`: every cross entropy of a method's training step (the attack's
  and the update's, as the benchmark's one ``criterion`` serves both) with smoothing.
- :func:`averaged_model`: ``torch.optim.swa_utils.AveragedModel`` with the EMA update and
  ``use_buffers=True``. Its first update copies the model, later ones compute
  ``avg = tau * avg + (1 - tau) * current`` on every float parameter and buffer: the
  benchmark's ``exp_avg`` (which starts as the model's own state, so its first update is
  the model after the first step too).
- :class:`BestCheckpoint`: the best (PGD accuracy, clean accuracy) seen at epoch ends, its
  epoch, which model it was and a copy of its state; resumable bit for bit.
"""
from __future__ import annotations

import contextlib
import copy
import functools
from typing import Any, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from . import attacks

#: the benchmark's validation attack: PGD-10 with step 2/255 at eps 8/255, one random start
VAL_PGD_STEPS = 10


@contextlib.contextmanager
def label_smoothing(value: float) -> Iterator[None]:
    """Inside the block, ``F.cross_entropy`` smooths the labels by ``value`` unless a caller
    passes ``label_smoothing`` itself (Szegedy et al. 2016; the benchmark uses 0.4).

    The methods compute their losses with ``F.cross_entropy``; the trainer enters this block
    around each training step only, so probes and evaluations (run outside it) keep the plain
    cross entropy. ``value == 0`` changes nothing at all.
    """
    if not value:
        yield
        return
    original = F.cross_entropy

    @functools.wraps(original)
    def smoothed(*args: Any, label_smoothing: float | None = None, **kwargs: Any) -> torch.Tensor:
        return original(*args, label_smoothing=value if label_smoothing is None else label_smoothing, **kwargs)

    F.cross_entropy = smoothed
    try:
        yield
    finally:
        F.cross_entropy = original


def averaged_model(model: nn.Module, tau: float) -> AveragedModel:
    """The EMA of the whole state of ``model`` (parameters and buffers), decay ``tau``."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tau), use_buffers=True)


def scores(model: nn.Module, data: Any, eps: float, seed: int) -> dict[str, float | int]:
    """Clean, FGSM and PGD-10 accuracy (step eps/4: the benchmark's 2/255 at 8/255, one
    random start from ``torch.Generator(seed)``): the benchmark's validation. Draws nothing
    from the global RNGs, so training is not changed by it."""
    return attacks.evaluate(model, data, eps, n=10 ** 9, pgd_steps=VAL_PGD_STEPS, restarts=1, seed=seed)


class BestCheckpoint:
    """The best model seen at epoch ends by (PGD accuracy, then clean accuracy), as the
    benchmark keeps ``best.pth`` (here ``checkpoints/selected.pt``)."""

    def __init__(self) -> None:
        self.pgd_acc = -1.0
        self.clean_acc = -1.0
        self.epoch: int | None = None
        self.model: str | None = None
        self.state: dict[str, torch.Tensor] | None = None

    def consider(self, epoch: int, candidates: Mapping[str, tuple[Mapping[str, Any], nn.Module]]) -> bool:
        """``candidates``: name -> (scores with ``pgd_acc`` and ``clean_acc``, model), raw first.
        The epoch's winner is the first with the highest PGD accuracy; it replaces the best
        on a higher PGD accuracy, or an equal one with a higher clean accuracy. True if it did."""
        name = max(candidates, key=lambda k: (float(candidates[k][0]["pgd_acc"]), -list(candidates).index(k)))
        result, model = candidates[name]
        pgd, clean = float(result["pgd_acc"]), float(result["clean_acc"])
        if not (pgd > self.pgd_acc or (pgd == self.pgd_acc and clean > self.clean_acc)):
            return False
        self.pgd_acc, self.clean_acc, self.epoch, self.model = pgd, clean, epoch, name
        self.state = copy.deepcopy(model.state_dict())
        return True

    def summary(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "model": self.model, "select_pgd_acc": self.pgd_acc,
                "select_clean_acc": self.clean_acc}

    def state_dict(self) -> dict[str, Any]:
        return {"pgd_acc": self.pgd_acc, "clean_acc": self.clean_acc, "epoch": self.epoch,
                "model": self.model, "state": self.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.pgd_acc, self.clean_acc = float(state["pgd_acc"]), float(state["clean_acc"])
        self.epoch, self.model, self.state = state["epoch"], state["model"], state["state"]


class Extras:
    """The averaged model and the best checkpoint of one run (either may be off): updated after
    each optimizer step, stored in the resume checkpoint, written next to ``final.pt``."""

    def __init__(self, model: nn.Module, tau: float | None, select_best: bool) -> None:
        self.averaged = None if tau is None else averaged_model(model, tau)
        self.best = BestCheckpoint() if select_best else None

    def after_step(self, model: nn.Module) -> None:
        if self.averaged is not None:
            self.averaged.update_parameters(model)

    def state_dict(self) -> dict[str, Any]:
        return {**({} if self.averaged is None else {"averaged": self.averaged.state_dict()}),
                **({} if self.best is None else {"best": self.best.state_dict()})}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.averaged is not None:
            self.averaged.load_state_dict(state["averaged"])
        if self.best is not None:
            self.best.load_state_dict(state["best"])

    def final_states(self) -> dict[str, dict[str, torch.Tensor]]:
        """File stem -> weights: ``averaged`` and ``selected`` (the best checkpoint chosen by
        ``--select best``) where the run has them."""
        out = {}
        if self.averaged is not None:
            out["averaged"] = self.averaged.module.state_dict()
        if self.best is not None and self.best.state is not None:
            out["selected"] = self.best.state
        return out
