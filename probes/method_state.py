"""``method_state``: the training method's own internal quantities (APART Fig. 3, ATAS Fig. 10).

Whatever ``method.state()`` returns (docs/EXTENDING.md, "Adding a method"): scalars become rows
under their own keys (APART's learnable step sizes, ZeroGrad's q), arrays are
saved as ``method_state.<name>`` (ATAS's per-instance step sizes and gradient
norm averages). Nothing is written when the monitor has no method. The
method's state is read, never written.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch

from .base import Array, Key, Probe, ProbeContext, register


@register
class MethodState(Probe):
    """The method's own state: scalars as rows, arrays as arrays."""

    name = "method_state"
    needs = frozenset({"method"})
    paper = "APART Fig. 3, ATAS Fig. 10"
    scalar = Key("a scalar of method.state() under its own name (APART's step sizes, ZeroGrad's q)", "{state}")
    array = Array("an array of method.state() (ATAS's per-instance step sizes)", "method_state.{state}",
                  shape=("num_samples",))

    def run(self, ctx: ProbeContext) -> None:
        state_fn = getattr(ctx.method, "state", None)
        if not callable(state_fn):
            return
        for key, value in (state_fn() or {}).items():
            if isinstance(value, torch.Tensor) and value.dim() == 0:
                ctx.log(self.scalar, value, state=str(key))
            elif isinstance(value, torch.Tensor):
                ctx.save_array(self.array, value.detach().clone(), state=str(key))
            elif isinstance(value, np.ndarray) and value.ndim > 0:
                ctx.save_array(self.array, value.copy(), state=str(key))
            elif isinstance(value, (numbers.Number, np.generic)):
                ctx.log(self.scalar, float(value), state=str(key))
