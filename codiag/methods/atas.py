"""ATAS, adversarial training with adaptive step size (Huang et al., "Fast Adversarial
Training with Adaptive Step Size", IEEE TIP 2023, Algorithm 1, Eq. 3-5, Appendix B).

ATTA's carried perturbation with a per-sample step size
``alpha_i = gamma / (c + sqrt(v_i))``, where
``v_i <- beta v_i + (1 - beta) ||grad_x l(x_i^{j-1})||_2^2`` is a moving average of
the squared input-gradient norm at the sample's starting point (the gradient
the step uses anyway, so no extra pass). As in the reference code the step is
written ``(gamma/c) / (1 + sqrt(v)/c)`` and clamped.

Defaults (paper Sec. V and the reference ``ATAS_CIFAR.sh``/``adv_attack.py``):
``beta = 0.5``; ``gamma/c = 16/255`` (``gamma_c``) and the clamp ``[4/255, 14/255]``
(``min_step``, ``max_step``), all in pixel units and the same at every eps, as the
reference hard-codes them (``adv_attack.py`` L48-49, ``ATAS_CIFAR.sh``) and the paper runs
them at 8/255, 12/255 and 16/255; 5 warm-up epochs with a constant step of eps
(``warmup_step = 1`` eps; ``v`` not updated); carried perturbation re-drawn every 10
epochs except in the last (ATTA; needs ``epochs``, which the trainer passes);
perturbation computed in eval mode. For another data set and radius, set the three
constants explicitly (``codiag.methods.settings`` does for Fashion-MNIST at eps 0.2).

Mapping of ``c`` (docs/CONVENTIONS.md, "Per-instance gradient norms"). The reference takes the
gradient of the *batch-mean* loss at batch 128, i.e. ``grad_ref = g_i / 128``
with ``g_i`` the per-sample (sum-reduced) gradient that codiag uses, so its
``sqrt(v)/c`` equals ``||g_i|| / (128 c)``. codiag therefore keeps ``v`` in
per-sample units (what the ``method_state`` probe shows) and divides by
``c_eff = c * ref_batch = 0.01 * 128 = 1.28``; ``c`` is given in the paper's
units (0.01 CIFAR, 0.1 ImageNet) and the step no longer depends on the batch size.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .base import StateValue, per_sample_norm, register
from .carried import CarriedPerturbation
from .checks import NON_NEGATIVE, POSITIVE, Integer, Real


@register
class ATAS(CarriedPerturbation):
    """ATAS: per-sample step (gamma/c)/(1 + sqrt(v)/(c*128)) clamped to [4, 14]/255; beta 0.5, c 0.01."""

    name = "atas"
    defaults = {"beta": 0.5, "c": 0.01, "ref_batch": 128, "gamma_c": 16 / 255,
                "min_step": 4 / 255, "max_step": 14 / 255, "warmup_epochs": 5, "warmup_step": 1.0}
    checks = {"beta": Real(0, 1, hi_open=True), "c": POSITIVE, "ref_batch": Integer(1), "gamma_c": POSITIVE,
              "min_step": NON_NEGATIVE, "max_step": POSITIVE, "warmup_epochs": Integer(0), "warmup_step": POSITIVE}

    def __init__(self, eps: float, **hparams: Any) -> None:
        super().__init__(eps, **hparams)
        self.v: Tensor | None = None

    @property
    def c_eff(self) -> float:
        """``c`` in per-sample (sum-reduced) gradient units."""
        return float(self.c) * float(self.ref_batch)

    def steps_from_v(self, v: Tensor) -> Tensor:
        """Eq. 4 as in the reference: ``(gamma/c) / (1 + sqrt(v)/c)``, clamped (pixel units)."""
        raw = float(self.gamma_c) / (1.0 + v.sqrt() / self.c_eff)
        return raw.clamp(float(self.min_step), float(self.max_step))

    def step_size(self, grad: Tensor, idx: Tensor | None, write: bool) -> Tensor | float:
        if self.epoch < int(self.warmup_epochs):
            return float(self.warmup_step) * self.eps
        sq = per_sample_norm(grad).pow(2)
        if idx is None:              # no history: the first update from v = 0
            v_new = (1 - self.beta) * sq
        else:
            if self.v is None:
                self.v = torch.zeros(int(self.num_samples), device=grad.device)
            i = idx.to(self.v.device)
            v_new = self.beta * self.v[i].to(sq.device) + (1 - self.beta) * sq
            if write:
                self.v[i] = v_new.to(self.v.device)
        return self.steps_from_v(v_new)

    def state(self) -> dict[str, StateValue]:
        out = super().state()
        if self.v is not None:
            steps = self.steps_from_v(self.v)
            out["v"] = self.v.detach().float().cpu().numpy()
            out["step_size"] = steps.detach().float().cpu().numpy()
            out["step_size_mean"] = float(np.mean(out["step_size"])) / self.eps
        out["warmup"] = float(self.epoch < int(self.warmup_epochs))
        return out
