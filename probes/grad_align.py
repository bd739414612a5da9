"""``grad_align``: gradient alignment, GradAlign eq. (5), Fig. 4 and 11.

    E_{(x,y), eta ~ U[-eps, eps]^d} [ cos(grad_x L(x, y), grad_x L(x + eta, y)) ]

over the probe set, with eta drawn from the event's generator (the same eta
at every event) and ``x + eta`` clamped to [0, 1]. It is 1 for a model that
is linear inside the eps-ball and near 0 after catastrophic overfitting
(GradAlign: 0.95 -> 0.05 within an epoch). Where either gradient is exactly
zero the cosine is undefined: such samples are counted in ``n_zero_grad`` and
left out of the mean (docs/CONVENTIONS.md, "grad_align"), never set to 1.
"""
from __future__ import annotations

import torch

from codiag.tensors import clamp_to_image

from .base import Key, Probe, ProbeContext, masked_mean, per_sample_cos, register


@register
class GradAlign(Probe):
    """Gradient alignment (GradAlign eq. 5) with the count of samples where it is undefined."""

    name = "grad_align"
    needs = frozenset({"grads"})
    paper = "GradAlign eq. 5, Fig. 4, 11"
    mean = Key("mean cos(grad_x L(x), grad_x L(x + eta)) over samples where both gradients are non-zero")
    n_zero_grad = Key("samples left out because a gradient is exactly zero")
    n = Key("size of the probe set")

    def run(self, ctx: ProbeContext) -> None:
        x, y = ctx.x, ctx.y
        u = torch.rand(x.shape, generator=ctx.generator("grad_align.eta"), device=x.device)
        eta = clamp_to_image(x, (2 * u - 1) * ctx.eps)
        cos, ok = per_sample_cos(ctx.clean_grad, ctx.input_grad(x + eta, y))
        ctx.log(self.mean, masked_mean(cos, ok))
        ctx.log(self.n_zero_grad, (~ok).sum())
        ctx.log(self.n, len(ctx.probe_set))
