"""``method_state``: the training method's own internal quantities (APART Fig. 3, ATAS Fig. 10).

Whatever ``method.state()`` returns (DESIGN "Methods"): scalars become rows
under their own keys (APART's learnable step sizes, ZeroGrad's q), arrays are
saved as ``method_state.<name>`` (ATAS's per-instance step sizes and gradient
norm averages). Nothing is written when the monitor has no method. The
method's state is read, never written.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch

from .base import Probe, ProbeContext, register


@register
class MethodState(Probe):
    """Keys: the method's scalar state; arrays method_state.<name>."""

    name = "method_state"
    needs = frozenset({"method"})
    paper = "APART Fig. 3, ATAS Fig. 10"

    def run(self, ctx: ProbeContext) -> None:
        state_fn = getattr(ctx.method, "state", None)
        if not callable(state_fn):
            return
        for key, value in (state_fn() or {}).items():
            if isinstance(value, torch.Tensor):
                if value.numel() == 1 and value.dim() == 0:
                    ctx.log(self.name, str(key), value)
                else:
                    ctx.save_array(f"{self.name}.{key}", value.detach().clone())
            elif isinstance(value, np.ndarray) and value.ndim > 0:
                ctx.save_array(f"{self.name}.{key}", value.copy())
            elif isinstance(value, (numbers.Number, np.generic)) and not isinstance(value, bool):
                ctx.log(self.name, str(key), float(value))
            elif isinstance(value, bool):
                ctx.log(self.name, str(key), float(value))
