"""SORA, free second-order attacks (Teymourian, Moslemi, Rahmani & Rohban, "SORA: Free Second-Order
Attacks in Fast Adversarial Training", ICML 2026; the L-inf "sign" variant that its code runs by
default). Written from the paper and from the logic of its code (SecondOrderAT/SORA, licensed
CC-BY-NC: no code taken from it).

One step from a uniform start, with a random step length per input element and a step size set by a
running estimate of how linear the loss is between the attack's start and the training point:

* ``eta ~ U[-init eps, init eps]^d`` (inside [0, 1]); ``g = grad_x l(x + eta)``;
* ``delta = eta + alpha * u * sign(g)``, ``u ~ U[0, 1]^d`` element-wise (the "interpolation"
  that makes the perturbation's size vary, the paper's remedy for epsilon overfitting), clamped
  to [0, 1] only: **no** projection onto the eps ball (like N-FGSM);
* ``alpha = min(1, kappa / (1 - c)) * max_step * eps``, where ``c`` is the linearity coefficient:
  an exponential moving average (rate ``theta``, start ``coef0``) of the batch mean of
  ``<sign(g_i), b_i> / ||g_i||_1``, clipped to [-1, 1], with ``b = grad_delta`` of the training
  loss at ``x + delta`` (the gradient the training backward pass computes anyway: the "free"
  second-order information). ``c`` near 1 (a linear loss) allows the full step; as curvature grows
  the step shrinks as ``kappa / (1 - c)``.

PertAlign, the paper's early warning of catastrophic overfitting, is the batch mean of
``cos(g_i, b_i)`` between the same two gradients; it is recorded every training step at no cost
(``state()["pert_align"]``, with ``linearity_coef`` and ``alpha`` in eps units).

How ``b`` is obtained: :meth:`loss` evaluates the model at ``x + d`` with ``d`` a leaf copy of
``delta`` and a gradient hook on it, so that the caller's ``loss.backward()`` delivers ``b``; nothing
is recomputed and a user's own loop that calls ``perturb`` then ``loss`` gets the same behaviour.
The estimate used for batch ``t`` comes from batch ``t - 1`` (as in the reference, which updates it
before each attack from the previous batch's two gradients). codiag's input gradients are of the
*sum*-reduced loss and the training loss is a *mean*, so ``b`` is multiplied by the batch size to
put both in the same units (the reference has both as gradients of a mean). The reference works in
normalised input space; codiag in pixel space (the same for one-channel data, and for the cosine).

Defaults (reference ``attack_params.py`` and ``train.py``, CIFAR-10 at 8/255, one setting for every
dataset and architecture): ``max_step = 2`` (max_alpha 2 eps), ``init = 1``, ``coef0 = 0.99``,
``theta = 0.05``, ``kappa = 0.02``; cyclic learning rate peaking at half of training.

Cost: N-FGSM's passes plus element-wise work (one uniform draw more, the coefficient's reductions);
see ``benchmarks/method_cost.py``.

Measured training-step time over FGSM's (``benchmarks/method_cost.py``, CPU, median of interleaved rounds):
``sora`` 1.36 on cnn4 (batch 128), 1.02 on PreAct ResNet-18 (batch 32).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tensors import clamp_to_image, input_grad
from .base import Method, StateValue, register
from .checks import NON_NEGATIVE, POSITIVE, Real


@register
class SORA(Method):
    """SORA: uniform start, step ``alpha * U[0,1] * sign(g)`` with alpha set by a running linearity estimate."""

    name = "sora"
    lr_peak = 0.5     # reference training/utils.py: cyclic, half the iterations up
    defaults: dict[str, Any] = {"max_step": 2.0, "init": 1.0, "coef0": 0.99, "theta": 0.05, "kappa": 0.02}
    checks = {"max_step": POSITIVE, "init": NON_NEGATIVE, "coef0": Real(-1, 1), "theta": Real(0, 1),
              "kappa": POSITIVE}
    start_radius = "init"

    def __init__(self, eps: float, **hparams: Any) -> None:
        super().__init__(eps, **hparams)
        self.coef = torch.tensor(float(self.coef0))           # the linearity coefficient c
        self._cache: tuple[Tensor, Tensor] | None = None        # (x, g) of the last training attack
        self._last: dict[str, Tensor] = {}

    def step_scale(self) -> Tensor:
        """``min(1, kappa / (1 - c))``: the share of ``max_step`` the next attack may use (1 at c = 1)."""
        return (float(self.kappa) / (1.0 - self.coef)).clamp(max=1.0)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
                generator: torch.Generator | None = None) -> Tensor:
        eta = self.start(model, x, y, index, generator)
        with self._call(generator, x.device) as gen:
            pure = self._pure
            u = torch.rand(x.shape, generator=gen, device=x.device, dtype=torch.float32).to(x.dtype)
        grad = input_grad(model, x + eta, y, precision="autocast")
        alpha = self.step_scale().to(x.device) * float(self.max_step) * self.eps
        if not pure:
            self._cache = (x, grad.detach())
            self._last["alpha"] = alpha.detach() / self.eps
        return clamp_to_image(x, eta + alpha.to(x.dtype) * u * grad.sign()).detach()

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, delta: Tensor) -> Tensor:
        cache, self._cache = self._cache, None
        if cache is None or cache[0] is not x or not torch.is_grad_enabled():
            return F.cross_entropy(model(x + delta), y)
        d = delta.detach().requires_grad_(True)
        d.register_hook(lambda b: self._update(cache[1], b * x.shape[0]))
        return F.cross_entropy(model(x + d), y)

    def _update(self, g: Tensor, b: Tensor) -> None:
        """The linearity coefficient's moving average and PertAlign from this step's two gradients."""
        g, b = g.float().flatten(1), b.detach().float().flatten(1)
        batch = ((g.sign() * b).sum(1) / g.abs().sum(1).clamp_min(1e-12)).mean().clamp(-1.0, 1.0)
        theta = float(self.theta)
        self.coef = (1 - theta) * self.coef.to(batch.device) + theta * batch
        self._last["linearity_coef_batch"] = batch
        self._last["pert_align"] = F.cosine_similarity(g, b, dim=1).mean()

    def state(self) -> dict[str, StateValue]:
        out: dict[str, StateValue] = {k: float(v) for k, v in self._last.items()}
        out["linearity_coef"] = float(self.coef)
        return out
