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

from codiag.models import first_conv

from .base import Array, Probe, ProbeContext, register


@register
class Filters(Probe):
    """Snapshots of the first convolution's kernels."""

    name = "filters"
    needs = frozenset({"params"})
    paper = "GradAlign Fig. 5, 6, 12"
    weight = Array("the first convolution's kernels", shape=("out_channels", "in_channels", "kh", "kw"))
    norms = Array("L2 norm of each output filter", shape=("out_channels",))
    bias = Array("the first convolution's bias (when it has one)", shape=("out_channels",))

    def run(self, ctx: ProbeContext) -> None:
        conv = first_conv(ctx.model)
        if conv is None:
            return
        w = conv.weight.detach().float().clone()
        ctx.save_array(self.weight, w)
        ctx.save_array(self.norms, w.flatten(1).norm(dim=1))
        if conv.bias is not None:
            ctx.save_array(self.bias, conv.bias.detach().float().clone())
