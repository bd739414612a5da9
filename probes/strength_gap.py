"""``strength_gap``: the perturbation strength gap of APART eq. (2), Fig. 2.

    G = L(x + delta_method) - L(x + delta_PGD)      (mean CE over the probe set)

with delta_PGD the event's shared probe PGD (APART uses PGD-10). Following
eq. (2) literally, G <= 0 when PGD is the stronger attack; at catastrophic
overfitting the method's perturbation deteriorates towards noise and |G|
explodes (APART Fig. 2b plots its magnitude; the paper's prose and figure
caption disagree on the sign, the equation is what we record).

``acc_method`` is the accuracy at ``x + delta_method``, from the same forward pass: the
training attack's own accuracy on the probe set. Beside ``robust_acc``'s ``pgd_acc`` it tells
a model that beats the attack it trains with but not PGD (as at CO, which GradAlign Fig. 1
shows for 2-step PGD training at large radii too) from one that beats neither.

Transfer variant (APART Fig. 2a): with a ``reference_model`` (APART: a model
trained separately with PGD-10), ``transfer_acc`` is the reference model's
accuracy on ``x + delta_method`` and ``transfer_acc_random`` its accuracy
under a random corner of the eps-ball, the "Random" line of the figure.
The reference model is evaluated in eval mode and its mode restored.
"""
from __future__ import annotations

import torch

from codiag.tensors import clamp_to_image, eval_mode

from .base import Key, Probe, ProbeContext, register


@register
class StrengthGap(Probe):
    """APART's strength gap, and the transfer accuracies when a reference model is given."""

    name = "strength_gap"
    needs = frozenset({"method", "pgd", "reference"})
    paper = "APART eq. 2, Fig. 2"
    gap = Key("G = mean CE at x + delta_method minus mean CE at x + delta_PGD (APART eq. 2)")
    loss_method = Key("mean CE at x + delta_method")
    loss_pgd = Key("mean CE at x + delta_PGD")
    acc_method = Key("accuracy at x + delta_method (the training attack's own accuracy)")
    transfer_acc = Key("reference model's accuracy at x + delta_method (with a reference model)")
    transfer_acc_random = Key("reference model's accuracy at a random corner of the eps ball")

    def run(self, ctx: ProbeContext) -> None:
        losses, correct = ctx.at_method
        loss_method = losses.mean()
        loss_pgd = ctx.at_pgd[0].mean()
        ctx.log(self.gap, loss_method - loss_pgd)
        ctx.log(self.loss_method, loss_method)
        ctx.log(self.loss_pgd, loss_pgd)
        ctx.log(self.acc_method, correct.float().mean())
        ref = ctx.reference_model
        if ref is None:
            return
        with eval_mode(ref):
            x, y = ctx.x, ctx.y
            ctx.log(self.transfer_acc, ctx.losses(x + ctx.method_delta, y, ref)[1].float().mean())
            u = torch.rand(x.shape, generator=ctx.generator("strength_gap.random"), device=x.device)
            noise = clamp_to_image(x, ctx.eps * torch.where(u < 0.5, -1.0, 1.0))
            ctx.log(self.transfer_acc_random, ctx.losses(x + noise, y, ref)[1].float().mean())
