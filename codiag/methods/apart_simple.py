"""APART-Simple (APART paper, Sec. 3.2, Eq. 3): FGSM whose perturbation initialisation
``omega_x`` (per sample) and step sizes ``alpha_w``, ``alpha_1`` are parameters
updated by gradient ascent while the model is trained by descent -- APART
without layer-wise perturbations. Works with any model (no ``model.blocks``
needed). Defaults and ``variant`` as APART (``apart.py``): ``mu_a = 5e-8`` following
the lr schedule, ``lambda = 200``, ``mu_w = alpha_1 / alpha_w``, ``alpha_w = alpha_1 =
1e-4`` initially, ``omega = 0.001 N(0, 1)`` (the official code's values).
"""
from __future__ import annotations

from typing import Any

from .apart import APART
from .base import register


@register
class APARTSimple(APART):
    """APART-Simple: learned per-sample initialisation and input step size only."""

    name = "apart_simple"
    defaults: dict[str, Any] = {"layerwise": False}
