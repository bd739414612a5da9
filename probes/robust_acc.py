"""``robust_acc``: clean, FGSM and PGD accuracy and mean loss on the probe set.

GradAlign Fig. 4 and 11 (and every paper's accuracy curves): catastrophic
overfitting shows as PGD accuracy collapsing while FGSM accuracy jumps, often
above the clean accuracy, and the PGD loss growing by an order of magnitude
while the FGSM loss falls. FGSM = one step of eps from zero; PGD = the event's
shared probe PGD (10 steps of eps/4, one random start, no early stop).
"""
from __future__ import annotations

from .base import Key, Probe, ProbeContext, register


@register
class RobustAcc(Probe):
    """Accuracy and mean cross entropy on the probe set: clean, under FGSM and under the probe PGD."""

    name = "robust_acc"
    needs = frozenset({"clean", "fgsm", "pgd"})
    paper = "GradAlign Fig. 4, 11"
    clean_acc = Key("accuracy on the clean probe set")
    clean_loss = Key("mean cross entropy on the clean probe set")
    fgsm_acc = Key("accuracy under FGSM (one step of eps from zero)")
    fgsm_loss = Key("mean cross entropy under FGSM")
    pgd_acc = Key("accuracy under the probe PGD (10 steps of eps/4, one random start)")
    pgd_loss = Key("mean cross entropy under the probe PGD")

    def run(self, ctx: ProbeContext) -> None:
        for acc, mean_loss, (loss, correct) in ((self.clean_acc, self.clean_loss, ctx.clean),
                                                (self.fgsm_acc, self.fgsm_loss, ctx.at_fgsm),
                                                (self.pgd_acc, self.pgd_loss, ctx.at_pgd)):
            ctx.log(acc, correct.float().mean())
            ctx.log(mean_loss, loss.mean())
