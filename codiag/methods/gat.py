"""GAT, guided adversarial training (Sriramanan, Addepalli, Baburaj & Babu, "Guided Adversarial
Attack for Evaluating and Enhancing Adversarial Defenses", NeurIPS 2020, the single-step defence
GAT; reference val-iisc/GAMA-GAT ``CIFAR10/GAT_cifar10.py`` lines 90-104 and 184-254).

With ``p(x) = softmax(f(x))`` and the clean prediction ``p(x)`` held fixed during the attack:

* start: ``x + init * eps * s`` with random signs ``s`` (Bernoulli, not uniform), clamped to [0, 1];
* one signed step of ``step * eps`` on ``CE(x') + a_t * lam * mean_i ||p(x_i) - p(x'_i)||_2^2``
  (the *guided* attack, computed in eval mode), then projection onto the eps ball and [0, 1];
  ``a_t`` alternates 0, 1, 0, 1, ... over an epoch's steps (reference ``alt=(counter % 2)``);
* training loss ``CE(f(x), y) + lam * mean_i ||p(x_i) - p(x_i + delta_i)||_2^2``: the cross
  entropy is on the *clean* image, the adversarial example only enters the L2 term.

The first release of the reference trained without the guided term in the attack (an
ablation, reported to the authors and fixed since); codiag follows the corrected code. Defaults (CIFAR-10,
README): ``lam = 10`` (``l2_reg``), ``init = 0.5`` (``B_val`` 4/255), ``step = 1``
(``Feps`` 8/255), ``alternate = True``, 100 epochs with ``lam`` multiplied by ``boost = 4``
(``mul``) after epoch 85 (``boost_at = 0.86`` of the epochs; needs ``epochs``). MNIST
(``GAT-MNIST.py``): ``lam`` 15, ``init`` 1 (B_val = eps = 0.3), guided term at every step,
``boost`` 3 from epoch 26 of 50 (a row of ``codiag.methods.settings``).

Ours: the clean forward pass is done once per step (the reference does it twice, before
the attack and again for the loss: same weights, same batch statistics, so the same logits;
only BatchNorm's running statistics see the clean batch once instead of twice).

Cost: FGSM's passes (the attack's in eval mode) plus a forward and a backward pass of the
clean batch, whose cross entropy is the training loss. Measured on 2 CPU threads
(``python benchmarks/method_cost.py --only elle elle_a aaer fgsm_pgi gat``): 1.73x FGSM on cnn4
at batch 128, 1.53x on PreAct ResNet-18 at batch 32; the reference's step, with its second
clean forward, 1.81x and 1.78x.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tensors import clamp_to_image, eval_mode
from .base import StateValue, register
from .checks import NON_NEGATIVE, POSITIVE, SHARE, Flag, Optional
from .clean_guided import CleanGuided


def prob_gap(p_clean: Tensor, logits: Tensor) -> Tensor:
    """``mean_i || p_clean_i - softmax(logits_i) ||_2^2`` (GAT's relaxation term)."""
    return (p_clean.float() - F.softmax(logits.float(), dim=1)).pow(2).sum(1).mean()


@register
class GAT(CleanGuided):
    """Guided single-step attack from a random-sign start; clean CE + ``lam`` * L2 between softmax outputs."""

    name = "gat"
    defaults: dict[str, Any] = {"lam": 10.0, "init": 0.5, "step": 1.0, "alternate": True,
                                "boost": 4.0, "boost_at": 0.86}
    checks = {"lam": NON_NEGATIVE, "init": NON_NEGATIVE, "step": POSITIVE, "alternate": Flag(),
              "boost": POSITIVE, "boost_at": Optional(SHARE)}

    def current_lam(self) -> float:
        """``lam``, times ``boost`` from epoch ``boost_at * epochs`` on (reference lines 249-254)."""
        if self.epochs and self.boost_at is not None and self.epoch >= round(float(self.boost_at) * int(self.epochs)):
            return float(self.lam) * float(self.boost)
        return float(self.lam)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
                generator: torch.Generator | None = None) -> Tensor:
        start, logits, guided = self._clean_pass(model, x, generator)
        p_clean = F.softmax(logits.detach().float(), dim=1)
        x0 = (x + start).detach().requires_grad_(True)
        with eval_mode(model):
            out = model(x0)
            cost = F.cross_entropy(out, y) + guided * self.current_lam() * prob_gap(p_clean, out)
            (grad,) = torch.autograd.grad(cost, x0)
        adv = (x0.detach() + float(self.step) * self.eps * grad.sign()).clamp(0.0, 1.0)
        delta = (adv - x).clamp(-self.eps, self.eps)
        return clamp_to_image(x, delta).detach()

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, delta: Tensor) -> Tensor:
        logits_adv = model(x + delta)
        logits = self._clean(model, x)
        gap = prob_gap(F.softmax(logits.float(), dim=1), logits_adv)
        self._last_gap = gap.detach()
        return F.cross_entropy(logits, y) + self.current_lam() * gap

    def state(self) -> dict[str, StateValue]:
        out: dict[str, StateValue] = {"lam": self.current_lam()}
        if self._last_gap is not None:
            out["prob_gap"] = float(self._last_gap)
        return out
