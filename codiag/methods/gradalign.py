"""FGSM + GradAlign (Andriushchenko & Flammarion, "Understanding and Improving Fast
Adversarial Training", NeurIPS 2020, Sec. 5, Eq. 7; Appendix B).

Perturbation: standard FGSM from zero, step ``eps``. Loss:
``CE(x + delta) + lambda * (1 - mean_i cos(grad_x l(x_i), grad_x l(x_i + eta_i)))``
with ``eta ~ U[-eps, eps]^d``. As in the reference ``train.py``: the gradient at
``x`` is the (detached) FGSM gradient, reused; only the gradient at ``x + eta``
is built with ``create_graph=True`` (double backpropagation); samples with a
zero gradient at either point are left out of the mean. Ours: ``x + eta`` is
clamped to [0, 1] (docs/CONVENTIONS.md, "Inputs and eps"; the reference does not clamp).

``batched`` (``"auto"``): take the two input gradients (at ``x`` and at ``x + eta``) in one
forward and backward of a double-size batch. That is exact only where no batch statistics
couple the samples, so ``"auto"`` batches on a GPU for models without BatchNorm in training
mode; ``True`` forces it (with BatchNorm: statistics of the 2B batch, running averages
updated once instead of twice), ``False`` never.

``lam`` default: Appendix B, Table 2 (CIFAR-10), the log-linear rule
``lambda(eps) = 0.02 * 10^(eps*255/8)`` (0.2 at 8/255, 2.0 at 16/255) for
``eps <= 16/255`` and ``lambda = 2.0`` above (Appendix D.4, 24/255 and 32/255).
The rule was fitted on CIFAR-10 only; pass ``lam`` for other data (SVHN: 2.5 at
8/255). On Fashion-MNIST at eps 0.2 lambda 2.0 alone collapses in one seed of three;
lambda 2.0 with the FGSM step lowered to ``step=0.6`` holds in all three
(examples/methods_vs_co.py, HPARAMS).

``skip_spikes`` (0: off): skip the optimizer step whose parameter-gradient norm exceeds
``skip_spikes`` times the median of the last 50 steps' norms (or is not finite). The paper
trained in fp16 with apex's dynamic loss scaling, which skips every step whose gradients
overflow; in fp32 nothing is skipped, and at 16/255 (lambda 2) the double-backpropagation
gradient can spike 10-70x near the learning-rate peak and throw the network to a constant
classifier. ``skip_spikes=5`` is that behaviour without fp16: a skipped step leaves every
parameter and the optimizer's state unchanged (the gradients are dropped, so the optimizer
passes over them; the step is still counted). ``skipped_steps`` in ``method_state`` counts them.
"""
from __future__ import annotations

import statistics
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tensors import clamp_to_image, input_grad
from .base import Method, StateValue, register, uniform_like
from .checks import NON_NEGATIVE, POSITIVE, OneOf, Optional


def gradalign_lambda(eps: float) -> float:
    """GradAlign's CIFAR-10 lambda for radius ``eps`` (Appendix B Table 2; D.4 above 16/255)."""
    if eps * 255 > 16 + 1e-9:
        return 2.0
    return 0.02 * 10 ** (eps * 255 / 8)


def cosine_per_sample(g1: Tensor, g2: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample cosine (fp32) and the mask of samples whose two gradients are both non-zero.

    Each gradient is normalised before the dot product, as in the reference (``train.py``
    L196-199), so the product of two small norms never enters a denominator. Samples with a
    zero gradient divide by one, so no NaN or inf reaches the backward pass through the
    masked branch.
    """
    a, b = g1.flatten(1).float(), g2.flatten(1).float()
    na, nb = a.norm(dim=1), b.norm(dim=1)
    valid = (na > 0) & (nb > 0)
    ones = torch.ones_like(na)
    a = a / torch.where(valid, na, ones)[:, None]
    b = b / torch.where(valid, nb, ones)[:, None]
    cos = (a * b).sum(1)
    return torch.where(valid, cos, torch.zeros_like(cos)), valid


def has_train_batchnorm(model: nn.Module) -> bool:
    """True if a BatchNorm layer of ``model`` is in training mode (batch statistics couple samples)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())


@register
class GradAlign(Method):
    """FGSM (step ``step`` eps, from zero) + ``lam`` * (1 - cos(grad at x, grad at x + eta))."""

    name = "gradalign"
    defaults: dict[str, Any] = {"lam": None, "step": 1.0, "batched": "auto", "skip_spikes": 0.0}
    checks = {"lam": Optional(NON_NEGATIVE), "step": POSITIVE, "batched": OneOf("auto", True, False),
              "skip_spikes": NON_NEGATIVE}
    #: steps of gradient norms the spike rule compares with, and how many it needs first
    SPIKE_WINDOW, SPIKE_MIN = 50, 10

    def __init__(self, eps: float, **hparams: Any) -> None:
        super().__init__(eps, **hparams)
        if self.lam is None:
            self.lam = gradalign_lambda(self.eps)
        self.lam = float(self.lam)
        self._cache: tuple[Tensor, Tensor, Tensor | None] | None = None
        self._last_cos = float("nan")
        self.grad_norms: list[float] = []     # the last SPIKE_WINDOW parameter-gradient norms
        self.skipped_steps = 0

    def _batches(self, model: nn.Module, x: Tensor) -> bool:
        """Whether this training step takes both input gradients in one 2B forward/backward."""
        if self.lam == 0 or self.batched is False:
            return False
        if self.batched is True:
            return True
        # "auto": where it is exact (no batch statistics couple x and x + eta) and it pays (a
        # GPU; on the CPU a 2B convolution backward costs more than two B ones)
        return x.is_cuda and not has_train_batchnorm(model)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
                generator: torch.Generator | None = None) -> Tensor:
        g2 = None
        if generator is None and self._batches(model, x):
            # the FGSM gradient at x and the regulariser's at x + eta from one double-size batch
            both = torch.cat([x, self._second_point(x)]).requires_grad_(True)
            g = input_grad(model, both, torch.cat([y, y]), create_graph=torch.is_grad_enabled(), precision="autocast")
            grad, g2 = g[: len(x)].detach(), g[len(x):]
        else:
            grad = input_grad(model, x, y, precision="autocast")
        if generator is None:
            self._cache = (x, grad.detach(), g2)   # reused by loss(): the reference's grad1 (and grad2)
        delta = (self.step * self.eps * grad.sign()).clamp(-self.eps, self.eps)
        return clamp_to_image(x, delta).detach()

    def _second_point(self, x: Tensor) -> Tensor:
        """``x + eta``, eta ~ U[-eps, eps]^d from the method's generator, in the image."""
        return clamp_to_image(x, uniform_like(x, self.eps, self.generator(x.device))) + x

    def regulariser(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """``lam * (1 - mean cos)``, differentiable in the parameters through grad at x + eta."""
        cache, self._cache = self._cache, None
        if cache is not None and cache[0] is x:
            g1, g2 = cache[1], cache[2]
        else:
            g1, g2 = input_grad(model, x, y, precision="autocast").detach(), None
        if g2 is None:
            g2 = input_grad(model, self._second_point(x).requires_grad_(True), y, create_graph=True,
                            precision="autocast")
        cos, valid = cosine_per_sample(g1, g2)
        mean_cos = cos.sum() / valid.sum().clamp_min(1)
        self._last_cos = mean_cos.detach()
        return self.lam * (1.0 - mean_cos)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, delta: Tensor) -> Tensor:
        ce = F.cross_entropy(model(x + delta), y)
        if self.lam == 0:
            return ce
        return ce + self.regulariser(model, x, y)

    def train_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
                   index: Any = None) -> Tensor:
        if not self.skip_spikes:
            return super().train_step(model, optimizer, x, y, index)
        delta = self.perturb(model, x, y, index)
        loss = self.loss(model, x, y, delta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.before_step(model, optimizer)
        if self._spike(optimizer):
            optimizer.zero_grad(set_to_none=True)   # parameters without a gradient are passed over
            self.skipped_steps += 1
        optimizer.step()
        return loss.detach()

    def _spike(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether this step's gradient norm is not finite or above ``skip_spikes`` x the recent median."""
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))
        history = self.grad_norms
        spike = not torch.isfinite(torch.tensor(norm)) or (
            len(history) >= self.SPIKE_MIN and norm > float(self.skip_spikes) * statistics.median(history))
        if torch.isfinite(torch.tensor(norm)):
            self.grad_norms = [*history, norm][-self.SPIKE_WINDOW:]
        return spike

    def state(self) -> dict[str, StateValue]:
        out: dict[str, StateValue] = {"lam": self.lam, "train_cos": float(self._last_cos)}
        if self.skip_spikes:
            out["skipped_steps"] = float(self.skipped_steps)
        return out
