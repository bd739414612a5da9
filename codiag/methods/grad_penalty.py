"""FGSM + L2 input-gradient penalty (GradAlign paper, Appendix D.5; Ross & Doshi-Velez 2018,
Simon-Gabriel et al. 2019).

Loss ``CE(x + delta_FGSM) + lambda * ||grad_x l(x, y)||_2^2``. The gradient at the
clean input is the FGSM gradient itself, built once with ``create_graph=True`` so
the penalty is differentiable in the parameters (double backprop) without an
extra pass.

``lam`` is given in the reference's units: the gradient of the *batch-mean* loss
at batch 128 (D.5: 1,000 at eps 8/255, 2,000 at 16/255; linear in between and
2,000 above, ours). codiag's per-sample gradients ``g_i`` are of the *sum*-reduced
loss, i.e. 128 times larger, so the penalty applied is
``lam / ref_batch**2 * mean_i ||g_i||^2`` (``ref_batch = 128``), which equals the
reference's ``lam * mean_i ||grad of mean loss||^2`` at batch 128 and does not
change with codiag's batch size.

Mean or sum over the batch: D.5 gives the penalty per input, ``lambda ||grad_x l(x, y)||^2``,
and its code is not in the GradAlign repository; its ``get_input_grad`` (``utils.py`` L70-91)
differentiates the batch-mean loss. We read the penalty as the batch *mean* of the per-sample
squared norms of that gradient (the per-input formula averaged like the cross entropy). Had
the authors summed over the batch instead, their lambda would act 128 times stronger, i.e.
equal ``lam / 128`` per sample here (``-m lam=...`` converts).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tensors import clamp_to_image, input_grad
from .base import Method, StateValue, register
from .checks import NON_NEGATIVE, POSITIVE, Integer, Optional


def penalty_lambda(eps: float, at8: float, at16: float) -> float:
    """Linear interpolation of D.5's lambda between 8/255 and 16/255 (constant outside)."""
    e = eps * 255
    if e <= 8:
        return at8
    if e >= 16:
        return at16
    return at8 + (at16 - at8) * (e - 8) / 8


@register
class GradPenalty(Method):
    """FGSM (step eps, from zero) + ``lam`` * ||grad_x l(x)||^2 (D.5; lam 1000 at 8/255, ref. units)."""

    name = "grad_penalty"
    defaults: dict[str, Any] = {"lam": None, "step": 1.0, "ref_batch": 128}
    checks = {"lam": Optional(NON_NEGATIVE), "step": POSITIVE, "ref_batch": Integer(1)}
    lam_at = (1000.0, 2000.0)

    def __init__(self, eps: float, **hparams: Any) -> None:
        super().__init__(eps, **hparams)
        if self.lam is None:
            self.lam = penalty_lambda(self.eps, *self.lam_at)
        self.lam = float(self.lam)
        self._cache: tuple[Tensor, Tensor] | None = None
        self._last_reg = float("nan")

    @property
    def lam_per_sample(self) -> float:
        return self.lam / float(self.ref_batch) ** 2

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
                generator: torch.Generator | None = None) -> Tensor:
        keep_graph = generator is None and torch.is_grad_enabled()
        x_in = x.detach().requires_grad_(True)
        grad = input_grad(model, x_in, y, create_graph=keep_graph, precision="autocast")
        if keep_graph:
            self._cache = (x, grad)          # differentiable; consumed by loss()
        delta = (self.step * self.eps * grad.detach().sign()).clamp(-self.eps, self.eps)
        return clamp_to_image(x, delta).detach()

    def _grad_at_x(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        cache, self._cache = self._cache, None
        if cache is not None and cache[0] is x:
            return cache[1]
        return input_grad(model, x.detach().requires_grad_(True), y, create_graph=True, precision="autocast")

    def regulariser(self, model: nn.Module, x: Tensor, y: Tensor, delta: Tensor) -> Tensor:
        g = self._grad_at_x(model, x, y)
        reg = g.float().flatten(1).pow(2).sum(1).mean()
        self._last_reg = reg.detach()
        return self.lam_per_sample * reg

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, delta: Tensor) -> Tensor:
        ce = F.cross_entropy(model(x + delta), y)
        return ce + self.regulariser(model, x, y, delta)

    def state(self) -> dict[str, StateValue]:
        return {"lam": self.lam, "grad_sq_norm": float(self._last_reg)}
