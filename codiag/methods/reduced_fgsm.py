"""FGSM with a reduced step size (GradAlign, Andriushchenko & Flammarion 2020, Table 1).

GradAlign Sec. 3 observes that FGSM-RS with step 1.25 eps has an expected
perturbation L2 norm close to plain FGSM with step ``alpha ~ 7/255`` at
``eps = 8/255`` and that FGSM with that reduced step (no randomness) is as robust
(Table 1). Default ``step = 7/8`` (times eps, i.e. 7/255 at eps 8/255), from zero.
"""
from __future__ import annotations

from .base import register
from .fgsm import FGSM


@register
class ReducedStepFGSM(FGSM):
    """FGSM from zero with step ``step * eps``, default 7/8 (GradAlign Table 1: 7/255 at 8/255)."""

    name = "fgsm_reduced"
    defaults = {"step": 7 / 8}
