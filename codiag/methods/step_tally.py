"""Per-training-step loss bookkeeping that a method can expose, on the device, with no host sync.

A method that already computes, at every training step, the per-sample loss at its
starting point and at its training point (AAER, FGSM-PGI) adds them to a
:class:`StepTally`. The ``abnormal_examples`` probe reads the running totals at each probe
event and reports the share of *abnormal* training examples (loss after the attack step
lower than before it; AAER Sec. 3.1) among the samples seen since the previous event, so
the per-step signal costs no extra forward pass and no ``.item()`` per step.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..checkpoint import checkpointable


@checkpointable
class StepTally:
    """Running totals over training steps: samples seen, abnormal samples, sum of loss drops.

    ``add(loss_start, loss_train)`` takes the step's per-sample losses (detached); the totals
    are 0-d tensors on the losses' device, read by the probe at events (``totals()``).
    """

    def __init__(self) -> None:
        self.steps = 0
        self.seen: Tensor | None = None
        self.abnormal: Tensor | None = None

    def add(self, loss_start: Tensor, loss_train: Tensor) -> None:
        ab = (loss_train.detach() < loss_start.detach()).sum()
        n = torch.full((), loss_train.shape[0], dtype=ab.dtype, device=ab.device)
        if self.seen is None or self.abnormal is None:
            self.seen, self.abnormal = n, ab
        else:
            self.seen, self.abnormal = self.seen + n, self.abnormal + ab
        self.steps += 1

    def totals(self) -> tuple[int, Tensor, Tensor] | None:
        """``(steps, samples seen, abnormal samples)`` since the start of training, or None."""
        if self.seen is None or self.abnormal is None:
            return None
        return self.steps, self.seen, self.abnormal
