"""``fgsm_pgd_cos``: mean cos(delta_FGSM, delta_PGD) over the probe set (GradAlign Fig. 4, 11).

delta_FGSM = eps * sign(grad_x L(x)) (GradAlign eq. 2) and delta_PGD is the
event's shared probe PGD; both are projected to the eps ball and [0, 1]
before the cosine. GradAlign (App. C.2) observes a very high correlation of
this cosine with gradient alignment; both drop at catastrophic overfitting.
Samples where either perturbation is exactly zero have no cosine: they are
counted in ``n_zero`` and left out of the mean.
"""
from __future__ import annotations

from .base import Key, Probe, ProbeContext, masked_mean, per_sample_cos, register


@register
class FgsmPgdCos(Probe):
    """Cosine between the FGSM and the probe-PGD perturbations."""

    name = "fgsm_pgd_cos"
    needs = frozenset({"fgsm", "pgd"})
    paper = "GradAlign Fig. 4, 11"
    mean = Key("mean cos(delta_FGSM, delta_PGD) over samples where both are non-zero")
    n_zero = Key("samples left out because a perturbation is exactly zero")

    def run(self, ctx: ProbeContext) -> None:
        cos, ok = per_sample_cos(ctx.fgsm_delta, ctx.pgd_delta)
        ctx.log(self.mean, masked_mean(cos, ok))
        ctx.log(self.n_zero, (~ok).sum())
