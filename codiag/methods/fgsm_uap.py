"""FGSM-UAP and FGSM-CUAP, FGSM from a universal adversarial perturbation (Pan, Li & Yao, "Adversarial
Initialization with Universal Adversarial Perturbation: A New Approach to Fast Adversarial Training",
AAAI 2024). Written from the paper and the logic of the FastAT Benchmark's code by the same authors
(fzjcdt/FastAT_Benchmark ``fast_at/fgsm_uap.py``, ``fgsm_cuap.py``; no licence: nothing taken from it).

The attack starts from a perturbation shared by the whole data set (FGSM-UAP) or by each class
(FGSM-CUAP, ``u[y]``), learned along the way from the gradients the attack computes anyway:

    start   = Proj_eps(u)                                   (into [0, 1])
    g       = grad_x CE(f(x + start), y)
    delta   = Proj_eps( start + alpha * sign(g) )           (into [0, 1])
    loss    = CE(f(x + delta), y) + lam * mean_{i,k} ( f_k(x_i + delta_i) - f_k(x_i + start_i) )^2
    m       <- mean_i g_i / ||g||_1 + decay * m             (L1 norm over the batch; per class for CUAP,
    u       <- clip_{uap_eps}( u + uap_eps * sign(m) )       over the class's samples in the batch)

``u`` starts at random corners +-uap_eps and ``m`` at zero. ``uap_eps`` (10/255 at eps 8/255, i.e.
1.25 eps, ``uap_radius``) exceeds eps, so the start is the universal perturbation clipped to the
ball. Both outputs of the regulariser carry gradients (as FGSM-PGI's). The perturbation is
computed in train mode.

Since ``u`` is universal, probe batches start from it too (read only): the probes see the
method's own start. Before the first training step (no ``u`` yet) a probe starts at random
corners of radius ``uap_radius * eps`` from the probe's generator.

Defaults (the benchmark's CIFAR-10 configs): ``step = 1`` (alpha = eps), ``lam = 10``, ``decay =
0.3``, ``uap_radius = 1.25``. FGSM-FUAP (one perturbation per cluster of a learned feature head) is
``fgsm_fuap.py``.

Cost: FGSM-PGI's passes and the update of one (or ``classes``) image-sized tensor per step.

Measured training-step time over FGSM's (``benchmarks/method_cost.py``, CPU, median of interleaved rounds):
``fgsm_uap`` 1.48 on cnn4 (batch 128), 1.43 on PreAct ResNet-18 (batch 32); ``fgsm_cuap`` 1.52 on cnn4 (batch
128), 1.49 on PreAct ResNet-18 (batch 32).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tensors import clamp_to_image, eval_mode
from .base import Method, StateValue, register
from .checks import NON_NEGATIVE, POSITIVE


@register
class FGSMUAP(Method):
    """FGSM from a universal perturbation learned with momentum; CE + ``lam`` * output MSE."""

    name = "fgsm_uap"
    defaults: dict[str, Any] = {"step": 1.0, "lam": 10.0, "decay": 0.3, "uap_radius": 1.25}
    checks = {"step": POSITIVE, "lam": NON_NEGATIVE, "decay": NON_NEGATIVE, "uap_radius": POSITIVE}
    #: True: one perturbation per class (FGSM-CUAP)
    per_class = False

    def __init__(self, eps: float, **hparams: Any) -> None:
        super().__init__(eps, **hparams)
        self.uap: Tensor | None = None          # (1 or classes, C, H, W)
        self.uap_momentum: Tensor | None = None
        self._cache: tuple[Tensor, Tensor, Tensor, Tensor] | None = None   # (x, y, grad, logits at start)
        self._last_reg: Tensor | None = None

    @property
    def uap_eps(self) -> float:
        return float(self.uap_radius) * self.eps

    def _rows(self, y: Tensor) -> Tensor:
        return y if self.per_class else torch.zeros_like(y)

    def _ensure(self, x: Tensor, classes: int, gen: torch.Generator) -> None:
        if self.uap is None:
            shape = (classes if self.per_class else 1, *x.shape[1:])
            u = torch.rand(shape, generator=gen, device=x.device)
            self.uap = torch.where(u < 0.5, -self.uap_eps, self.uap_eps)
            self.uap_momentum = torch.zeros(shape, device=x.device)

    def _start(self, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        if self.uap is None:        # a probe before training: fresh corners
            u = torch.rand(x.shape, generator=gen, device=x.device)
            uap = torch.where(u < 0.5, -self.uap_eps, self.uap_eps)
        else:
            uap = self.uap.to(x.device)[self._rows(y)]
        return clamp_to_image(x, uap.to(x.dtype).clamp(-self.eps, self.eps))

    def start(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
              generator: torch.Generator | None = None) -> Tensor:
        with self._call(generator, x.device) as gen:
            return self._start(x, y, gen)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
                generator: torch.Generator | None = None) -> Tensor:
        with self._call(generator, x.device) as gen:
            pure = self._pure
            if not pure and self.uap is None:
                classes = 1
                if self.per_class:      # once, before the first step: the number of classes
                    with torch.no_grad(), eval_mode(model):
                        classes = model(x[:1]).shape[1]
                self._ensure(x, classes, gen)
            start = self._start(x, y, gen)
        return self._fgsm_from(model, x, y, start, y, pure)

    def _fgsm_from(self, model: nn.Module, x: Tensor, y: Tensor, start: Tensor, rows: Tensor, pure: bool
                   ) -> Tensor:
        """One step of ``step * eps`` along the sign of the CE's input gradient at ``x + start``, into the
        eps ball and the image; a training call keeps the gradient and the logits for :meth:`loss`, and
        the ``rows`` of ``u`` whose perturbation the gradient updates (labels for -UAP and -CUAP)."""
        x0 = (x + start).detach().requires_grad_(True)
        logits0 = model(x0)
        keep = not pure and float(self.lam) > 0
        (grad,) = torch.autograd.grad(F.cross_entropy(logits0, y, reduction="sum"), x0, retain_graph=keep)
        if not pure:
            self._cache = (x, rows, grad.detach(), logits0 if keep else logits0.detach())
        delta = (start + float(self.step) * self.eps * grad.sign()).clamp(-self.eps, self.eps)
        return clamp_to_image(x, delta).detach()

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, delta: Tensor) -> Tensor:
        cache, self._cache = self._cache, None
        logits = model(x + delta)
        loss = F.cross_entropy(logits, y)
        if cache is None or cache[0] is not x:
            return loss
        self._update(cache[1], cache[2])
        if float(self.lam) > 0:
            reg = F.mse_loss(logits.float(), cache[3].float())
            self._last_reg = reg.detach()
            loss = loss + float(self.lam) * reg
        return loss

    def _update(self, y: Tensor, grad: Tensor) -> None:
        """Momentum of the batch-L1-normalised gradients, averaged per row, and a signed step of ``u``."""
        g = grad.float() / grad.float().abs().sum()
        rows = self._rows(y)
        n = self.uap.shape[0]
        sums = torch.zeros_like(self.uap_momentum).index_add_(0, rows, g)
        counts = torch.bincount(rows, minlength=n).to(g.dtype)
        seen = (counts > 0).view(-1, *([1] * (g.dim() - 1)))
        mean = sums / counts.clamp_min(1).view_as(seen)
        momentum = torch.where(seen, mean + float(self.decay) * self.uap_momentum, self.uap_momentum)
        step = torch.where(seen, self.uap_eps * momentum.sign(), torch.zeros_like(momentum))
        self.uap_momentum = momentum
        self.uap = (self.uap + step).clamp(-self.uap_eps, self.uap_eps)

    def state(self) -> dict[str, StateValue]:
        out: dict[str, StateValue] = {}
        if self._last_reg is not None:
            out["output_mse"] = float(self._last_reg)
        if self.uap is not None:
            out["uap_linf"] = float(self.uap.abs().amax()) / self.eps
        return out


@register
class FGSMCUAP(FGSMUAP):
    """FGSM-CUAP: FGSM-UAP with one universal perturbation per class (``u[y]``)."""

    name = "fgsm_cuap"
    per_class = True
