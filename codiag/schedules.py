"""Learning-rate schedules of the papers' reference code, as functions of training progress.

Progress ``t`` is measured in epochs (fractional within an epoch), and the
learning rate is set before each optimizer step from ``t = epoch + (i+1)/n``,
as in Wong et al.'s and GradAlign's ``train.py``.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from .errors import UsageError

SCHEDULES = ("cyclic", "onecycle", "piecewise", "constant")


def make_schedule(name: str, lr: float, epochs: int, peak_at: float = 0.4,
                  milestones: Sequence[float] = (), gamma: float = 0.1) -> Callable[[float], float]:
    """Return ``t -> lr``.

    - ``cyclic``: linear from 0 up to ``lr`` at ``peak_at * epochs``, then linear down to 0
      at the end (Wong et al.; GradAlign: peak at 2/5 of training).
    - ``onecycle``: torch's ``OneCycleLR`` stepped once per epoch, as the FastAT Benchmark
      does (``total_steps`` = epochs; torch's defaults: cosine warm-up over the first 30 %
      from ``lr / 25``, cosine annealing to ``lr / 25e4``); ``peak_at`` is not used. With
      it the momentum cycles too: see :func:`momentum_schedule`.
    - ``piecewise``: ``lr``, multiplied by ``gamma`` at each milestone epoch (ATAS: 24 and 28 of 30).
    - ``constant``: ``lr``.
    """
    if name == "onecycle":
        table = [lr_ for lr_, _ in _onecycle_table(lr, epochs)]
        return lambda t: table[_epoch_of(t, len(table))]
    if name == "cyclic":
        xs, ys = [0.0, peak_at * epochs, float(epochs)], [0.0, lr, 0.0]
        return lambda t: float(np.interp(t, xs, ys))
    if name == "piecewise":
        ms = sorted(float(m) for m in milestones)
        return lambda t: lr * gamma ** sum(t >= m for m in ms)
    if name == "constant":
        return lambda t: lr
    raise UsageError(f"unknown lr schedule {name!r}; choose from {', '.join(SCHEDULES)}")


def momentum_schedule(name: str, epochs: int) -> Callable[[float], float] | None:
    """``t -> momentum`` where the schedule sets it (``onecycle``: torch's cycle from 0.95 down
    to 0.85 at the peak and back, replacing ``--momentum``, SGD's momentum or Adam's beta1),
    else None."""
    if name != "onecycle":
        return None
    table = [m for _, m in _onecycle_table(1.0, epochs)]
    return lambda t: table[_epoch_of(t, len(table))]


def _epoch_of(t: float, epochs: int) -> int:
    """The epoch that progress ``t = epoch + (i+1)/n`` falls in (its last step included)."""
    return min(max(math.ceil(t) - 1, 0), epochs - 1)


def _onecycle_table(lr: float, epochs: int) -> list[tuple[float, float]]:
    """(lr, momentum) of each epoch, read off torch's own ``OneCycleLR`` on a throwaway optimizer."""
    if epochs < 2:
        raise UsageError(f"the onecycle schedule needs at least 2 epochs, got {epochs}")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs)
    table = []
    for epoch in range(epochs):
        table.append((float(opt.param_groups[0]["lr"]), float(opt.param_groups[0]["momentum"])))
        if epoch < epochs - 1:
            opt.step()           # no gradient: a no-op that keeps torch's order-of-calls check quiet
            sched.step()
    return table
