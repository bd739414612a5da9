"""FGSM-MEP, FGSM with a momentum-based prior from previous epochs (Jia et al., "Prior-Guided
Adversarial Initialization for Fast Adversarial Training", ECCV 2022, Sec. 3.3 and Eq. 9), the
variant its released code runs by default and the FastAT Benchmark runs as ``fgsm_pgi``. The
same step is the base of ConvergeSmooth's FGSM-MEP-CS (``converge_smooth.py``).

Each sample carries a prior ``eta`` and a momentum ``m`` from one epoch to the next:

    g       = grad_x LS(f(x + eta), y)                     (label-smoothed CE, true class ``factor``)
    delta   = Proj_eps( eta + alpha * sign(g) )            (the training perturbation, into [0, 1])
    m'      = g / ||g||_1 + decay * m                      (L1 norm over the whole batch)
    eta'    = Proj_eps( eta + alpha * sign(m') )           (stored for the next epoch, into [0, 1])
    loss    = LS(f(x + delta), y) + lam * mean_{i,k} ( f_k(x_i + delta_i) - f_k(x_i + eta_i) )^2

Label smoothing puts ``factor`` on the true class and ``(1 - factor) / (C - 1)`` on each other
class (the code's ``_label_smoothing``); it is computed here as PyTorch's ``label_smoothing`` of
``(1 - factor) C / (C - 1)``, the same targets. Priors start at random corners +-eps, momenta at
zero; both are re-drawn every ``reset_every`` (40) epochs. The prior is stored as int8 like
FGSM-PGI's, the momentum in float32 (one float per input dimension of the training set: its values
are ~1 / (batch x dimensions), below float16's range).

Defaults (CIFAR-10, 8/255, the released code and the FastAT Benchmark's ``fgsm_pgi.yaml``):
``step = 1`` (alpha = eps), ``factor = 0.6``, ``decay = 0.3``, ``lam = 10``, ``reset_every = 40``;
train mode for the attack. The benchmark adds its protocol's label smoothing 0.4 on top of the
smoothed targets (a protocol option, not part of the method).

Cost: FGSM-PGI's passes, plus reading and writing the momentum.

Measured training-step time over FGSM's (``benchmarks/method_cost.py``, CPU, median of interleaved rounds):
``fgsm_mep`` 1.70 on cnn4 (batch 128), 1.45 on PreAct ResNet-18 (batch 32).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tensors import clamp_to_image, eval_mode
from .base import StateValue, register
from .checks import NON_NEGATIVE, POSITIVE, Real
from .fgsm_pgi import FGSMPGI
from .sample_store import SampleStore, ensure_store


def smoothed_ce(logits: Tensor, y: Tensor, factor: float, reduction: str = "mean") -> Tensor:
    """CE against targets with ``factor`` on the true class and the rest spread evenly over the others."""
    c = logits.shape[1]
    return F.cross_entropy(logits, y, reduction=reduction, label_smoothing=(1.0 - factor) * c / (c - 1))


@register
class FGSMMEP(FGSMPGI):
    """FGSM-MEP: FGSM-PGI's step from the prior, a momentum prior for the next epoch, label smoothing 0.6."""

    name = "fgsm_mep"
    defaults: dict[str, Any] = {"step": 1.0, "lam": 10.0, "reset_every": 40, "eval_mode": False,
                                "factor": 0.6, "decay": 0.3}
    checks = {"step": POSITIVE, "lam": NON_NEGATIVE, "factor": Real(0.5, 1), "decay": NON_NEGATIVE}

    def __init__(self, eps: float, **hparams: Any) -> None:
        super().__init__(eps, **hparams)
        self.momentum: SampleStore | None = None

    def _set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch and self._is_reset_epoch(epoch) and self.momentum is not None:
            self.momentum.data.zero_()
        super()._set_epoch(epoch)

    def _ensure_stores(self, x: Tensor, aug: Any) -> None:
        super()._ensure_stores(x, aug)
        self.momentum = ensure_store(self.momentum, self.num_samples, x, aug, 1.0, self.generator(x.device),
                                     init="zero", dtype=torch.float32)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
                generator: torch.Generator | None = None) -> Tensor:
        idx, aug, write, pure, start = self._prior(x, index, generator)
        x0 = (x + start).detach().requires_grad_(True)
        with eval_mode(model, enabled=bool(self.eval_mode)):
            logits0 = model(x0)
        keep = not pure and float(self.lam) > 0     # the regulariser differentiates through f(x + eta)
        (grad,) = torch.autograd.grad(smoothed_ce(logits0, y, float(self.factor), "sum"), x0, retain_graph=keep)
        if not pure:
            self._cache = (x, logits0 if keep else logits0.detach())
        step = float(self.step) * self.eps
        delta = clamp_to_image(x, (start + step * grad.sign()).clamp(-self.eps, self.eps)).detach()
        if write:
            m = grad / grad.abs().sum() + float(self.decay) * self.momentum.read(idx, aug, grad.dtype)
            self.momentum.write(idx, aug, m)
            self.store.write(idx, aug, clamp_to_image(x, (start + step * m.sign()).clamp(-self.eps, self.eps)))
        return delta

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, delta: Tensor) -> Tensor:
        cache, self._cache = self._cache, None
        logits0 = cache[1] if cache is not None and cache[0] is x else None
        logits = model(x + delta)
        losses = smoothed_ce(logits, y, float(self.factor), "none")
        loss = losses.mean()
        if logits0 is not None:
            self.tally.add(smoothed_ce(logits0.detach(), y, float(self.factor), "none"), losses.detach())
            if float(self.lam) > 0:
                reg = F.mse_loss(logits.float(), logits0.float())
                self._last_reg = reg.detach()
                loss = loss + float(self.lam) * reg
        return loss

    def state(self) -> dict[str, StateValue]:
        out = super().state()
        if self.momentum is not None:
            out["store_bytes"] = float(out.get("store_bytes", 0.0)) + float(self.momentum.nbytes)
        return out
