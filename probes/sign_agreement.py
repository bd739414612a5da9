"""``sign_agreement``: how often the method's perturbation disagrees in sign with PGD (ZeroGrad Table 10).

ZeroGrad App. C.4: "the number of non-zero perturbation features that are of
different signs with the PGD perturbation divided by the number of all of the
features". So a coordinate counts when delta_method is non-zero there and its
sign differs from that of delta_PGD (the event's shared probe PGD, 10 steps);
zeroed coordinates (ZeroGrad, MultiGrad, the image box) never count.
Key ``disagree`` is a share in [0, 1] (the paper prints percentages: FGSM
17.6 % before and 48.5 % after catastrophic overfitting).
"""
from __future__ import annotations

from .base import Key, Probe, ProbeContext, register


@register
class SignAgreement(Probe):
    """Sign disagreement between the method's perturbation and the probe PGD."""

    name = "sign_agreement"
    needs = frozenset({"method", "pgd"})
    paper = "ZeroGrad Table 10"
    disagree = Key("share of coordinates where delta_method is non-zero and its sign differs from delta_PGD's")

    def run(self, ctx: ProbeContext) -> None:
        m, p = ctx.method_delta, ctx.pgd_delta
        differ = (m != 0) & (m.sign() != p.sign())
        ctx.log(self.disagree, differ.float().mean())
