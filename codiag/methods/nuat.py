"""NuAT, nuclear-norm adversarial training (Sriramanan, Addepalli, Baburaj & Babu, "Towards Efficient
and Effective Adversarial Training", NeurIPS 2021, Algorithm 1; reference val-iisc/NuAT, MIT licence,
``CIFAR10/NuAT_cifar10.py``: ``NucAttack`` and the training loop).

With ``f`` the logits and ``||A||_*`` the nuclear norm of the ``B x classes`` matrix ``A``:

* start: ``x + init * eps * s`` with random signs ``s`` (Bernoulli), clamped to [0, 1];
* one signed step of ``step * eps`` on ``CE(x') + a_t * lam_e * ||f(x) - f(x')||_* / B``, computed
  in eval mode (``eval_attack``) with the clean logits ``f(x)`` of the training-mode forward pass;
  ``a_t`` alternates 0, 1, 0, 1, ... over an epoch's steps (the reference's ``alt=(counter % 2)``);
  then projection onto the eps ball and [0, 1];
* training loss ``CE(f(x), y) + lam_e * ||f(x) - f(x + delta)||_* / B``: the cross entropy is on
  the *clean* image, the adversarial example enters only the nuclear-norm term;
* ``lam_e`` grows linearly from 0 over the first ``ramp_share`` of the epochs, by
  ``lam / (ramp_share * epochs)`` per epoch, and stays at ``lam`` after (the reference: 4.5 over
  the first 90 of 100 epochs). Without ``epochs`` (a user's loop that does not pass it) ``lam_e = lam``.

``B`` is the batch size (the reference divides by its constant ``TRAIN_BATCH_SIZE``, the size of its
batches, 64). As in GAT (same authors, same structure), the clean forward pass is done once per step
and reused by the loss (the reference repeats it after the attack: same weights and batch, so the
same logits; only BatchNorm's running statistics see the clean batch once instead of twice).

Defaults (reference, CIFAR-10 at 8/255): ``lam = 4.5`` (``Nuc_max``), ``init = 0.5`` (``B_val``
4/255), ``step = 1`` (``Feps`` 8/255), ``alternate = True``, ``eval_attack = True``,
``ramp_share = 0.9``; its schedule is cyclic, 40 epochs up, then down (``lr_peak`` 0.4). The FastAT
Benchmark's ``nu_at`` runs ``lam = 4``, ``ramp_share = 1`` and the attack in train mode
(``-m lam=4 ramp_share=1 eval_attack=false``).

Cost: GAT's passes (FGSM's, the attack's in eval mode, plus a clean forward and backward) and a
small SVD of the ``B x classes`` logit difference in the loss and, every other step, in the attack.

Measured training-step time over FGSM's (``benchmarks/method_cost.py``, CPU, median of interleaved rounds):
``nuat`` 1.54 on cnn4 (batch 128), 1.63 on PreAct ResNet-18 (batch 32).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tensors import clamp_to_image, eval_mode
from .base import StateValue, register
from .checks import NON_NEGATIVE, POSITIVE, Flag, Real
from .clean_guided import CleanGuided


def nuclear_gap(clean: Tensor, other: Tensor) -> Tensor:
    """``||clean - other||_* / B``: the nuclear norm of the batch's logit differences, over the batch size."""
    return torch.linalg.matrix_norm(clean.float() - other.float(), ord="nuc") / clean.shape[0]


@register
class NuAT(CleanGuided):
    """Random-sign start, one step with an alternating nuclear-norm term; clean CE + ``lam_e`` * nuclear norm."""

    name = "nuat"
    lr_peak = 0.4     # CyclicLR(step_size_up=40 epochs) of 100
    defaults: dict[str, Any] = {"lam": 4.5, "init": 0.5, "step": 1.0, "alternate": True, "eval_attack": True,
                                "ramp_share": 0.9}
    checks = {"lam": NON_NEGATIVE, "init": NON_NEGATIVE, "step": POSITIVE, "alternate": Flag(),
              "eval_attack": Flag(), "ramp_share": Real(0, 1, lo_open=True)}

    def current_lam(self) -> float:
        """``lam * min(epoch, R) / R`` with ``R = max(1, round(ramp_share * epochs))`` (``lam`` without epochs)."""
        if not self.epochs:
            return float(self.lam)
        ramp = max(1, round(float(self.ramp_share) * int(self.epochs)))
        return float(self.lam) * min(self.epoch, ramp) / ramp

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
                generator: torch.Generator | None = None) -> Tensor:
        start, logits, term = self._clean_pass(model, x, generator)
        x0 = (x + start).detach().requires_grad_(True)
        lam = term * self.current_lam()
        with eval_mode(model, enabled=bool(self.eval_attack)):
            out = model(x0)
            cost = F.cross_entropy(out, y)
            if lam:
                cost = cost + lam * nuclear_gap(logits.detach(), out)
            (grad,) = torch.autograd.grad(cost, x0)
        adv = (x0.detach() + float(self.step) * self.eps * grad.sign()).clamp(0.0, 1.0)
        return clamp_to_image(x, (adv - x).clamp(-self.eps, self.eps)).detach()

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, delta: Tensor) -> Tensor:
        logits_adv = model(x + delta)
        logits = self._clean(model, x)
        gap = nuclear_gap(logits, logits_adv)
        self._last_gap = gap.detach()
        return F.cross_entropy(logits, y) + self.current_lam() * gap

    def state(self) -> dict[str, StateValue]:
        out: dict[str, StateValue] = {"lam": self.current_lam()}
        if self._last_gap is not None:
            out["nuclear_gap"] = float(self._last_gap)
        return out
