"""``linear_approx``: quality of the linear approximation as delta loses coordinates (GradAlign Fig. 10, App. C.1).

    err(delta) = | l(x + delta) - l(x) - <delta, grad_x l(x)> |     (per sample, then averaged)

Start from delta_FGSM = eps * sign(grad) (a corner of the ball) and, for the
same kept share k of coordinates at every event (a fixed random mask from the
event generator), zero out the others: ||delta||_inf stays eps while
||delta||_2 shrinks with k. ``x + delta`` is clamped to [0, 1]. The same
curve is recorded for a random corner ``delta_random`` (GradAlign plots both).
Keys: ``err/k=<share>``, ``l2/k=<share>`` (mean ||delta||_2) and
``err_random/k=<share>``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from codiag.tensors import clamp_to_image

from .base import Key, Probe, ProbeContext, register

DEFAULT_SHARES = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


@register
class LinearApprox(Probe):
    """Options: ``shares`` (kept shares of coordinates, default 0, .1, .25, .5, .75, 1)."""

    name = "linear_approx"
    needs = frozenset({"clean", "grads"})
    paper = "GradAlign Fig. 10"
    err = Key("mean |l(x + delta) - l(x) - <delta, grad>| from the FGSM corner, kept share k", "err/k={k}")
    err_random = Key("the same from a random corner of the eps ball", "err_random/k={k}")
    l2 = Key("mean ||delta||_2 of the FGSM corner with share k kept", "l2/k={k}")

    def __init__(self, shares: Sequence[float] = DEFAULT_SHARES, **options: Any) -> None:
        super().__init__(**options)
        self.shares = tuple(float(s) for s in shares)

    def run(self, ctx: ProbeContext) -> None:
        x, y = ctx.x, ctx.y
        grad = ctx.clean_grad
        loss0 = ctx.clean[0]
        # one uniform number per coordinate: keeping coordinates with u < k nests the masks
        u = torch.rand(x.shape, generator=ctx.generator("linear_approx.mask"), device=x.device)
        signs = torch.rand(x.shape, generator=ctx.generator("linear_approx.corner"), device=x.device)
        corners = {self.err: ctx.eps * grad.sign(), self.err_random: ctx.eps * torch.where(signs < 0.5, -1.0, 1.0)}
        for k in self.shares:
            mask = (u < k).to(x.dtype)
            for key, corner in corners.items():
                delta = clamp_to_image(x, corner * mask)
                loss = ctx.losses(x + delta, y)[0]
                lin = (delta * grad).flatten(1).sum(1)
                ctx.log(key, (loss - loss0 - lin).abs().mean(), k=f"{k:g}")
                if key is self.err:
                    ctx.log(self.l2, delta.flatten(1).norm(dim=1).mean(), k=f"{k:g}")
