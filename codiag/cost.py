"""Machine-independent training cost: forward and backward passes through the model, counted.

Methods are compared by what a training step computes, not by wall time (which depends on the
machine and on what else runs there): FGSM costs two gradient evaluations per step (the attack
and the update), PGD-k training k + 1, GradAlign's double back-propagation more (GradAlign
Sec. 5 and Table 5 compare methods this way). :class:`PassCounter` counts them on the model
itself, for whatever a method's ``train_step`` does.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn


class PassCounter:
    """Counts forward passes of ``model`` in train mode and the backward passes through their outputs.

    A backward pass is a gradient reaching the model's output (a tensor hook that returns None, so
    no gradient changes); a double back-propagation reaches it again and counts again. Forward
    passes in eval mode (probes, evaluation) are not counted. ``steps`` is advanced by the caller
    once per training step; ``close()`` removes the hook.
    """

    def __init__(self, model: nn.Module) -> None:
        self.forward = 0
        self.backward = 0
        self.steps = 0
        self._handle = model.register_forward_hook(self._on_forward)

    def _on_forward(self, module: nn.Module, args: Any, out: Any) -> None:
        if not module.training:
            return
        self.forward += 1
        if isinstance(out, Tensor) and out.requires_grad:
            out.register_hook(self._on_backward)

    def _on_backward(self, grad: Tensor) -> None:
        self.backward += 1

    def per_step(self) -> dict[str, float]:
        """Mean forward and backward passes (gradient evaluations) per counted training step."""
        n = max(self.steps, 1)
        return {"grad_evals_per_step": self.backward / n, "forwards_per_step": self.forward / n}

    def close(self) -> None:
        self._handle.remove()
