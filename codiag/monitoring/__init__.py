"""``codiag.monitor``: wrap your own adversarial-training loop and record every CO diagnostic.

Usage::

    with codiag.monitor(model, optimizer, "runs/fgsm", eps=8/255,
                        probe_data=test_loader, train_data=train_loader,
                        attack=my_attack, every="epoch") as mon:
        for epoch in range(epochs):
            for x, y in train_loader:
                ...the user's own step, unchanged...
            mon.epoch_end()                     # the only line inside the loop

The parts, one job each:

* :mod:`.options`: every keyword option, typed and documented once
  (:class:`MonitorOptions`): ``output_fn``, ``loss_fn``, ``normalization``,
  ``probe_select``, ``detector``, ...
* :mod:`.probe_sets`: the fixed probe sets, read once by index (never by
  iterating the user's loader), with the dataset's transform, then frozen;
  ``"first"`` or ``"balanced"`` selection.
* :mod:`.isolation`: RNG forks, eval mode, buffer and mode restoration around
  every call into user code, the ``attack(model, x, y)`` protocol, and the
  :class:`~.isolation.ProbeModel` view probes see (pixels in [0, 1] -> logits,
  through the uncompiled module of a ``torch.compile``d model).
* :mod:`.events`: the cadence (per epoch or every N steps, a full event at
  step 0 and at exit, light events in the first epoch) and running the probes
  of one event with failures counted, or raised at step 0.
* :mod:`.recording`: rows, arrays, non-finite losses and probe failures into
  the run directory (and TensorBoard).
* :mod:`.alarm`: the pluggable CO detector fed after every event; the first
  alarm writes ``co_alarm``, sets ``mon.co_detected`` / ``mon.co_alarm`` and
  calls ``on_co``.
* :mod:`.core`: :class:`Monitor`, the lifecycle and the optimizer hooks.

Side-effect freedom (docs/CONVENTIONS.md, a hard rule): a monitored and an unmonitored run
with the same seed end with bit-identical parameters, buffers and global RNG
state; ``tests/test_monitor_side_effects.py`` checks it with BatchNorm, dropout,
every probe at every step, and an attack that switches modes itself.
"""
from __future__ import annotations

from ..tensors import eval_mode, isolated_rng
from .core import Monitor, monitor
from .events import Cadence, parse_every
from .isolation import ModuleState, ProbeModel, wrap_attack
from .options import CORE_PROBES, MonitorOptions
from .probe_sets import balanced_indices, extract_probe_set

__all__ = ["CORE_PROBES", "Cadence", "ModuleState", "Monitor", "MonitorOptions", "ProbeModel",
           "balanced_indices", "eval_mode", "extract_probe_set", "isolated_rng", "monitor", "parse_every",
           "wrap_attack"]
