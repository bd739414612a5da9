"""``robust_acc``: clean, FGSM and PGD accuracy and mean loss on the probe set.

GradAlign Fig. 4 and 11 (and every paper's accuracy curves): catastrophic
overfitting shows as PGD accuracy collapsing while FGSM accuracy jumps, often
above the clean accuracy, and the PGD loss growing by an order of magnitude
while the FGSM loss falls. FGSM = one step of eps from zero; PGD = the event's
shared probe PGD (10 steps of eps/4, one random start, no early stop).
"""
from __future__ import annotations

from .base import Probe, ProbeContext, register


@register
class RobustAcc(Probe):
    """Keys: clean_acc, clean_loss, fgsm_acc, fgsm_loss, pgd_acc, pgd_loss (means over the probe set)."""

    name = "robust_acc"
    needs = frozenset({"clean", "fgsm", "pgd"})
    paper = "GradAlign Fig. 4, 11"

    def run(self, ctx: ProbeContext) -> None:
        for label, (loss, correct) in (("clean", ctx.clean), ("fgsm", ctx.at_fgsm), ("pgd", ctx.at_pgd)):
            ctx.log(self.name, f"{label}_acc", correct.float().mean())
            ctx.log(self.name, f"{label}_loss", loss.mean())
