"""ATTA, adversarial training with transferable adversarial examples (Zheng et al.,
"Efficient Adversarial Training with Transferable Adversarial Examples", CVPR 2020),
ATTA-1 as re-run by the ATAS paper (Huang et al., Sec. II Eq. 2 and Appendix B).

Each sample's perturbation from the previous epoch is the start of this epoch's
single signed step: ``x^j = Proj(x^{j-1} + alpha * sign(grad))``; the stored
perturbation follows the crop/flip augmentation and is re-drawn from
U[-eps, eps] every 10 epochs. Defaults (ATAS Appendix B: "ATTA-1 ... step size
alpha = 4/255" at eps 8/255): ``step = 0.5`` eps, ``reset_every = 10``,
perturbation computed in eval mode (as in that code). State: one int8 per input
dimension in the padded frame (``sample_store.py``).

This is the ATAS code's ATTA (``ATAS.py`` with a constant step; its step equals ATTA's own
``get_adv_atta``, haizhongzheng/ATTA ``adv_attack.py`` L8-23). ATTA's own training script
(``train_atta_cifar.py``) differs elsewhere: it starts the stored examples at
``x + 0.001 N(0, 1)`` (L184), re-draws them every 10 epochs including the last (L191), and
scales the training loss by ``1 / batch_size`` (L143), i.e. a 128 times smaller gradient step.
"""
from __future__ import annotations

from torch import Tensor

from .base import register
from .carried import CarriedPerturbation
from .checks import POSITIVE


@register
class ATTA(CarriedPerturbation):
    """ATTA-1: one step of ``step`` eps (0.5) from the sample's stored perturbation."""

    name = "atta"
    defaults = {"step": 0.5}
    checks = {"step": POSITIVE}

    def step_size(self, grad: Tensor, idx: Tensor | None, write: bool) -> float:
        return float(self.step) * self.eps
