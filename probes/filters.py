"""``filters``: snapshots of the first-layer kernels and per-filter weight norms (GradAlign Fig. 5, 6, 12).

GradAlign's single-layer CNN shows catastrophic overfitting as one filter
turning into a Laplace-like edge detector that grows in norm (Fig. 5, 12)
while the others shrink (Fig. 6). At every event the weights of the model's
first convolution (in module order) are saved as ``filters.weight``
(out, in, kh, kw), its bias as ``filters.bias`` (when it has one; GradAlign
Fig. 7's feature maps need it) and the L2 norms per output filter as
``filters.norms``.
Models without a convolution write nothing.
"""
from __future__ import annotations

from .base import Probe, ProbeContext, first_conv, register


@register
class Filters(Probe):
    """Arrays filters.weight, filters.bias, filters.norms."""

    name = "filters"
    needs = frozenset({"params"})
    paper = "GradAlign Fig. 5, 6, 12"

    def run(self, ctx: ProbeContext) -> None:
        found = first_conv(ctx.model)
        if found is None:
            return
        w = found[1].weight.detach().float().clone()
        ctx.save_array(f"{self.name}.weight", w)
        ctx.save_array(f"{self.name}.norms", w.flatten(1).norm(dim=1))
        if getattr(found[1], "bias", None) is not None:
            ctx.save_array(f"{self.name}.bias", found[1].bias.detach().float().clone())
