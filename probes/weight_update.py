"""``weight_update``: how far the weights moved since the previous probe event (ZeroGrad Fig. 1).

For each parameter tensor (keyed by its name in ``model.named_parameters()``)
with ``D = theta_now - theta_previous_event``:

* ``mse/<param>`` = mean(D^2) and ``l2/<param>`` = ||D||_2;
* ``mse_all`` = mean of D^2 over all parameter entries, ``l2_all`` = the L2 norm of all of D;
* for every convolution, one MSE per output kernel (mean of D^2 over the
  kernel's in-channels and taps), saved as the array
  ``weight_update.kernel_mse.<module>``: ZeroGrad Fig. 1 plots three such kernels.

ZeroGrad observe a huge weight update exactly at the epoch where the PGD
accuracy drops. The first event only stores the weights (no previous event).
The copy lives on the model's device (one copy of the parameters).
"""
from __future__ import annotations

import torch

from .base import Probe, ProbeContext, conv_modules, register


@register
class WeightUpdate(Probe):
    """Keys: mse_all, l2_all, mse/<param>, l2/<param>; arrays weight_update.kernel_mse.<module>."""

    name = "weight_update"
    needs = frozenset({"params"})
    paper = "ZeroGrad Fig. 1"

    def run(self, ctx: ProbeContext) -> None:
        state = ctx.probe_state(self.name)
        prev: dict[str, torch.Tensor] | None = state.get("prev")
        now = {name: p.detach().clone() for name, p in ctx.model.named_parameters()}
        if prev is not None:
            sq_total = torch.zeros((), device=ctx.device)
            count = 0
            for name, p in now.items():
                if name not in prev or prev[name].shape != p.shape:
                    continue  # a parameter appeared or changed shape: nothing to compare
                d = (p - prev[name]).float()
                sq = d.square().sum()
                ctx.log(self.name, f"mse/{name}", sq / max(d.numel(), 1))
                ctx.log(self.name, f"l2/{name}", sq.sqrt())
                sq_total = sq_total + sq
                count += d.numel()
            ctx.log(self.name, "mse_all", sq_total / max(count, 1))
            ctx.log(self.name, "l2_all", sq_total.sqrt())
            for mod_name, _conv in conv_modules(ctx.model):
                key = f"{mod_name}.weight" if mod_name else "weight"
                if key in now and key in prev and prev[key].shape == now[key].shape:
                    d = (now[key] - prev[key]).float()
                    ctx.save_array(f"{self.name}.kernel_mse.{mod_name or 'conv'}",
                                   d.square().flatten(1).mean(1))
        state["prev"] = now
