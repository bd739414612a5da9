"""LIET, label information enhanced training (Pan & Yao, "Mitigating Catastrophic Overfitting in Fast
Adversarial Training via Label Information Elimination", ICCV 2025). Written from the paper and the
logic of the FastAT Benchmark's code by the same authors (fzjcdt/FastAT_Benchmark ``fast_at/liet.py``;
no licence: nothing taken from it).

* Label information: every ``li_every`` steps (and at each epoch's first), in eval mode, the signed
  gradient at a constant grey image (0.5) for each class label, ``LI[c] = eps * sign(grad_x l(0.5, c))``:
  the direction that carries class information regardless of the image.
* Start: ``LI[y]``, with a random share of its elements (``U[min_mask, max_mask]`` per batch, element-wise
  Bernoulli) replaced by uniform noise of radius eps (``2 eps`` in the wide setting), added to or
  (probability 1/2, per batch) subtracted from ``x``, into [0, 1].
* One signed step of ``step * eps`` from there (train mode); projected onto the eps ball and [0, 1],
  or, in the wide setting, onto [0, 1] only. ``wide`` follows the code's rule ``eps > 8/255`` unless set.
* Loss: ``l(x + delta) + lam_e * JS(softmax f(x + start), softmax f(x + delta))`` (Jensen-Shannon, both
  outputs carry gradients), ``lam_e = lam * (epoch + 1) / epochs`` (``lam`` without ``epochs``).
* ``l`` is a cross entropy against *randomly* smoothed targets: ``1 - ls`` on the true class and ``ls``
  shared among the others in proportions drawn afresh at every use (from the method's generator).

Defaults (the benchmark's CIFAR-10 config): ``lam = 100``, ``ls = 0.6``, ``min_mask = 0.1``,
``max_mask = 0.5``, ``li_every = 20``, ``step = 1``.

Cost: FGSM's passes, the regulariser's element-wise work, and every ``li_every`` steps one forward and
backward pass of ``classes`` grey images (and once, a forward pass of one, for the number of classes).

Measured training-step time over FGSM's (``benchmarks/method_cost.py``, CPU, median of interleaved rounds):
``liet`` 1.76 on cnn4 (batch 128), 1.48 on PreAct ResNet-18 (batch 32).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tensors import clamp_to_image, eval_mode
from .base import Method, StateValue, register, uniform_like
from .checks import NON_NEGATIVE, POSITIVE, SHARE, Flag, Integer, Optional, Real


def random_smoothed_ce(logits: Tensor, y: Tensor, ls: float, gen: torch.Generator) -> Tensor:
    """Mean CE against targets ``1 - ls`` on ``y`` and ``ls`` split at random (fresh draws) over the other classes."""
    targets = F.one_hot(y, logits.shape[1]).to(logits.dtype)
    if ls > 0:
        r = torch.rand(logits.shape, generator=gen, device=logits.device, dtype=torch.float32).to(logits.dtype) * ls
        r = r.masked_fill(targets.bool(), 0.0)
        targets = targets * (1 - ls) + r / r.sum(1, keepdim=True) * ls
    return (-targets * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def js_divergence(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """Jensen-Shannon divergence of the two softmax outputs, averaged over the batch."""
    p, q = F.softmax(logits_a.float(), dim=1), F.softmax(logits_b.float(), dim=1)
    m = ((p + q) / 2).clamp(0, 1).log()
    return (F.kl_div(m, p, reduction="batchmean") + F.kl_div(m, q, reduction="batchmean")) / 2


@register
class LIET(Method):
    """LIET: start from the class's label-information direction with masked noise; random smoothing + JS term."""

    name = "liet"
    defaults: dict[str, Any] = {"lam": 100.0, "ls": 0.6, "min_mask": 0.1, "max_mask": 0.5, "li_every": 20,
                                "step": 1.0, "wide": None}
    checks = {"lam": NON_NEGATIVE, "ls": Real(0, 1, hi_open=True), "min_mask": SHARE, "max_mask": SHARE,
              "li_every": Integer(1), "step": POSITIVE, "wide": Optional(Flag())}

    def __init__(self, eps: float, **hparams: Any) -> None:
        super().__init__(eps, **hparams)
        self.li: Tensor | None = None            # (classes, C, H, W)
        self._steps_in_epoch = 0
        self._cache: tuple[Tensor, Tensor] | None = None     # (x, logits at the start, with graph)
        self._last_js: Tensor | None = None

    @property
    def is_wide(self) -> bool:
        return self.eps > 8 / 255 if self.wide is None else bool(self.wide)

    def current_lam(self) -> float:
        if not self.epochs:
            return float(self.lam)
        return float(self.lam) * (self.epoch + 1) / int(self.epochs)

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self._steps_in_epoch = 0

    def label_information(self, model: nn.Module, x: Tensor, gen: torch.Generator) -> Tensor:
        """``eps * sign`` of the loss gradient at a grey image, one row per class (eval mode)."""
        with eval_mode(model):
            with torch.no_grad():
                classes = model(torch.full((1, *x.shape[1:]), 0.5, device=x.device, dtype=x.dtype)).shape[1]
            grey = torch.full((classes, *x.shape[1:]), 0.5, device=x.device, dtype=x.dtype, requires_grad=True)
            labels = torch.arange(classes, device=x.device)
            (grad,) = torch.autograd.grad(random_smoothed_ce(model(grey), labels, float(self.ls), gen), grey)
        return self.eps * grad.sign()

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
                generator: torch.Generator | None = None) -> Tensor:
        with self._call(generator, x.device) as gen:
            pure = self._pure
            li = self.li
            if li is None or (not pure and self._steps_in_epoch % int(self.li_every) == 0):
                li = self.label_information(model, x, gen)
                if not pure:
                    self.li = li.detach()
            if not pure:
                self._steps_in_epoch += 1
            mask = torch.rand(x.shape, generator=gen, device=x.device, dtype=torch.float32)
            noise = uniform_like(x, (2 if self.is_wide else 1) * self.eps, gen)
            lo, hi = float(self.min_mask), float(self.max_mask)
            ratio = torch.rand(1, generator=gen, device=x.device) * (hi - lo) + lo
            flip = torch.rand(1, generator=gen, device=x.device) < 0.5
            start = torch.where(mask < ratio, noise, li.to(x.dtype)[y])
            start = clamp_to_image(x, torch.where(flip, -start, start))
            x0 = (x + start).detach().requires_grad_(True)
            logits0 = model(x0)
            (grad,) = torch.autograd.grad(random_smoothed_ce(logits0, y, float(self.ls), gen), x0,
                                          retain_graph=not pure)
        if not pure:
            self._cache = (x, logits0)
        delta = start + float(self.step) * self.eps * grad.sign()
        if not self.is_wide:
            delta = delta.clamp(-self.eps, self.eps)
        return clamp_to_image(x, delta).detach()

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, delta: Tensor) -> Tensor:
        cache, self._cache = self._cache, None
        logits = model(x + delta)
        loss = random_smoothed_ce(logits, y, float(self.ls), self.generator(x.device))
        if cache is None or cache[0] is not x:
            return loss
        js = js_divergence(cache[1], logits)
        self._last_js = js.detach()
        return loss + self.current_lam() * js

    def state(self) -> dict[str, StateValue]:
        out: dict[str, StateValue] = {"lam": self.current_lam()}
        if self._last_js is not None:
            out["js"] = float(self._last_js)
        return out
