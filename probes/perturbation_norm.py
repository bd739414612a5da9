"""``perturbation_norm``: norms of the method's perturbations (ZeroGrad Table 4, ATAS Fig. 11).

Per probe sample: L1, L2 and Linf norms of delta_method (the method's own
perturbation, with x + delta clamped to [0, 1]; not projected to the eps
ball, so N-FGSM's larger perturbations show as they are). Scalars: their
means, and ``abs_mean`` = mean |delta| per coordinate, which is ZeroGrad
Table 4's "l1 perturbation norm" once multiplied by 255 (e.g. 6.5 for
ZeroGrad at eps = 8/255). Arrays
``perturbation_norm.l1`` and ``perturbation_norm.l2`` keep the per-sample
values for histograms (ATAS Fig. 11: Linf is eps for nearly all instances,
the L2 norm is diverse).
"""
from __future__ import annotations

from .base import Array, Key, Probe, ProbeContext, register


@register
class PerturbationNorm(Probe):
    """Norms of the method's perturbations of the probe set."""

    name = "perturbation_norm"
    needs = frozenset({"method"})
    paper = "ZeroGrad Table 4, ATAS Fig. 11"
    l1_mean = Key("mean L1 norm of delta_method")
    l2_mean = Key("mean L2 norm of delta_method")
    linf_mean = Key("mean Linf norm of delta_method")
    abs_mean = Key("mean |delta_method| per coordinate (x 255: ZeroGrad Table 4's l1 perturbation norm)")
    l1 = Array("L1 norm of delta_method per probe sample", shape=("probe_n",))
    l2 = Array("L2 norm of delta_method per probe sample", shape=("probe_n",))

    def run(self, ctx: ProbeContext) -> None:
        d = ctx.method_delta.flatten(1)
        l1, l2, linf = d.abs().sum(1), d.norm(dim=1), d.abs().amax(1)
        ctx.log(self.l1_mean, l1.mean())
        ctx.log(self.l2_mean, l2.mean())
        ctx.log(self.linf_mean, linf.mean())
        ctx.log(self.abs_mean, d.abs().mean())
        ctx.save_array(self.l1, l1)
        ctx.save_array(self.l2, l2)
