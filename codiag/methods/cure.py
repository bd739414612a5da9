"""FGSM + CURE curvature penalty (Moosavi-Dezfooli et al. 2019, as combined with FGSM
in the GradAlign paper, Appendix D.5).

Loss ``CE(x + delta_FGSM) + lambda * ||grad_x l(x + delta_FGSM) - grad_x l(x)||_2^2``.
Both gradients are differentiable in the parameters (double backprop). The
gradient at ``x`` is the FGSM gradient (built with ``create_graph``), and the
gradient at ``x + delta_FGSM`` comes from the *same* forward pass as the training
cross entropy, so CURE costs one extra backward over FGSM + L2 penalty, not an
extra forward.

``lam`` is in the reference's units (batch-mean loss, batch 128; D.5: 700 at
8/255, 20,000 at 16/255; log-linear in between, ours), applied as
``lam / ref_batch**2 * mean_i ||diff_i||^2`` on codiag's per-sample gradients
(see ``grad_penalty.py`` for the mapping and the mean over the batch).

This is GradAlign's D.5 definition, not the official CURE code (F-Salehi/CURE_robustness,
``CURE/CURE.py`` L182-217), which differs in four ways: its direction is
``z = h * sign(g) / ||sign(g)||`` (``h`` = 3 by default, in the normalised input space) instead
of the FGSM perturbation; its gradients are taken in eval mode; its penalty is the *unsquared*
norm ``lambda * mean_i ||grad l_i(x_i + z_i) - grad l_i(x_i)||_2`` of per-sample (sum-reduced)
gradients; and it is a stand-alone regulariser (``lambda`` = 4), not added to FGSM training.
Neither its lambda nor its h carries over to the values here.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import StateValue, register
from .grad_penalty import GradPenalty


@register
class CURE(GradPenalty):
    """FGSM + ``lam`` * ||grad at x + delta_FGSM - grad at x||^2 (D.5; lam 700 at 8/255, ref. units)."""

    name = "cure"
    lam_at = (700.0, 20000.0)

    def __init__(self, eps: float, **hparams: Any) -> None:
        if hparams.get("lam") is None:
            e = min(max(float(eps) * 255, 8.0), 16.0)   # log-linear: lambda > 0 everywhere
            hparams["lam"] = math.exp(math.log(700.0) + (math.log(20000.0) - math.log(700.0)) * (e - 8) / 8)
        super().__init__(eps, **hparams)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, delta: Tensor) -> Tensor:
        g_clean = self._grad_at_x(model, x, y)
        x_adv = (x + delta).detach().requires_grad_(True)
        logits = model(x_adv)
        ce_sum = F.cross_entropy(logits, y, reduction="sum")
        (g_adv,) = torch.autograd.grad(ce_sum, x_adv, create_graph=True)
        reg = (g_adv.float() - g_clean.float()).flatten(1).pow(2).sum(1).mean()
        self._last_reg = reg.detach()
        return ce_sum / y.shape[0] + self.lam_per_sample * reg

    def state(self) -> dict[str, StateValue]:
        return {"lam": self.lam, "curvature": float(self._last_reg)}
