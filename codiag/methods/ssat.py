"""SSAT, single-step adversarial training with checkpoints (Kim, Lee & Lee, "Understanding Catastrophic
Overfitting in Single-step Adversarial Training", AAAI 2021, Algorithm 1). Written from the paper and the
logic of its code as the FastAT Benchmark runs it (fzjcdt/FastAT_Benchmark ``fast_at/ssat.py``; no
licence: nothing taken from it).

CO comes with adversarial examples only at the end of the FGSM direction: the network is robust at
``x + delta`` but not at points on the way. SSAT trains on the *smallest* checkpoint along the step
that already fools the network:

* FGSM-RS from a uniform start: ``pert = Proj_eps(eta + alpha * sign(grad_x l(x + eta)))`` (into [0, 1]);
* a sample misclassified at its start ``x + eta`` trains on the clean image (``delta = 0``);
* otherwise, of the checkpoints ``x + (k / c) pert``, ``k = 1 .. c - 1``, evaluated in eval mode
  without gradients, the first that is misclassified; if none is, the full step ``pert``.

Defaults (the benchmark's CIFAR-10 config, the paper's setting): ``c = 3`` (``checkpoints``), step
``alpha = 10/255`` at 8/255 (``step = 1.25``), uniform start of radius eps. The checkpoints of every
sample are evaluated in one batch (the code evaluates those still unresolved, in chunks of 1,024);
the result is the same. ``state()`` gives the shares of the batch trained on the clean image, on a
checkpoint and on the full step.

Cost: FGSM-RS's passes plus ``c - 1`` forward passes of the batch without gradients.

Measured training-step time over FGSM's (``benchmarks/method_cost.py``, CPU, median of interleaved rounds):
``ssat`` 1.31 on cnn4 (batch 128), 1.38 on PreAct ResNet-18 (batch 32).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tensors import clamp_to_image, eval_mode
from .base import Method, StateValue, register
from .checks import NON_NEGATIVE, POSITIVE, Integer


@register
class SSAT(Method):
    """SSAT: FGSM-RS, trained at the first misclassified checkpoint (k/c of the step), clean if wrong at the start."""

    name = "ssat"
    defaults: dict[str, Any] = {"step": 1.25, "init": 1.0, "checkpoints": 3}
    checks = {"step": POSITIVE, "init": NON_NEGATIVE, "checkpoints": Integer(1)}
    start_radius = "init"

    def __init__(self, eps: float, **hparams: Any) -> None:
        super().__init__(eps, **hparams)
        self._last: dict[str, Tensor] = {}

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
                generator: torch.Generator | None = None) -> Tensor:
        eta = self.start(model, x, y, index, generator)
        pure = generator is not None
        x0 = (x + eta).detach().requires_grad_(True)
        logits0 = model(x0)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits0, y, reduction="sum"), x0)
        pert = clamp_to_image(x, (eta + float(self.step) * self.eps * grad.sign()).clamp(-self.eps, self.eps))
        shape = (-1, *([1] * (x.dim() - 1)))
        correct = logits0.detach().argmax(1) == y
        c = int(self.checkpoints)
        scale = torch.ones(len(y), device=x.device, dtype=x.dtype)
        if c > 1:
            ks = torch.arange(1, c, device=x.device, dtype=x.dtype)
            xs = (x.unsqueeze(0) + (ks / c).view(-1, *([1] * x.dim())) * pert.unsqueeze(0)).flatten(0, 1)
            with torch.no_grad(), eval_mode(model):
                wrong = (model(xs).argmax(1).view(c - 1, len(y)) != y.unsqueeze(0))
            first = wrong.to(torch.uint8).argmax(0)          # the first misclassified checkpoint
            scale = torch.where(wrong.any(0), (first + 1).to(x.dtype) / c, scale)
        scale = torch.where(correct, scale, torch.zeros_like(scale))
        if not pure:
            self._last = {"clean_share": (~correct).float().mean(),
                          "checkpoint_share": ((scale > 0) & (scale < 1)).float().mean(),
                          "full_share": (scale == 1).float().mean()}
        return (scale.view(shape) * pert).detach()

    def state(self) -> dict[str, StateValue]:
        return {k: float(v) for k, v in self._last.items()}
