"""ELLE, efficient local-linearity regularisation (Abad Rocamora, Liu, Chrysos, Olmos & Cevher,
"Efficient local linearity regularization to overcome catastrophic overfitting", ICLR 2024,
Sec. 3: the linearity condition Eq. 1 and Algorithm 1; reference code LIONS-EPFL/ELLE ``core/utils/train.py``).

Perturbation: FGSM from zero with a step of eps (the reference's ``--attack-iter 1
--attack-step eps``, ``input_noise_rate 0``). Loss (Alg. 1): for every sample draw two
points ``x_a, x_b = x + U[-eps, eps]^d`` and ``alpha ~ U[0, 1]``, set
``x_c = (1 - alpha) x_a + alpha x_b`` and take the local-linearity error of the loss,

    E_lin = mean_i ( l(x_c) - (1 - alpha) l(x_a) - alpha l(x_b) )^2

(an MSE over the batch, :func:`triplet_error`), computed from one forward pass of the
``3B`` triplet batch and no double backpropagation. The training loss is
``CE(x + delta) + lam * E_lin``.

``lam`` default: the reference's CIFAR-10 scripts (``scripts/run_elle_cifar10.sh``,
PreAct ResNet-18, 30 epochs, cyclic lr 0.2) use 1000 for eps <= 8/255, 5000 for
10/255-20/255 and 10000 for 22/255-26/255 (:func:`elle_lambda`). Ours: the triplet
points are clamped to [0, 1] (docs/CONVENTIONS.md, "Inputs and eps"; the reference does not clamp) and one
optimizer step is taken per batch (the reference's ``train`` calls ``optimizer.step()``
twice per batch, lines 231 and 237; the paper's Algorithm 1 takes one).

Cost: FGSM's passes plus a forward and a backward pass of the ``3B`` triplet batch, as in the
reference: about three FGSM steps. Measured on 2 CPU threads
(``python benchmarks/method_cost.py --only elle elle_a aaer fgsm_pgi gat``, interleaved with the
reference's step): 3.32x FGSM on cnn4 at batch 128 (the reference's step 3.28x), 2.99x on
PreAct ResNet-18 at batch 32 (2.85x).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Method, StateValue, fgsm_step, register
from .checks import NON_NEGATIVE, POSITIVE, Optional


def elle_lambda(eps: float) -> float:
    """ELLE's CIFAR-10 lambda for radius ``eps`` (reference ``scripts/run_elle_cifar10.sh``)."""
    px = eps * 255
    if px <= 8 + 1e-6:
        return 1000.0
    if px <= 20 + 1e-6:
        return 5000.0
    return 10000.0


def triplets(x: Tensor, eps: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``(cat(x_a, x_b, x_c), alpha)``: the random triplets of ELLE Alg. 1 (clamped to [0, 1]).

    Draws ``U[0,1]`` of shape ``(2B, ...)`` for the two end points, then ``alpha`` of
    shape ``(B,)``, in this order (the conformance test replays the generator).
    """
    b = x.shape[0]
    u = torch.rand((2 * b, *x.shape[1:]), generator=generator, device=x.device, dtype=torch.float32)
    ends = (x.repeat(2, *([1] * (x.dim() - 1))) + eps * (2 * u.to(x.dtype) - 1)).clamp(0.0, 1.0)
    alpha = torch.rand((b,), generator=generator, device=x.device, dtype=torch.float32).to(x.dtype)
    a = alpha.view(-1, *([1] * (x.dim() - 1)))
    mid = (1 - a) * ends[:b] + a * ends[b:]
    return torch.cat((ends, mid), dim=0), alpha


def triplet_error(losses: Tensor, alpha: Tensor) -> Tensor:
    """ELLE's E_lin (Sec. 3): MSE between ``l(x_c)`` and ``(1-alpha) l(x_a) + alpha l(x_b)``.

    ``losses`` holds the per-sample losses of ``cat(x_a, x_b, x_c)`` (length ``3B``).
    """
    b = alpha.shape[0]
    la, lb, lc = losses[:b], losses[b:2 * b], losses[2 * b:]
    return F.mse_loss(lc, (1 - alpha) * la + alpha * lb)


@register
class ELLE(Method):
    """FGSM (step ``step`` eps from zero) + ``lam`` * local-linearity error on random triplets."""

    name = "elle"
    defaults: dict[str, Any] = {"lam": None, "step": 1.0}
    checks = {"lam": Optional(NON_NEGATIVE), "step": POSITIVE}
    lr_peak = 0.5     # the reference's 'GradAlign' CyclicLR on CIFAR-10: step_size_up = lr_steps / 2

    def __init__(self, eps: float, **hparams: Any) -> None:
        super().__init__(eps, **hparams)
        if self.lam is None:
            self.lam = elle_lambda(self.eps)
        self.lam = float(self.lam)
        self._last_err: Tensor | None = None

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
                generator: torch.Generator | None = None) -> Tensor:
        return fgsm_step(model, x, y, torch.zeros_like(x), self.step * self.eps, self.eps)

    def linearity_error(self, model: nn.Module, x: Tensor, y: Tensor,
                        generator: torch.Generator | None = None) -> Tensor:
        """E_lin of one random triplet per sample (one forward of the ``3B`` batch, differentiable)."""
        gen = generator if generator is not None else self.generator(x.device)
        pts, alpha = triplets(x, self.eps, gen)
        losses = F.cross_entropy(model(pts), y.repeat(3), reduction="none")
        return triplet_error(losses.float(), alpha.float())

    def weight(self) -> Tensor | float:
        """The regulariser's weight for this step (ELLE: the constant ``lam``)."""
        return self.lam

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, delta: Tensor) -> Tensor:
        ce = F.cross_entropy(model(x + delta), y)
        err = self.linearity_error(model, x, y)
        loss = ce + self.weight() * err
        self._last_err = err.detach()
        self.observe(self._last_err)
        return loss

    def observe(self, err: Tensor) -> None:
        """Hook after each training loss with the step's E_lin (ELLE-A's rule lives here)."""

    def state(self) -> dict[str, StateValue]:
        out: dict[str, StateValue] = {"lam": float(self.weight())}
        if self._last_err is not None:
            out["lin_err"] = float(self._last_err)
        return out
