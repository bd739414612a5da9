"""ConvergeSmooth (Zhao, Zhang, Kong, Yin & Luo, "Fast Adversarial Training with Smooth Convergence",
ICCV 2023, Sec. 4, Eq. 7-9): the convergence-stride constraint on top of FGSM-RS (``fgsm_rs_cs``) and
FGSM-MEP (``fgsm_mep_cs``). Written from the paper and the logic of its code (the repository
Mengnan-Zhao-Happy/ConvergeSmooth carries no licence: nothing taken from it) and of the FastAT
Benchmark's transcription (``fast_at/fgsm_rs_cs.py``, ``fgsm_mep_cs.py``).

CO shows as a jump of the loss between epochs; the method keeps each step's *normal* loss ``l_n``
(the label-smoothed CE at the benign image for FGSM-MEP-CS, at the random start ``x + eta`` for
FGSM-RS-CS) within a stride of the previous epoch's mean ``L_prev``:

    thr  = min(max(gamma / ratio, L_prev - L_prev2), gamma)
    loss = loss_adv + w2 * s * l_n,   s = sign(l_n - L_prev) if |l_n - L_prev| > thr else 0

so a step whose normal loss rose too far is pushed down and one whose loss fell too far is pushed
back up. The constraint acts in epochs ``stride < e < epochs - stride`` (the code's phases of its
schedule; codiag has one phase of ``epochs``, passed by the trainer) and needs ``on_epoch_start``
to close each epoch's mean. ``L_prev`` starts at 0. The test is done on the device, without a host
sync (``s`` is a tensor).

Defaults (CIFAR-10; the code's arguments and the benchmark's configs): ``gamma = 0.03``,
``ratio = 1``, ``stride = 1``, ``w2 = 1``, label smoothing ``factor = 0.6``; FGSM-RS-CS: uniform
start of eps, one step of eps **without** projection onto the eps ball (only onto [0, 1]), attack
gradient of the plain CE; FGSM-MEP-CS: FGSM-MEP's step with its output regulariser off (``lam = 0``;
the code's ``--reg-single`` turns it on).

Ours: FGSM-RS-CS reuses the forward pass at the start for ``l_n`` (the code repeats it: same
weights and batch, the same logits; BatchNorm's running statistics see that batch once, not twice).

Measured training-step time over FGSM's (``benchmarks/method_cost.py``, CPU, median of interleaved rounds):
``fgsm_mep_cs`` 1.55 on cnn4 (batch 128), 1.61 on PreAct ResNet-18 (batch 32); ``fgsm_rs_cs`` 1.05 on cnn4
(batch 128), 1.03 on PreAct ResNet-18 (batch 32).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tensors import clamp_to_image
from .base import Method, StateValue, register, uniform_like
from .checks import NON_NEGATIVE, POSITIVE, Integer, Real
from .fgsm_mep import FGSMMEP, smoothed_ce


class ConvergeStride(Method):
    """The convergence-stride constraint (Eq. 9): epoch means of the normal loss and the per-step term."""

    defaults: dict[str, Any] = {"gamma": 0.03, "ratio": 1.0, "stride": 1, "w2": 1.0, "factor": 0.6}
    checks = {"gamma": POSITIVE, "ratio": Real(1), "stride": Integer(0), "w2": NON_NEGATIVE,
              "factor": Real(0.5, 1)}

    def __init__(self, eps: float, **hparams: Any) -> None:
        super().__init__(eps, **hparams)
        self.cs_prev = torch.tensor(0.0)      # mean normal loss of the last finished epoch
        self.cs_change = torch.tensor(0.0)    # its change from the epoch before
        self.cs_sum = torch.tensor(0.0)       # this epoch's sum of normal losses, and its count
        self.cs_count = 0
        self._cs_last: dict[str, Tensor] = {}

    def _close_epoch(self, epoch: int) -> None:
        if epoch != self.epoch and self.cs_count:
            mean = self.cs_sum / self.cs_count
            self.cs_change = mean - self.cs_prev.to(mean.device)
            self.cs_prev = mean
            self.cs_sum, self.cs_count = torch.zeros_like(mean), 0

    def cs_active(self) -> bool:
        """Whether the constraint acts in the current epoch (``stride < epoch < epochs - stride``)."""
        s = int(self.stride)
        return self.epoch > s and (not self.epochs or self.epoch < int(self.epochs) - s)

    def constrained(self, loss: Tensor, normal: Tensor, batch: int) -> Tensor:
        """``loss + w2 * s * normal`` (Eq. 9); records ``normal`` for the epoch's mean."""
        self.cs_sum = self.cs_sum.to(normal.device) + normal.detach() * batch
        self.cs_count += batch
        if not self.cs_active():
            return loss
        prev = self.cs_prev.to(normal.device)
        gamma = float(self.gamma)
        thr = torch.clamp(torch.clamp(self.cs_change.to(normal.device), min=gamma / float(self.ratio)), max=gamma)
        diff = normal.detach() - prev
        s = torch.sign(diff) * (diff.abs() > thr).to(diff.dtype)
        self._cs_last = {"cs_sign": s, "cs_diff": diff}
        return loss + float(self.w2) * s * normal

    def cs_state(self) -> dict[str, StateValue]:
        out: dict[str, StateValue] = {k: float(v) for k, v in self._cs_last.items()}
        out["cs_prev_loss"] = float(self.cs_prev)
        return out


@register
class FGSMRSCS(ConvergeStride):
    """FGSM-RS-CS: uniform start, one unprojected step of eps; label-smoothed CE + the convergence stride."""

    name = "fgsm_rs_cs"
    defaults: dict[str, Any] = {"step": 1.0, "init": 1.0}
    checks = {"step": POSITIVE, "init": NON_NEGATIVE}
    start_radius = "init"

    def __init__(self, eps: float, **hparams: Any) -> None:
        super().__init__(eps, **hparams)
        self._cache: tuple[Tensor, Tensor] | None = None     # (x, logits at the start, with graph)

    def on_epoch_start(self, epoch: int) -> None:
        self._close_epoch(epoch)
        super().on_epoch_start(epoch)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
                generator: torch.Generator | None = None) -> Tensor:
        with self._call(generator, x.device) as gen:
            pure = self._pure
            eta = clamp_to_image(x, uniform_like(x, float(self.init) * self.eps, gen))
        x0 = (x + eta).detach().requires_grad_(True)
        logits0 = model(x0)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits0, y, reduction="sum"), x0, retain_graph=not pure)
        if not pure:
            self._cache = (x, logits0)
        return clamp_to_image(x, eta + float(self.step) * self.eps * grad.sign()).detach()

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, delta: Tensor) -> Tensor:
        cache, self._cache = self._cache, None
        loss = smoothed_ce(model(x + delta), y, float(self.factor))
        if cache is None or cache[0] is not x:      # no start known: no normal loss, no constraint
            return loss
        return self.constrained(loss, smoothed_ce(cache[1], y, float(self.factor)), len(y))

    def state(self) -> dict[str, StateValue]:
        return self.cs_state()


@register
class FGSMMEPCS(FGSMMEP, ConvergeStride):
    """FGSM-MEP-CS: FGSM-MEP's momentum prior (output regulariser off) + the convergence stride on the clean loss."""

    name = "fgsm_mep_cs"
    defaults: dict[str, Any] = {"lam": 0.0}

    def _set_epoch(self, epoch: int) -> None:
        self._close_epoch(epoch)
        super()._set_epoch(epoch)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, delta: Tensor) -> Tensor:
        loss = super().loss(model, x, y, delta)
        return self.constrained(loss, smoothed_ce(model(x), y, float(self.factor)), len(y))

    def state(self) -> dict[str, StateValue]:
        return {**super().state(), **self.cs_state()}
