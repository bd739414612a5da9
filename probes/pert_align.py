"""``pert_align``: PertAlign, SORA's perturbation alignment (SORA, ICML 2026, Sec. 4).

    PertAlign = E_{(x,y)} [ cos( grad_x L(x + eta, y), grad_x L(x + delta, y) ) ]

the cosine between the attack's input gradient at its start ``x + eta`` and the training
loss's gradient at the point it trains on, ``x + delta``. SORA's code takes it per training
step from the two gradients FGSM-RS already computes (the attack's, and the gradient of the
update's loss with respect to ``delta``); here it is measured on the probe set at each event
with an FGSM-RS step (Wong et al.): eta ~ U[-eps, eps]^d, delta = Proj_eps(eta + alpha
sign(grad at eta)), alpha = 1.25 eps, x + delta clamped to [0, 1]. Near 1, one sign step is
a faithful linear move; SORA reports it falling before catastrophic overfitting. As for
``grad_align``, samples where either gradient is exactly zero are counted in
``n_zero_grad`` and left out of the mean (docs/CONVENTIONS.md).
"""
from __future__ import annotations

import torch

from codiag.tensors import clamp_to_image, project

from .base import Key, Probe, ProbeContext, masked_mean, per_sample_cos, register


@register
class PertAlign(Probe):
    """SORA's PertAlign on the probe set: cos(grad at the FGSM-RS start, grad at x + delta)."""

    name = "pert_align"
    needs = frozenset()
    paper = "SORA (ICML 2026) Sec. 4, PertAlign"
    default = False
    mean = Key("mean cos(grad_x L(x + eta), grad_x L(x + delta_FGSM-RS)) over samples where both are non-zero")
    n_zero_grad = Key("samples left out because a gradient is exactly zero")

    def __init__(self, alpha: float = 1.25) -> None:
        if not alpha > 0:
            raise ValueError(f"pert_align: alpha is a positive multiple of eps, got {alpha}")
        self.alpha = float(alpha)

    def run(self, ctx: ProbeContext) -> None:
        x, y, eps = ctx.x, ctx.y, ctx.eps
        u = torch.rand(x.shape, generator=ctx.generator("pert_align.eta"), device=x.device)
        eta = clamp_to_image(x, (2 * u - 1) * eps)
        g_start = ctx.input_grad(x + eta, y)
        delta = project(x, eta + self.alpha * eps * g_start.sign(), eps)
        cos, ok = per_sample_cos(g_start, ctx.input_grad(x + delta, y))
        ctx.log(self.mean, masked_mean(cos, ok))
        ctx.log(self.n_zero_grad, (~ok).sum())
