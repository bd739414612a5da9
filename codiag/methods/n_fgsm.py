"""N-FGSM (de Jorge et al., "Make Some Noise: Reliable and Efficient Single-Step
Adversarial Training", NeurIPS 2022) -- a method none of the four papers has
(a method none of the papers has, welcome as a baseline).

``delta = eta + alpha * sign(grad_x L(x + eta))`` with ``eta ~ U[-k eps, k eps]^d``,
**no** projection onto the eps ball (so ``||delta||_inf`` can reach ``k eps + alpha``),
only onto [0, 1]. Defaults (their paper): noise ``k = 2`` (``noise = 2.0`` eps),
step ``alpha = eps`` (``step = 1.0``), ``clip = None`` (no clipping).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..tensors import clamp_to_image, input_grad
from .base import Method, register
from .checks import NON_NEGATIVE, POSITIVE, Optional


@register
class NFGSM(Method):
    """N-FGSM: noise U[-2 eps, 2 eps], one step of eps, no projection to the eps ball."""

    name = "n_fgsm"
    lr_peak = 0.5
    defaults: dict[str, Any] = {"noise": 2.0, "step": 1.0, "clip": None}
    checks = {"noise": NON_NEGATIVE, "step": POSITIVE, "clip": Optional(POSITIVE)}
    start_radius = "noise"

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
                generator: torch.Generator | None = None) -> Tensor:
        eta = self.start(model, x, y, index, generator)
        grad = input_grad(model, x + eta, y, precision="autocast")
        delta = eta + self.step * self.eps * grad.sign()
        if self.clip is not None:
            delta = delta.clamp(-self.clip * self.eps, self.clip * self.eps)
        return clamp_to_image(x, delta).detach()
