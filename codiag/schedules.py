"""Learning-rate schedules of the papers' reference code, as functions of training progress.

Progress ``t`` is measured in epochs (fractional within an epoch), and the
learning rate is set before each optimizer step from ``t = epoch + (i+1)/n``,
as in Wong et al.'s and GradAlign's ``train.py``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .errors import UsageError

SCHEDULES = ("cyclic", "piecewise", "constant")


def make_schedule(name: str, lr: float, epochs: int, peak_at: float = 0.4,
                  milestones: Sequence[float] = (), gamma: float = 0.1) -> Callable[[float], float]:
    """Return ``t -> lr``.

    - ``cyclic`` (also called one-cycle): linear from 0 up to ``lr`` at ``peak_at * epochs``,
      then linear down to 0 at the end (Wong et al.; GradAlign: peak at 2/5 of training).
    - ``piecewise``: ``lr``, multiplied by ``gamma`` at each milestone epoch (ATAS: 24 and 28 of 30).
    - ``constant``: ``lr``.
    """
    if name in ("cyclic", "onecycle"):
        xs, ys = [0.0, peak_at * epochs, float(epochs)], [0.0, lr, 0.0]
        return lambda t: float(np.interp(t, xs, ys))
    if name == "piecewise":
        ms = sorted(float(m) for m in milestones)
        return lambda t: lr * gamma ** sum(t >= m for m in ms)
    if name == "constant":
        return lambda t: lr
    raise UsageError(f"unknown lr schedule {name!r}; choose from {', '.join(SCHEDULES)}")
