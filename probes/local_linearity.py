"""``local_linearity``: ELLE's local-linearity error of the loss on the probe set
(Abad Rocamora et al., ICLR 2024, Sec. 3 and Fig. 2c).

    E_lin = mean_i ( l(x_c,i) - (1 - a_i) l(x_a,i) - a_i l(x_b,i) )^2,
    x_a, x_b = clamp(x + U[-eps, eps]^d, 0, 1),  x_c = (1 - a) x_a + a x_b,  a ~ U[0, 1]

one random triplet per probe point, the same triplets at every event (the event
generator), in eval mode and fp32: one forward pass of ``3 x`` the probe set, no
gradient. ELLE tracks this quantity during training and finds it grows by orders of
magnitude when catastrophic overfitting sets in; ELLE-A's switch rule (and codiag's
``elle_a`` detector) reads it. Keys: ``mse`` (E_lin, ELLE's MSE) and ``abs`` (the mean
absolute error, less dominated by a few points).
"""
from __future__ import annotations

from codiag.methods.elle import triplets

from .base import Key, Probe, ProbeContext, register


@register
class LocalLinearity(Probe):
    """Keys: mse, abs (ELLE's triplet error on the probe set)."""

    name = "local_linearity"
    needs = frozenset()
    paper = "ELLE Sec. 3, Fig. 2c"
    mse = Key("E_lin: mean squared local-linearity error of the loss on one random triplet per probe point")
    abs = Key("mean absolute local-linearity error on the same triplets")

    def run(self, ctx: ProbeContext) -> None:
        x, y = ctx.x, ctx.y
        b = x.shape[0]
        points, alpha = triplets(x.float(), ctx.eps, ctx.generator("local_linearity"))
        losses = ctx.losses(points, y.repeat(3))[0]
        err = losses[2 * b:] - (1 - alpha) * losses[:b] - alpha * losses[b:2 * b]
        ctx.log(self.mse, err.pow(2).mean())
        ctx.log(self.abs, err.abs().mean())
