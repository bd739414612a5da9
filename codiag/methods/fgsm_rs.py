"""FGSM with random start (FGSM-RS; Wong, Rice & Kolter, "Fast is better than free", 2020).

Algorithm (Wong et al. Alg. 3; GradAlign Sec. 3): ``delta0 ~ U[-eps, eps]^d``
(clamped so ``x + delta0`` lies in [0, 1]), one signed-gradient step of
``alpha = 1.25 eps`` from ``delta0``, then projection onto the eps ball and [0, 1].
Defaults: ``step = 1.25`` (times eps), ``init = 1.0`` (uniform radius, times eps).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import Method, fgsm_step, register
from .checks import NON_NEGATIVE, POSITIVE


@register
class FGSMRS(Method):
    """FGSM-RS: uniform start of radius ``init * eps``, one step of ``step * eps`` (default 1.25)."""

    name = "fgsm_rs"
    lr_peak = 0.5
    defaults = {"step": 1.25, "init": 1.0}
    checks = {"step": POSITIVE, "init": NON_NEGATIVE}
    start_radius = "init"

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
                generator: torch.Generator | None = None) -> Tensor:
        start = self.start(model, x, y, index, generator)
        return fgsm_step(model, x, y, start, self.step * self.eps, self.eps)
