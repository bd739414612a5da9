"""Probe events: when they run (the cadence) and how (each probe isolated, failures counted).

Cadence: ``every=N`` runs a full event after every N optimizer steps (from the
optimizer's step hook); ``every="epoch"`` (or ``"3epochs"``) runs one at
``mon.epoch_end()``. There is always a full event at step 0, before any update, and
one at exit if steps were taken since the last. With ``early_events`` (default),
*light* events run the alarm's probes on a slice of the probe set at steps 8, 16,
32, ... until the first full event after step 0: a collapse inside the first epoch
(a CNN on Fashion-MNIST at eps 0.3 collapses within 60 steps) is then seen at
once instead of an epoch late, for the cost of a few small evaluations.

Each event builds one :class:`~codiag.probes.base.ProbeContext` on the
:class:`~codiag.monitoring.isolation.ProbeModel` view and runs the probes with the
global RNGs forked, autocast off, gradients on (also from inside the user's
``torch.no_grad()`` or ``torch.inference_mode()``), the model in eval mode
re-asserted before each probe, and every module's mode restored afterwards. A
failing probe is counted and the run goes on; at the first event of a run, a
failing core probe (``robust_acc``, ``grad_align``), or any failure of the user's
code (a non-tensor model output, the user's attack), raises a one-line
:class:`~codiag.errors.UsageError` that names the option which fixes it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from ..tensors import eval_mode, isolated_rng
from .options import CORE_PROBES

LIGHT_START = 8   # first light event (steps); then 16, 32, ...


def parse_every(every: Any) -> tuple[str, int]:
    """``"epoch"`` / ``"3epochs"`` -> ("epoch", k); ``N`` / ``"N"`` / ``"Nsteps"`` -> ("step", N)."""
    if isinstance(every, bool):
        raise UsageError(f"every must be 'epoch' or a number of steps, got {every!r}")
    if isinstance(every, int):
        if every < 1:
            raise UsageError(f"every must be a positive number of steps, got {every}")
        return "step", every
    text = str(every).strip().lower()
    m = re.fullmatch(r"(\d*)\s*(epochs?|steps?)?", text)
    if not m or (not m.group(1) and not m.group(2)) or (not m.group(1) and m.group(2).startswith("step")):
        raise UsageError(f"every must be 'epoch', 'Nepochs' or a number of steps, got {every!r}")
    k = int(m.group(1)) if m.group(1) else 1
    if k < 1:
        raise UsageError(f"every must be positive, got {every!r}")
    return ("epoch" if m.group(2) and m.group(2).startswith("epoch") else "step"), k


@dataclass
class Cadence:
    """When events run: ``kind`` "step" or "epoch", every ``n``; light events while ``early``."""

    kind: str
    n: int
    early: bool = True
    full_events_after_start: int = 0
    #: batches per epoch of the training DataLoader, when known: no light event at an epoch's
    #: last step, where the epoch's own event follows at the same step
    steps_per_epoch: int | None = None

    def after_step(self, step: int) -> str | None:
        """"full", "light" or None: the event due after optimizer step ``step``."""
        if self.kind == "step" and step % self.n == 0:
            return "full"
        if self.early and self.full_events_after_start == 0 and step >= LIGHT_START \
                and step & (step - 1) == 0 and not (self.steps_per_epoch and step % self.steps_per_epoch == 0):
            return "light"   # a power of two
        return None

    def after_epoch(self, epoch: int) -> bool:
        return self.kind == "epoch" and epoch % self.n == 0

    def describe(self) -> dict[str, Any]:
        return {"every": f"{self.n} {self.kind}s",
                "light_events": f"steps {LIGHT_START}, {2 * LIGHT_START}, ... until the first full event"
                if self.early else None}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def step0_error(probe: str, exc: BaseException) -> UsageError:
    """The one-line error of a core probe that cannot run at the first event, with the options to check."""
    if isinstance(exc, UsageError):
        return exc
    return UsageError(f"codiag.monitor: core probe {probe} failed at the first probe event ({_first_line(exc)}); "
                      "nothing about CO could be recorded. Check output_fn= (model output -> logits), "
                      "loss_fn= ((logits, y) -> per-sample loss) and normalization=(mean, std)")


def run_probes(ctx: Any, probes: list, model: nn.Module, others: list[nn.Module | None],
               device: torch.device, first: bool, strict: bool, on_error: Any) -> None:
    """Run ``probes`` on ``ctx`` in isolation; count failures through ``on_error(probe, exc)``."""
    with isolated_rng(device), eval_mode(model, *others), torch.inference_mode(False), \
            torch.autocast(device.type, enabled=False), torch.enable_grad():
        for probe in probes:
            model.eval()   # re-asserted: user code called by an earlier probe may have flipped it
            try:
                probe.run(ctx)
            except Exception as exc:  # a broken probe must not kill a long training run
                if first and (probe.name in CORE_PROBES or isinstance(exc, UsageError)):
                    raise step0_error(probe.name, exc) from exc
                if strict:
                    raise
                on_error(probe.name, exc)
