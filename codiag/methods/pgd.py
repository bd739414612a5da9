"""PGD-k adversarial training (Madry et al., 2018), the multi-step reference.

L-inf PGD with ``steps`` signed-gradient steps of ``alpha`` each, projected onto
the eps ball and [0, 1] after every step. Registered variants (defaults as used
in their papers' code):

* ``pgd``: PGD-10 with steps of ``eps / 4`` from a uniform random start clamped to the image:
  Rice et al. 2020 ("Overfitting in adversarially robust deep learning", 10 steps of 2/255 at
  8/255) and the FastAT Benchmark's PGD-AT (torchattacks ``PGD(eps, alpha=2/255, steps=10)``,
  random start); Madry et al.'s CIFAR-10 training and Wong et al.'s ``train_pgd.py`` take 7
  steps of the same 2/255 (``-m steps=7``);
* ``pgd10``: GradAlign's PGD-10 baseline: 10 steps of ``eps / 5`` from zero, no random start
  (their ``sh/exps_diff_eps_cifar10.sh`` passes ``--attack_init=zero --pgd_alpha_train=1.6`` at 8/255);
* ``pgd2``: GradAlign's PGD-2 baseline: 2 steps of ``eps / 2`` from zero.

``random_start`` switches the start for any of them.

Training perturbations run in the model's current mode and the caller's
autocast (like the papers' training code), not through ``codiag.attacks.pgd``,
which is the fp32 eval-mode attack for probes and evaluation.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import Method, fgsm_step, register
from .checks import POSITIVE, Flag, Integer


@register
class PGD(Method):
    """PGD-k: ``steps`` (10) steps of ``alpha`` (times eps; 1/4) from a random start (Rice et al. 2020)."""

    name = "pgd"
    lr_peak = 0.5
    defaults: dict[str, Any] = {"steps": 10, "alpha": 0.25, "random_start": True}
    checks = {"steps": Integer(1), "alpha": POSITIVE, "random_start": Flag()}

    def _start_radius(self) -> float:
        return 1.0 if self.random_start else 0.0

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
                generator: torch.Generator | None = None) -> Tensor:
        delta = self.start(model, x, y, index, generator)
        for _ in range(self.steps):
            delta = fgsm_step(model, x, y, delta, self.alpha * self.eps, self.eps)
        return delta


@register
class PGD10(PGD):
    """PGD-10 as GradAlign's baseline: 10 steps of eps/5 from zero (no random start)."""

    name = "pgd10"
    lr_peak = 0.4
    defaults = {"steps": 10, "alpha": 0.2, "random_start": False}


@register
class PGD2(PGD):
    """PGD-2: 2 steps of eps/2 from zero (no random start)."""

    name = "pgd2"
    lr_peak = 0.4
    defaults = {"steps": 2, "alpha": 0.5, "random_start": False}
