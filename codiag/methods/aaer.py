"""AAER, abnormal adversarial examples regularisation (Lin, Yu & Liu, "Eliminating Catastrophic
Overfitting Via Abnormal Adversarial Examples Regularization", NeurIPS 2023, Sec. 3.1 (definition)
and 3.3 (regulariser); reference tmllab/2023_NeurIPS_AAER ``CIFAR10/AAER.py`` lines 93-149).

FGSM-RS makes two forward passes per step anyway: one at the random start ``x + eta`` (for
the input gradient) and one at the adversarial example ``x + delta`` (for training). A
training example is *abnormal* when its loss after the FGSM step is lower than before it,
``l(x + delta) < l(x + eta)``. With ``A`` the abnormal and ``N`` the normal examples of the
batch (``B`` in all), ``f`` the logits and ``sg`` stop-gradient:

    ce_A  = sg mean_{i in A} ( l(x_i + eta_i) - l(x_i + delta_i) )
    var_A = mean_{i in A} || sg f(x_i + eta_i) - f(x_i + delta_i) ||^2
    var_N = sg mean_{i in N} || f(x_i + eta_i) - f(x_i + delta_i) ||^2
    loss  = CE(x + delta) + lam1 * |A| / B * ( lam2 * ce_A + lam3 * max(var_A - var_N, 0) )

the regulariser applying only when both ``A`` and ``N`` are non-empty (reference line 141).
As in the reference, ``ce_A`` and the share ``|A| / B`` are computed from detached losses
(lines 124, 127-135): they scale the term and add to the loss value, but only ``var_A``
carries a gradient. The paper's Sec. 3.3 objective reads as if ``ce_A`` were differentiated too; codiag
follows the code that produced the published numbers.
Nothing is recomputed: the logits and losses at the start come from the gradient's forward
pass. Counts and conditions stay on the device (the reference's ``abnormal_count != 0`` is a
host sync; here it is a multiplicative mask, the same value). The step's per-sample losses
are kept in :attr:`AAER.tally` (``codiag.methods.step_tally``) for the ``abnormal_examples``
probe, at no extra forward pass.

Defaults: RS-AAER at CIFAR-10 eps 8/255 (reference README): uniform start of radius eps,
step 1.25 eps, projection onto the eps ball, ``lam1 = 1``, ``lam2 = 2.5``, ``lam3 = 1.5``.
N-AAER (``init=2, step=1, project=False``) and the other radii are rows of
``codiag.methods.settings``. The perturbation is computed in the model's current mode (train
mode during training, as in the reference).

Cost: FGSM-RS's passes and element-wise work on the logits. Measured on 2 CPU threads
(``python benchmarks/method_cost.py --only elle elle_a aaer fgsm_pgi gat``): 1.18x FGSM
on cnn4 at batch 128, where the random start's draw is most of it, and 1.03x on PreAct
ResNet-18 at batch 32; the reference's step, timed beside it, 1.17x and 0.99x.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tensors import clamp_to_image
from .base import Method, StateValue, register, uniform_like
from .checks import NON_NEGATIVE, POSITIVE, Flag
from .step_tally import StepTally


@register
class AAER(Method):
    """FGSM-RS (start ``init`` eps, step ``step`` eps) + the abnormal-example regulariser (lam1-3)."""

    name = "aaer"
    defaults: dict[str, Any] = {"step": 1.25, "init": 1.0, "project": True,
                                "lam1": 1.0, "lam2": 2.5, "lam3": 1.5}
    checks = {"step": POSITIVE, "init": NON_NEGATIVE, "project": Flag(), "lam1": NON_NEGATIVE,
              "lam2": NON_NEGATIVE, "lam3": NON_NEGATIVE}
    lr_peak = 0.5     # CIFAR10/AAER.py: CyclicLR(step_size_up=lr_steps / 2)

    def __init__(self, eps: float, **hparams: Any) -> None:
        super().__init__(eps, **hparams)
        self.tally = StepTally()
        self._cache: tuple[Tensor, Tensor, Tensor] | None = None   # (x, logits at start, loss at start)
        self._last: dict[str, Tensor] = {}

    def _start_radius(self) -> float:
        return float(self.init)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
                generator: torch.Generator | None = None) -> Tensor:
        with self._call(generator, x.device) as gen:
            start = clamp_to_image(x, uniform_like(x, float(self.init) * self.eps, gen))
            pure = self._pure
        x0 = (x + start).detach().requires_grad_(True)
        logits0 = model(x0)
        loss0 = F.cross_entropy(logits0, y, reduction="none")
        (grad,) = torch.autograd.grad(loss0.sum(), x0)
        if not pure:
            self._cache = (x, logits0.detach(), loss0.detach())
        delta = start + float(self.step) * self.eps * grad.sign()
        if self.project:
            delta = delta.clamp(-self.eps, self.eps)
        return clamp_to_image(x, delta).detach()

    def _at_start(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        cache, self._cache = self._cache, None
        if cache is not None and cache[0] is x:
            return cache[1], cache[2]
        # loss() without the perturb() that made delta: the clean input stands in for the start
        with torch.no_grad():
            logits0 = model(x)
        return logits0, F.cross_entropy(logits0, y, reduction="none")

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, delta: Tensor) -> Tensor:
        logits0, loss0 = self._at_start(model, x, y)
        logits = model(x + delta)
        losses = F.cross_entropy(logits, y, reduction="none")
        reg = self.regulariser(logits0, loss0, logits, losses)
        self.tally.add(loss0, losses.detach())
        return losses.mean() + reg

    def regulariser(self, logits0: Tensor, loss0: Tensor, logits: Tensor, losses: Tensor) -> Tensor:
        """The Sec. 3.3 regulariser as in the reference (lines 127-142); only ``var_A`` carries a gradient."""
        b = losses.shape[0]
        abnormal = (loss0 > losses.detach()).to(losses.dtype)
        normal = 1.0 - abnormal
        n_ab, n_norm = abnormal.sum(), normal.sum()
        variation = (logits0.float() - logits.float()).pow(2).sum(1)
        ce_a = (abnormal * (loss0 - losses.detach())).sum() / n_ab.clamp_min(1)
        var_a = (abnormal * variation).sum() / n_ab.clamp_min(1)
        var_n = ((normal * variation).sum() / n_norm.clamp_min(1)).detach()
        both = ((n_ab > 0) & (n_norm > 0)).to(losses.dtype)
        reg = both * (self.lam1 * n_ab / b) * (self.lam2 * ce_a + self.lam3 * F.relu(var_a - var_n))
        self._last = {"abnormal_share": (n_ab / b).detach(), "reg": reg.detach()}
        return reg

    def state(self) -> dict[str, StateValue]:
        return {k: float(v) for k, v in self._last.items()}
