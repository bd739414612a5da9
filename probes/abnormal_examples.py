"""``abnormal_examples``: the share of *abnormal* adversarial examples (Lin et al., AAER,
NeurIPS 2023, Sec. 3.1 and Fig. 1-2): examples whose loss after the training attack's
step is *lower* than at its starting point, ``l(x + delta) < l(x + delta_0)``.

On the probe set: ``delta`` is the method's perturbation of the event (``method_delta``,
shared with the other probes) and ``delta_0`` the method's own starting point drawn from
the same event generator (``method.start``; FGSM-RS: the uniform start; FGSM: zero, i.e.
the clean input). Keys ``share`` and ``count``.

Per training step, at no extra forward pass: a method that exposes its steps' losses (a
``tally``, ``codiag.methods.step_tally``: AAER, FGSM-PGI) counts abnormal examples on the
device at every step; at each event this probe reports ``train_share``, the share among
the training samples seen since the previous event, and ``train_steps``. Nothing crosses to
the host between events. AAER finds that the share rises sharply at catastrophic
overfitting.
"""
from __future__ import annotations

import torch

from codiag.tensors import clamp_to_image

from .base import Key, Probe, ProbeContext, register


@register
class AbnormalExamples(Probe):
    """Keys: share, count (probe set); train_share, train_steps (from the method's tally)."""

    name = "abnormal_examples"
    needs = frozenset({"method"})
    paper = "AAER Sec. 3.1, Fig. 1"
    share = Key("share of abnormal examples on the probe set: l(x + delta_method) < l(x + method start)")
    count = Key("number of abnormal examples on the probe set")
    train_share = Key("share of abnormal examples among the training samples since the previous event "
                      "(methods with a tally: AAER, FGSM-PGI)")
    train_steps = Key("training steps counted since the previous event (methods with a tally)")

    def run(self, ctx: ProbeContext) -> None:
        x, y = ctx.x, ctx.y
        start_fn = getattr(ctx.method, "start", None)
        if callable(start_fn) and ctx.method is not None:
            start = clamp_to_image(x, start_fn(ctx.model, x, y, None, generator=ctx.generator("start")).float())
            before = ctx.losses(x + start, y)[0]
        else:
            before = ctx.clean[0]
        abnormal = ctx.at_method[0] < before
        ctx.log(self.share, abnormal.float().mean())
        ctx.log(self.count, abnormal.sum())
        self._from_tally(ctx)

    def _from_tally(self, ctx: ProbeContext) -> None:
        tally = getattr(ctx.method, "tally", None)
        totals = tally.totals() if tally is not None else None
        if totals is None:
            return
        steps, seen, abnormal = totals
        mine = ctx.probe_state(self.name)
        prev_steps, prev_seen, prev_ab = mine.get("last", (0, torch.zeros_like(seen), torch.zeros_like(abnormal)))
        n = seen - prev_seen
        share = torch.where(n > 0, (abnormal - prev_ab).float() / n.clamp_min(1).float(),
                            torch.full((), float("nan"), device=seen.device))
        ctx.log(self.train_share, share)
        ctx.log(self.train_steps, float(steps - prev_steps))
        mine["last"] = (steps, seen.clone(), abnormal.clone())
