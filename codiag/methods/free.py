"""Free adversarial training, Free-m (Shafahi et al., "Adversarial Training for Free!",
NeurIPS 2019, Alg. 1), the "AT for Free (m = 8)" baseline of GradAlign Sec. 5.

Each minibatch is replayed ``m`` times. Every replay is one forward and one
backward at ``x + delta`` that yields both the parameter gradient (optimizer
step) and the input gradient (``delta <- clip(delta + eps * sign(g), -eps, eps)``,
then [0, 1]); ``delta`` is carried over to the next replay and the next
minibatch (one buffer of batch-size rows, as in Wong et al.'s ``train_free.py``: a short
last batch uses its first rows, the others carry over). Defaults: ``m = 8``, step ``eps``
(Shafahi et al.), ``delta`` starts at 0.

Probes: the carried perturbation belongs to the last training batch, not to the probe points,
so the perturbation the probes see for Free is a stand-in (``probe_perturbation``).

:meth:`train_step` performs the ``m`` optimizer steps itself, so to keep the
total number of optimizer steps of a single-step run, train for ``epochs / m``
epochs (GradAlign trains Free-8 for 96 epochs instead of 30, ATAS for 10). In ``codiag train`` a
probe event due at one of a batch's replays comes at the batch's end (``Monitor.events_held``):
the state between two replays is no place to measure, or for the guard to roll back to.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tensors import clamp_to_image
from .base import Method, StateValue, fgsm_step, register
from .checks import POSITIVE, Integer


@register
class Free(Method):
    """Free-m: m (8) replays per batch; one backward gives both the weight step and the delta step."""

    name = "free"
    probe_stand_in = ("Free's perturbation is carried over from the last training batch: the probes "
                      "apply that one to the probe points, it is not a perturbation of their own")
    defaults = {"m": 8, "step": 1.0}
    several_steps = True
    checks = {"m": Integer(1), "step": POSITIVE}

    def __init__(self, eps: float, **hparams: Any) -> None:
        super().__init__(eps, **hparams)
        self._delta: Tensor | None = None

    def _carried(self, x: Tensor) -> Tensor:
        """The first ``len(x)`` rows of the carried perturbation, clamped to this batch's image box.

        As in the reference (``delta[:X.size(0)]`` of one buffer of batch-size rows), a short
        batch uses the first rows and the rows past it keep their values for the next batch.
        """
        d = self._delta
        if d is None or d.shape[1:] != x.shape[1:] or d.device != x.device:
            return torch.zeros_like(x)
        if d.shape[0] < x.shape[0]:
            d = torch.cat([d, d.new_zeros((x.shape[0] - d.shape[0], *x.shape[1:]))])
        return clamp_to_image(x, d[: x.shape[0]].to(x.dtype))

    def _keep(self, delta: Tensor) -> None:
        """Write this batch's perturbation into the first rows of the carried buffer."""
        d = self._delta
        if d is None or d.shape[1:] != delta.shape[1:] or d.device != delta.device or d.shape[0] <= delta.shape[0]:
            self._delta = delta.detach().clone()
            return
        d = d.clone()
        d[: delta.shape[0]] = delta.detach()
        self._delta = d

    def start(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
              generator: torch.Generator | None = None) -> Tensor:
        return self._carried(x)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
                generator: torch.Generator | None = None) -> Tensor:
        """One signed step from the carried perturbation (what the next replay would train on)."""
        return fgsm_step(model, x, y, self._carried(x), self.step * self.eps, self.eps)

    def train_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
                   index: Any = None) -> Tensor:
        delta = self._carried(x)
        total = torch.zeros((), device=x.device)
        for _ in range(self.m):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(x + delta), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()          # one backward: param grads and delta.grad together
            optimizer.step()
            with torch.no_grad():
                delta = (delta + self.step * self.eps * delta.grad.sign()).clamp(-self.eps, self.eps)
                delta = clamp_to_image(x, delta)
            total += loss.detach()
        self._keep(delta)
        return total / self.m

    def state(self) -> dict[str, StateValue]:
        return {"m": float(self.m)}
