"""FGSM-RS with parameter-gradient norm clipping (ZeroGrad paper, Appendix C.5, Table 11).

ZeroGrad's Sec. 2 argues that catastrophic overfitting comes with a huge weight
update; C.5 clips the parameter gradient before each optimizer step. Setting
of Table 11: FGSM-RS with step ``alpha = 2 eps`` (uniform start), total-norm
clipping (``torch.nn.utils.clip_grad_norm_``) at ``clip``; 0.02 / 0.06 / 0.10
give 35.1 / 45.5 / 31.1 +- 22.0 % PGD-50 on CIFAR-10, so the default is
``clip = 0.06`` (the best mean and the only stable value).

Clipping by the *total* norm over all parameters (``clip_grad_norm_``) is ours: C.5 says
only that the gradient updates are clipped, and the ZeroGrad repository has no clipping
code; per-parameter norms or element-wise value clipping would need other thresholds.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import StateValue, register
from .checks import POSITIVE
from .fgsm_rs import FGSMRS


@register
class GradClip(FGSMRS):
    """FGSM-RS (step 2 eps) whose weight gradient's total L2 norm is clipped to ``clip`` (0.06)."""

    name = "grad_clip"
    defaults = {"step": 2.0, "init": 1.0, "clip": 0.06}
    checks = {"clip": POSITIVE}

    def __init__(self, eps: float, **hparams: Any) -> None:
        super().__init__(eps, **hparams)
        self._last_norm: Tensor | float = float("nan")

    def before_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        # clip_grad_norm_ returns the pre-clip norm as a tensor: kept on device, read at probe events
        self._last_norm = torch.nn.utils.clip_grad_norm_(
            [p for g in optimizer.param_groups for p in g["params"]], float(self.clip))

    def state(self) -> dict[str, StateValue]:
        return {"clip": float(self.clip), "grad_norm_before_clip": float(self._last_norm)}
