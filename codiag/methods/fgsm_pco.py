"""FGSM-PCO, prior-guided FGSM with confidence-weighted interpolation (Wang et al., "Preventing
Catastrophic Overfitting in Fast Adversarial Training: A Bi-level Optimization Perspective", ECCV 2024).
Written from the paper and the logic of the FastAT Benchmark's code (fzjcdt/FastAT_Benchmark
``fast_at/fgsm_pco.py``; no licence: nothing taken from it).

Each sample carries its previous perturbation ``eta`` (random corners +-eps at first, never re-drawn):

    g       = grad_x LS(f(x + eta), y)                        (label smoothing ``factor``, as FGSM-MEP)
    delta   = Proj_eps( eta + alpha * sign(g) )              (into [0, 1]; stored as the next ``eta``)
    c       = 1 - softmax(f(x + eta))_y                      (the confidence gap, *with* its gradient)
    x_new   = c * (x + eta) + (1 - c) * (x + beta * delta)   (not clamped, as in the code)
    loss    = LS(f(x_new), y) + lam * | MSE(f(x + delta), f(x + eta)) - MSE(f(x + delta), f(x_new)) |

A confident sample (small ``c``) trains near the extrapolated FGSM point ``x + beta delta``; an
uncertain one near its prior. ``perturb`` returns ``delta`` (what the probes see); ``loss`` builds
``x_new`` from the forward pass at the prior kept from the attack. ``x_new`` may leave [0, 1] and the
eps ball (``beta`` 1.5): the code trains there, and so does codiag.

Defaults (the benchmark's CIFAR-10 config): ``step = 1`` (alpha = eps), ``beta = 1.5``, ``lam = 10``,
``factor = 0.6``; no re-draw of the priors (``reset_every = 0``); train mode for the attack.

Cost: FGSM-PGI's passes plus a forward and backward pass at ``x + delta`` (three forward passes).

Measured training-step time over FGSM's (``benchmarks/method_cost.py``, CPU, median of interleaved rounds):
``fgsm_pco`` 2.41 on cnn4 (batch 128), 2.15 on PreAct ResNet-18 (batch 32).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tensors import clamp_to_image
from .base import StateValue, register
from .checks import NON_NEGATIVE, POSITIVE, Real
from .fgsm_mep import smoothed_ce
from .fgsm_pgi import FGSMPGI


@register
class FGSMPCO(FGSMPGI):
    """FGSM-PCO: FGSM from the stored prior; train at a confidence-weighted mix of prior and 1.5x FGSM point."""

    name = "fgsm_pco"
    defaults: dict[str, Any] = {"step": 1.0, "lam": 10.0, "reset_every": 0, "eval_mode": False,
                                "beta": 1.5, "factor": 0.6}
    checks = {"step": POSITIVE, "lam": NON_NEGATIVE, "beta": POSITIVE, "factor": Real(0.5, 1)}

    def __init__(self, eps: float, **hparams: Any) -> None:
        super().__init__(eps, **hparams)
        self._pco: tuple[Tensor, Tensor, Tensor] | None = None     # (x, prior, logits at the prior)
        self._last_conf: Tensor | None = None

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
                generator: torch.Generator | None = None) -> Tensor:
        idx, aug, write, pure, start = self._prior(x, index, generator)
        x0 = (x + start).detach().requires_grad_(True)
        logits0 = model(x0)
        (grad,) = torch.autograd.grad(smoothed_ce(logits0, y, float(self.factor), "sum"), x0, retain_graph=not pure)
        if not pure:
            self._pco = (x, start, logits0)
        delta = clamp_to_image(x, (start + float(self.step) * self.eps * grad.sign()).clamp(-self.eps, self.eps))
        delta = delta.detach()
        if write:
            self.store.write(idx, aug, delta)
        return delta

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, delta: Tensor) -> Tensor:
        cache, self._pco = self._pco, None
        if cache is None or cache[0] is not x:      # no prior known: the FGSM point alone
            return smoothed_ce(model(x + delta), y, float(self.factor))
        _, start, logits0 = cache
        conf = (1 - F.softmax(logits0, dim=1).gather(1, y.unsqueeze(1))).clamp(0, 1)
        conf = conf.view(-1, *([1] * (x.dim() - 1)))
        x_new = conf * (x + start) + (1 - conf) * (x + float(self.beta) * delta)
        output = model(x_new)
        fgsm_output = model(x + delta)
        gap = (F.mse_loss(fgsm_output.float(), logits0.float()) - F.mse_loss(fgsm_output.float(), output.float())).abs()
        self._last_reg, self._last_conf = gap.detach(), conf.detach().mean()
        return smoothed_ce(output, y, float(self.factor)) + float(self.lam) * gap

    def state(self) -> dict[str, StateValue]:
        out = super().state()
        if self._last_conf is not None:
            out["confidence_gap"] = float(self._last_conf)
        return out
