"""``instance_grad_norm``: per-sample input-gradient norms on the fixed training subset (ATAS Fig. 3, 6, 10).

    g_i = || grad_{x~_i} l(x~_i, y_i; theta) ||_2

at the method's starting point x~_i (ATAS Sec. III: the random start for
FGSM-RS, the carried perturbation for ATTA; the clean point for FGSM or
when the method does not expose ``start``), with the per-sample (sum-reduced)
loss so g_i does not depend on the batch size (docs/CONVENTIONS.md, "Per-instance gradient
norms"). The whole vector is kept as an array per event (one entry per
training probe sample, in the order of the recorded indices), so reports can
split instances into gradient-norm deciles as ATAS does. Scalars: mean,
median, max and the long-tail ratio of ATAS Fig. 6b,
mean(g^2) / mean(g)^2 (>= 1; larger = more long-tailed).
"""
from __future__ import annotations

from .base import Array, Key, Probe, ProbeContext, register


@register
class InstanceGradNorm(Probe):
    """Per-instance input-gradient norms g_i on the training probe subset."""

    name = "instance_grad_norm"
    needs = frozenset({"train", "grads"})
    paper = "ATAS Fig. 3, 6, 10"
    mean = Key("mean of g_i")
    median = Key("median of g_i")
    max = Key("largest g_i")
    long_tail_ratio = Key("mean(g^2) / mean(g)^2 (ATAS Fig. 6b; >= 1, larger = more long-tailed)")
    norms = Array("g_i per training probe sample, in the order of the recorded indices", "instance_grad_norm",
                  shape=("train_probe_n",))

    def run(self, ctx: ProbeContext) -> None:
        g = ctx.train_grad_norm
        mean = g.mean()
        ctx.log(self.mean, mean)
        # kthvalue, not torch.quantile (which fails above 2^24 elements; docs/CONVENTIONS.md)
        ctx.log(self.median, g.kthvalue((g.numel() + 1) // 2).values)
        ctx.log(self.max, g.max())
        ctx.log(self.long_tail_ratio, g.square().mean() / mean.square().clamp_min(1e-30))
        ctx.save_array(self.norms, g)
