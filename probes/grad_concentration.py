"""``grad_concentration``: how concentrated the input gradient is, the quantity behind
lp-FGSM (Mehouachi & Jabari 2025, "Catastrophic Overfitting, Entropy Gap and Participation
Ratio").

For each probe point, with g = grad_x L(x, y) over its d input coordinates:

- participation ratio PR = (||g||_1 / ||g||_2)^2, between 1 (all gradient in one coordinate)
  and d (all coordinates equal); logged as PR / d in (0, 1];
- entropy gap = log d - H(p), p_i = |g_i| / ||g||_1, H the Shannon entropy: 0 for a flat
  gradient, up to log d for a gradient in one coordinate (codiag's reading of the paper's
  entropy measure, stated here since it is computed this way).

The paper's argument: the L-inf FGSM gains eps ||g||_1 to first order, the L2 attack of the
same volume eps sqrt(d) ||g||_2; their ratio is sqrt(PR / d). CO comes when the gradient
concentrates in few coordinates (PR / d falls, the entropy gap rises) while the L-inf
constraint stays aggressive. Measured at the clean probe set (the shared clean gradient);
points with a zero gradient are counted and left out.
"""
from __future__ import annotations

import math

import torch

from .base import Key, Probe, ProbeContext, masked_mean, register


def concentration(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (PR / d, entropy gap, defined) of the rows of ``g`` (flattened)."""
    a = g.flatten(1).float().abs()
    d = a.shape[1]
    l1, l2 = a.sum(1), a.norm(dim=1)
    ok = l2 > 0
    tiny = torch.finfo(torch.float32).tiny
    pr = (l1 / l2.clamp_min(tiny)) ** 2 / d
    p = a / l1.clamp_min(tiny)[:, None]
    entropy = -(torch.where(p > 0, p * p.clamp_min(tiny).log(), torch.zeros_like(p))).sum(1)
    return torch.where(ok, pr, torch.zeros_like(pr)), torch.where(ok, math.log(d) - entropy, torch.zeros_like(pr)), ok


@register
class GradConcentration(Probe):
    """Participation ratio and entropy gap of the clean input gradient (lp-FGSM's measures)."""

    name = "grad_concentration"
    needs = frozenset({"grads"})
    paper = "lp-FGSM (Mehouachi & Jabari 2025): participation ratio, entropy gap"
    default = False
    participation = Key("mean (||g||_1 / ||g||_2)^2 / d of the clean input gradient (1: flat, 1/d: one coordinate)")
    entropy_gap = Key("mean log d - H(|g| / ||g||_1) of the clean input gradient (0: flat)")
    n_zero_grad = Key("samples left out because the gradient is exactly zero")

    def run(self, ctx: ProbeContext) -> None:
        pr, gap, ok = concentration(ctx.clean_grad)
        ctx.log(self.participation, masked_mean(pr, ok))
        ctx.log(self.entropy_gap, masked_mean(gap, ok))
        ctx.log(self.n_zero_grad, (~ok).sum())
