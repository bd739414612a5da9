"""FGSM adversarial training (Goodfellow et al., 2015), as run by GradAlign's code.

Andriushchenko & Flammarion, "Understanding and Improving Fast Adversarial
Training" (GradAlign), Sec. 3: ``delta = alpha * sign(grad_x L(x, y))`` from
zero, projected to [0, 1]. Default step ``alpha = eps`` (docs/CONVENTIONS.md,
"Method defaults"); this is the method that shows catastrophic overfitting.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import Method, fgsm_step, register
from .checks import POSITIVE


@register
class FGSM(Method):
    """FGSM from zero with step ``step * eps`` (default 1.0, i.e. step eps). No random start."""

    name = "fgsm"
    defaults = {"step": 1.0}   # step size as a multiple of eps
    checks = {"step": POSITIVE}

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
                generator: torch.Generator | None = None) -> Tensor:
        return fgsm_step(model, x, y, torch.zeros_like(x), self.step * self.eps, self.eps)
