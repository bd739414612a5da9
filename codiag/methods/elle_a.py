"""ELLE-A, ELLE with an adaptive weight (Abad Rocamora et al., ICLR 2024, Sec. 3 "ELLE-A"
and Algorithm 1; reference LIONS-EPFL/ELLE ``core/utils/train.py`` lines 216-227 and
``train.py`` lines 122-127).

The loss is ELLE's, ``CE(x + delta) + lam_t * E_lin``, but ``lam`` starts at 0 and follows
an online outlier rule on the training steps' own E_lin values (:class:`MeanStdRule`):
after each step, if at least 3 earlier values exist and this step's E_lin exceeds their
mean + ``sensitivity`` (2) population standard deviations, the next step's weight is
``lam`` (lambda_max, 4000), otherwise the current weight times ``decay`` (0.99); then the
value joins the history. As in the reference the history holds *every* earlier step of
the run (not a window). The rule runs on the device (no host synchronisation per step);
the same rule, fed the ``local_linearity`` probe's error, is the ``elle_a`` online CO
detector (``codiag.detector``).

Defaults (reference ``scripts/run_elle-a_cifar10.sh``, CIFAR-10, PreAct ResNet-18, every
eps from 2/255 to 26/255): lambda_max 4000, decay 0.99, sensitivity 2; FGSM step eps.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..checkpoint import checkpointable
from .base import StateValue, register
from .checks import NON_NEGATIVE, Real
from .elle import ELLE


@checkpointable
class MeanStdRule:
    """Online outlier test of ELLE-A: ``v > mean + k * std`` of all earlier values (Welford, on the device).

    ``std`` is the population standard deviation (``np.std`` in the reference); no value is
    an outlier before ``min_history`` earlier values exist (the reference's ``len > 2``).
    """

    def __init__(self, sensitivity: float = 2.0, min_history: int = 3) -> None:
        self.sensitivity = float(sensitivity)
        self.min_history = int(min_history)
        self.n = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def threshold(self) -> Tensor | None:
        """``mean + k * std`` of the values so far (None before any value)."""
        if self.mean is None or self.m2 is None:
            return None
        return self.mean + self.sensitivity * (self.m2 / self.n).clamp_min(0).sqrt()

    def is_outlier(self, value: Tensor) -> Tensor:
        """0-d bool tensor: does ``value`` exceed the threshold of the earlier values?"""
        limit = self.threshold()
        if limit is None or self.n < self.min_history:
            return torch.zeros((), dtype=torch.bool, device=value.device)
        return value > limit

    def push(self, value: Tensor) -> None:
        """Add ``value`` to the history (Welford's update of mean and sum of squares)."""
        v = value.detach().reshape(()).double() if value.device.type != "mps" else value.detach().reshape(())
        if self.mean is None or self.m2 is None:
            self.mean, self.m2 = v.clone(), torch.zeros_like(v)
            self.n = 1
            return
        self.n += 1
        d = v - self.mean
        self.mean = self.mean + d / self.n
        self.m2 = self.m2 + d * (v - self.mean)


@register
class ELLEA(ELLE):
    """ELLE with lambda switched on (to ``lam``) when E_lin is an outlier, decayed by ``decay`` otherwise."""

    name = "elle_a"
    defaults: dict[str, Any] = {"lam": 4000.0, "decay": 0.99, "sensitivity": 2.0}
    checks = {"lam": NON_NEGATIVE, "decay": Real(0, 1), "sensitivity": NON_NEGATIVE}

    def __init__(self, eps: float, **hparams: Any) -> None:
        super().__init__(eps, **hparams)
        self.rule = MeanStdRule(self.sensitivity)
        self._weight: Tensor | None = None     # lambda_t, a 0-d device tensor once a step ran
        self._switch_ons: Tensor | None = None

    def weight(self) -> Tensor | float:
        return 0.0 if self._weight is None else self._weight

    def observe(self, err: Tensor) -> None:
        on = self.rule.is_outlier(err.double() if err.device.type != "mps" else err)
        current = torch.zeros((), device=err.device) if self._weight is None else self._weight
        self._weight = torch.where(on, torch.full_like(current, self.lam), current * float(self.decay))
        self._switch_ons = on.long() if self._switch_ons is None else self._switch_ons + on.long()
        self.rule.push(err)

    def state(self) -> dict[str, StateValue]:
        out = super().state()
        if self._switch_ons is not None:
            out["switch_ons"] = float(self._switch_ons)
        limit = self.rule.threshold()
        if limit is not None:
            out["threshold"] = float(limit)
        return out
