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

from .base import Array, Key, Probe, ProbeContext, conv_modules, register


@register
class WeightUpdate(Probe):
    """How far the weights moved since the previous event, per tensor, per kernel and in total."""

    name = "weight_update"
    needs = frozenset({"params"})
    paper = "ZeroGrad Fig. 1"
    mse = Key("mean((theta_now - theta_prev)^2) of one parameter tensor", "mse/{param}")
    l2 = Key("||theta_now - theta_prev||_2 of one parameter tensor", "l2/{param}")
    mse_all = Key("the same mean over all parameter entries")
    l2_all = Key("the L2 norm of the whole update")
    kernel_mse = Array("per output kernel of a convolution: mean squared update", "weight_update.kernel_mse.{module}",
                       shape=("out_channels",))

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
                ctx.log(self.mse, sq / max(d.numel(), 1), param=name)
                ctx.log(self.l2, sq.sqrt(), param=name)
                sq_total = sq_total + sq
                count += d.numel()
            ctx.log(self.mse_all, sq_total / max(count, 1))
            ctx.log(self.l2_all, sq_total.sqrt())
            for mod_name, _conv in conv_modules(ctx.model):
                key = f"{mod_name}.weight" if mod_name else "weight"
                if key in now and key in prev and prev[key].shape == now[key].shape:
                    d = (now[key] - prev[key]).float()
                    ctx.save_array(self.kernel_mse, d.square().flatten(1).mean(1), module=mod_name or "conv")
        state["prev"] = now
