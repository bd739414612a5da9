"""``loss_surface``: the loss on a grid around training inputs, for gradient-norm subsets (ATAS Fig. 2).

    S[a, b] = mean_{i in subset} CE(model(clip(x_i + a v1_i + b v2_i)), y_i),  a, b in [-span eps, span eps]

with v1_i = sign(grad) at the method's starting point (the direction of the
adversarial noise; an L-inf unit vector) and v2_i a random sign vector (fixed
across events). Subsets follow ATAS: the training probe instances with the
smallest 10 % (``low``, ATAS's D_1^1) and largest 10 % (``high``, D_10^10)
gradient norm, ranked by the norm averaged over the events so far (ATAS
averages it over training "to reduce the variance"). At catastrophic
overfitting the ``high`` surface becomes distorted, with its maximum inside
the ball. Arrays ``loss_surface.low`` / ``loss_surface.high`` (grid x grid,
rows = a along v1) and ``loss_surface.axes`` (the offsets, pixel units).
Not in the default probe set: grid^2 forward passes per subset.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .base import Array, Probe, ProbeContext, register


@register
class LossSurface(Probe):
    """Options: grid (9 points per axis), span (1.0: axes cover [-eps, eps]), share (0.1), chunk (4096)."""

    name = "loss_surface"
    needs = frozenset({"train", "grads"})
    paper = "ATAS Fig. 2"
    default = False
    low = Array("mean loss on the grid for the 10 % of instances with the smallest gradient norm",
                shape=("grid", "grid"))
    high = Array("the same for the 10 % with the largest gradient norm", shape=("grid", "grid"))
    axes = Array("the grid's offsets along each direction (pixel units)", shape=("grid",))

    def __init__(self, grid: int = 9, span: float = 1.0, share: float = 0.1, chunk: int = 4096,
                 **options: Any) -> None:
        super().__init__(**options)
        self.grid, self.span, self.share, self.chunk = int(grid), float(span), float(share), int(chunk)

    def run(self, ctx: ProbeContext) -> None:
        ts = ctx.train_set
        state = ctx.probe_state(self.name)
        norms = ctx.train_grad_norm
        state["sum"] = state.get("sum", torch.zeros_like(norms)) + norms
        order = state["sum"].argsort()
        m = max(1, int(round(self.share * len(order))))
        axes = torch.linspace(-self.span * ctx.eps, self.span * ctx.eps, self.grid, device=ts.x.device)
        v1 = ctx.train_grad.sign()
        u = torch.rand(ts.x.shape, generator=ctx.generator("loss_surface.v2"), device=ts.x.device)
        v2 = torch.where(u < 0.5, -1.0, 1.0)
        ctx.save_array(self.axes, axes)
        for out, idx in ((self.low, order[:m]), (self.high, order[-m:])):
            ctx.save_array(out, self._surface(ctx, ts.x[idx], ts.y[idx], v1[idx],
                                                                   v2[idx], axes))

    def _surface(self, ctx: ProbeContext, x: torch.Tensor, y: torch.Tensor, v1: torch.Tensor,
                 v2: torch.Tensor, axes: torch.Tensor) -> torch.Tensor:
        n, g = x.shape[0], self.grid
        a, b = torch.meshgrid(axes, axes, indexing="ij")
        coeffs = torch.stack([a.reshape(-1), b.reshape(-1)], 1)            # (g*g, 2)
        shape = (-1,) + (1,) * (x.dim() - 1)
        out = torch.empty(g * g, device=x.device)
        per = max(1, self.chunk // n)                                          # grid points per chunk
        with torch.no_grad():
            for s in range(0, g * g, per):
                c = coeffs[s:s + per]
                pts = (x.unsqueeze(0) + c[:, 0].view(shape).unsqueeze(1) * v1.unsqueeze(0)
                       + c[:, 1].view(shape).unsqueeze(1) * v2.unsqueeze(0)).clamp(0, 1)
                logits = ctx.model(pts.reshape(-1, *x.shape[1:])).float()
                loss = F.cross_entropy(logits, y.repeat(len(c)), reduction="none")
                out[s:s + len(c)] = loss.view(len(c), n).mean(1)
        return out.view(g, g)
