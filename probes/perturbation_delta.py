"""``perturbation_delta``: MSE between the method's perturbations at consecutive events (ZeroGrad Fig. 2).

    mse = mean((delta_method(theta_e) - delta_method(theta_{e-1}))^2)

over the fixed probe batch, with the same random start at every event (the
event generator), so the value moves only because the model moved. ZeroGrad
see this jump at catastrophic overfitting for FGSM-RS, and not when the tiny
gradient entries are zeroed. The first event only stores the perturbation.
"""
from __future__ import annotations

from .base import Key, Probe, ProbeContext, register


@register
class PerturbationDelta(Probe):
    """How much the method's perturbation of a fixed batch changed since the previous event."""

    name = "perturbation_delta"
    needs = frozenset({"method"})
    paper = "ZeroGrad Fig. 2"
    mse = Key("mean squared difference of the method's perturbations at consecutive events")

    def run(self, ctx: ProbeContext) -> None:
        state = ctx.probe_state(self.name)
        now = ctx.method_delta
        prev = state.get("prev")
        if prev is not None and prev.shape == now.shape:
            ctx.log(self.mse, (now - prev).square().mean())
        state["prev"] = now.clone()
