"""``grad_align``: gradient alignment, GradAlign eq. (5), Fig. 4 and 11.

    E_{(x,y), eta ~ U[-eps, eps]^d} [ cos(grad_x L(x, y), grad_x L(x + eta, y)) ]

over the probe set, with eta drawn from the event's generator (the same eta
at every event) and ``x + eta`` clamped to [0, 1]. It is 1 for a model that
is linear inside the eps-ball and near 0 after catastrophic overfitting
(GradAlign: 0.95 -> 0.05 within an epoch). Where either gradient is exactly
zero the cosine is undefined: such samples are counted in ``n_zero_grad`` and
left out of the mean (DESIGN "grad_align"), never set to 1.
"""
from __future__ import annotations

import torch

from .base import Probe, ProbeContext, clamp_delta, masked_mean, per_sample_cos, register


@register
class GradAlign(Probe):
    """Keys: mean (over samples with a defined cosine), n_zero_grad, n."""

    name = "grad_align"
    needs = frozenset({"grads"})
    paper = "GradAlign eq. 5, Fig. 4, 11"

    def run(self, ctx: ProbeContext) -> None:
        x, y = ctx.x, ctx.y
        u = torch.rand(x.shape, generator=ctx.generator("grad_align.eta"), device=x.device)
        eta = clamp_delta(x, (2 * u - 1) * ctx.eps)
        cos, ok = per_sample_cos(ctx.clean_grad, ctx.input_grad(x + eta, y))
        ctx.log(self.name, "mean", masked_mean(cos, ok))
        ctx.log(self.name, "n_zero_grad", (~ok).sum())
        ctx.log(self.name, "n", len(ctx.probe_set))
