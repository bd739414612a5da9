"""FGSM-PGI, FGSM with prior-guided initialisation (Jia, Zhang, Wei, Wu, Ma, Wang & Cao,
"Prior-Guided Adversarial Initialization for Fast Adversarial Training", ECCV 2022), the
epoch-prior variant FGSM-EP with the prior-guided regulariser.

The start of a sample's attack is its own adversarial perturbation from the previous epoch
(the *prior*, ``eta``), and the training loss asks the output at the adversarial example
not to move far from the output at the prior:

    delta   = Proj_eps( eta + alpha * sign(grad_x CE(x + eta)) )       (then clamped to [0, 1])
    loss    = CE(x + delta) + lam * mean_{i,k} ( f_k(x_i + delta_i) - f_k(x_i + eta_i) )^2
    eta'    = delta                                                    (stored for the next epoch)

(``f`` the logits; both outputs carry gradients). The squared difference is averaged over
samples *and* classes, as ``nn.MSELoss`` does in the released code (``FGSM_MEP.py`` line
277), for which ``lam = 10`` was tuned. Priors start at random corners +-eps of the ball
(line 197: ``+-alpha`` clamped to eps, the same for ``alpha >= eps``) and are re-drawn every ``reset_every`` (40) epochs
(line 187). Defaults (CIFAR-10 eps 8/255, the released code's arguments, lines 22-41):
``alpha = 8/255 = eps`` (``step = 1``), ``lam = 10``, ``reset_every = 40`` (of 110 epochs);
the perturbation is computed in train mode, as there.

Storage: one int8 per input dimension in the padded frame (``sample_store.py``), following
each sample's crop and flip like ATTA/ATAS (the released code keeps the prior in the image
frame and ignores the crop). Not here: the released code's default is the momentum variant
FGSM-MEP with label smoothing 0.6; this module is the paper's FGSM-EP equations.
The step's per-sample losses at the prior and at the adversarial example go to
:attr:`FGSMPGI.tally` for the ``abnormal_examples`` probe (no extra forward pass).

Cost: FGSM's passes, with the backward pass of the loss also running through the forward pass
at the prior (kept from the attack, not repeated), since both outputs of the regulariser carry
gradients. Measured on 2 CPU threads
(``python benchmarks/method_cost.py --only elle elle_a aaer fgsm_pgi gat``): 1.65x FGSM on cnn4
at batch 128, 1.40x on PreAct ResNet-18 at batch 32; the paper's equations as a step
(``tests/test_conformance.py``), timed beside it, 1.64x and 1.41x.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tensors import clamp_to_image, eval_mode
from .base import StateValue, register
from .carried import CarriedPerturbation
from .checks import NON_NEGATIVE, POSITIVE
from .sample_store import ensure_store, split_meta
from .step_tally import StepTally


@register
class FGSMPGI(CarriedPerturbation):
    """FGSM-EP: one step of ``step`` eps from the sample's previous-epoch perturbation + ``lam`` * output MSE."""

    name = "fgsm_pgi"
    defaults: dict[str, Any] = {"step": 1.0, "lam": 10.0, "reset_every": 40, "eval_mode": False}
    checks = {"step": POSITIVE, "lam": NON_NEGATIVE}

    def __init__(self, eps: float, **hparams: Any) -> None:
        super().__init__(eps, **hparams)
        self.tally = StepTally()
        self._cache: tuple[Tensor, Tensor] | None = None     # (x, logits at the prior, with graph)
        self._last_reg: Tensor | None = None

    def _is_reset_epoch(self, epoch: int) -> bool:
        n = int(self.reset_every or 0)
        return n > 0 and epoch > 0 and epoch % n == 0

    def _read_start(self, x: Tensor, idx: Tensor | None, aug: Any, gen: torch.Generator) -> Tensor:
        if idx is not None and self.store is not None:
            start = self.store.read(idx, aug, x.dtype)
        else:   # no sample identity (probe batch): a random corner, as a fresh prior
            u = torch.rand(x.shape, generator=gen, device=x.device)
            start = torch.where(u < 0.5, -self.eps, self.eps).to(x.dtype)
        return clamp_to_image(x, start)

    def _ensure_stores(self, x: Tensor, aug: Any) -> None:
        """The per-sample stores, made on first use (the prior: random signs of eps)."""
        self.store = ensure_store(self.store, self.num_samples, x, aug, self.eps, self.generator(x.device),
                                  init="sign")

    def _prior(self, x: Tensor, index: Any, generator: torch.Generator | None) -> tuple[Any, Any, bool, bool, Tensor]:
        """``(idx, aug, write, pure, start)``: the samples' stored prior perturbation ``start`` and
        whether this call writes the store back (a training step) or only reads it (a probe)."""
        idx, aug = split_meta(index)
        with self._call(generator, x.device) as gen:
            write = self.writes_state(idx)
            pure = self._pure
            if write:
                self._count(len(idx))
                self._ensure_stores(x, aug)
            start = self._read_start(x, idx, aug, gen)
        return idx, aug, write, pure, start

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
                generator: torch.Generator | None = None) -> Tensor:
        idx, aug, write, pure, start = self._prior(x, index, generator)
        x0 = (x + start).detach().requires_grad_(True)
        with eval_mode(model, enabled=bool(self.eval_mode)):
            logits0 = model(x0)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits0, y, reduction="sum"), x0, retain_graph=not pure)
        if not pure:
            self._cache = (x, logits0)
        delta = (start + float(self.step) * self.eps * grad.sign()).clamp(-self.eps, self.eps)
        delta = clamp_to_image(x, delta).detach()
        if write:
            self.store.write(idx, aug, delta)
        return delta

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, delta: Tensor) -> Tensor:
        cache, self._cache = self._cache, None
        logits0 = cache[1] if cache is not None and cache[0] is x else model(x)   # no prior known: clean
        logits = model(x + delta)
        losses = F.cross_entropy(logits, y, reduction="none")
        reg = F.mse_loss(logits.float(), logits0.float())
        self._last_reg = reg.detach()
        self.tally.add(F.cross_entropy(logits0.detach(), y, reduction="none"), losses.detach())
        return losses.mean() + float(self.lam) * reg

    def state(self) -> dict[str, StateValue]:
        out = super().state()
        if self._last_reg is not None:
            out["output_mse"] = float(self._last_reg)
        return out
