"""``codiag.monitor``: wrap your own adversarial-training loop and record every CO diagnostic.

Usage (docs/API.md)::

    with codiag.monitor(model, optimizer, "runs/fgsm", eps=8/255,
                        probe_data=test_loader, train_data=train_loader,
                        attack=method.perturb, every="epoch") as mon:
        for epoch in range(epochs):
            for x, y in train_loader:
                ...the user's own step, unchanged...
            mon.epoch_end()                     # the only line inside the loop

What it does:

* **Steps** are counted by an optimizer step post-hook (a Python integer: no
  device work, no host synchronisation). ``every=N`` runs a probe event after
  every N optimizer steps (from inside the hook); ``every="epoch"`` (or
  ``"3epochs"``) runs one at ``mon.epoch_end()``. There is always an event at
  step 0, before any update, and one at exit if steps were taken since the last.
* **Probe sets** are copied out once at the start: the first ``probe_n`` (256)
  points of ``probe_data`` and the first ``train_probe_n`` (512) of
  ``train_data``, read from ``loader.dataset`` by index, never by iterating the
  user's loader (a shuffling DataLoader draws from the global RNG when
  iterated), with the global RNG states saved and restored around the reads.
  Their indices are recorded in run.json.
* **Probe events** run the selected probes (``probes/``, docs/PROBES.md) on
  the fixed sets, in eval mode (every module's own flag restored afterwards),
  with autocast off, under ``torch.enable_grad()``, with the global RNGs
  (torch CPU and the model's CUDA device, Python, NumPy) forked and restored.
  The user's ``attack`` is called with the event generator when it accepts
  ``generator=`` (codiag methods: a pure call that writes no per-sample
  state), otherwise with the global RNG seeded per event inside that fork.
  Values stay on the device until the end of the event, then move to the host
  in one transfer, are appended to metrics.csv and flushed (a killed run keeps
  every row of every finished event), and go to TensorBoard when installed.
* **Non-finite losses** (probe losses, ``mon.log`` values whose key names a
  loss, and per-step losses passed to ``mon.track_loss``) are written to
  events.jsonl as ``nonfinite_loss`` once per (probe, key).
* **CO alarm**: after each event the :class:`~codiag.detector.CODetector`
  reads the event's values; the first alarm writes a ``co_alarm`` event, sets
  ``mon.co_detected`` / ``mon.co_alarm`` and calls ``on_co(alarm)``.

Side-effect freedom (docs/CONVENTIONS.md, a hard rule): a monitored and an unmonitored
run with the same seed end with bit-identical parameters, buffers and global
RNG state; ``tests/test_monitor_side_effects.py`` checks it with BatchNorm,
dropout and every probe at every step.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import re
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from codiag.probes import resolve_probes
from codiag.probes.base import ProbeContext, ProbeSet

from .detector import SIGNALS, Detector, event_values, make_detector
from .errors import UsageError
from .runs import RunWriter, host_values, load_run
from .tensors import eval_mode, isolated_rng

DEFAULT_PROBE_N = 256
DEFAULT_TRAIN_PROBE_N = 512


# ---------------------------------------------------------------------------------------------
# helpers: RNG isolation, modes, devices
# ---------------------------------------------------------------------------------------------
def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def _n_positional(fn: Callable) -> int:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return 4
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 99
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def normalise_attack(attack: Callable | None, device: torch.device) -> Callable | None:
    """Wrap the user's ``attack`` as ``f(model, x, y, index, generator) -> delta`` without side effects.

    * accepts ``generator=``: passed through (codiag methods treat it as a
      pure probe call: no per-sample state written, the method's own
      generator untouched);
    * otherwise: called with the global RNG seeded from the event generator
      inside :func:`isolated_rng`, so it draws the same numbers at every event
      and leaves the user's RNG state exactly as it was;
    * ``index`` is passed only if the callable takes a 4th positional argument.
    """
    if attack is None:
        return None
    with_gen = _accepts(attack, "generator")
    with_index = _n_positional(attack) >= 4

    def call(model: nn.Module, x: Tensor, y: Tensor, index: Any, generator: torch.Generator) -> Tensor:
        args = (model, x, y, index) if with_index else (model, x, y)
        if with_gen:
            return attack(*args, generator=generator)
        with isolated_rng(device, seed=int(generator.initial_seed()) % (2**63 - 1)):
            return attack(*args)

    return call


# ---------------------------------------------------------------------------------------------
# probe sets
# ---------------------------------------------------------------------------------------------
def _as_tensor(v: Any) -> Tensor:
    if isinstance(v, Tensor):
        return v
    if isinstance(v, np.ndarray):
        return torch.from_numpy(v)
    return torch.as_tensor(v)


def extract_probe_set(data: Any, n: int, device: torch.device, source: str):
    """The first ``n`` points of ``data`` as a fixed :class:`probes.base.ProbeSet` on ``device``.

    ``data`` may be a DataLoader-like object with ``.dataset`` (read by index,
    the loader is never iterated), a map-style dataset, or a tuple
    ``(x, y[, index])`` of tensors. Items may be ``(x, y)`` or ``(x, y, index)``;
    the recorded index is the dataset position. Reads happen inside
    :func:`isolated_rng` so that a dataset transform cannot consume the
    user's global RNG (a random augmentation would then be applied once, with
    a fixed seed, and frozen into the copy).
    """

    if data is None:
        return None
    with isolated_rng(device, seed=0), torch.no_grad():
        if isinstance(data, (tuple, list)) and len(data) in (2, 3) and all(
                isinstance(t, (Tensor, np.ndarray)) for t in data):
            x, y = _as_tensor(data[0])[:n], _as_tensor(data[1])[:n]
            index = _as_tensor(data[2])[:n] if len(data) == 3 else torch.arange(len(x))
            kind = "tensors"
        else:
            dataset = getattr(data, "dataset", data)
            if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
                raise UsageError(f"{source}: give a DataLoader, a map-style dataset or (x, y) tensors, "
                                 f"not {type(data).__name__} (its points are read by index)")
            count = min(int(n), len(dataset))
            xs, ys = [], []
            for i in range(count):
                item = dataset[i]
                if not isinstance(item, (tuple, list)) or len(item) < 2:
                    raise UsageError(f"{source}: dataset items must be (x, y) or (x, y, index)")
                xs.append(_as_tensor(item[0]))
                ys.append(_as_tensor(item[1]))
            if not xs:
                raise UsageError(f"{source} is empty")
            x, y = torch.stack(xs), torch.stack(ys).reshape(-1)
            index = torch.arange(count)
            kind = type(dataset).__name__
        x = x.to(device=device, dtype=torch.float32).contiguous()
        y = y.to(device=device, dtype=torch.long)
    if len(x) == 0:
        raise UsageError(f"{source} is empty")
    if float(x.min()) < 0.0 or float(x.max()) > 1.0:  # one check at start: eps is in pixel units
        raise UsageError(f"{source}: inputs must lie in [0, 1] (put normalisation inside the model)")
    return ProbeSet(x=x, y=y, index=index.to(device), source=f"{source}:{kind}")


# ---------------------------------------------------------------------------------------------
# cadence
# ---------------------------------------------------------------------------------------------
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


def _is_loss_key(probe: str, key: str) -> bool:
    return "loss" in key or probe == "train" and key == "loss"


# ---------------------------------------------------------------------------------------------
# the monitor
# ---------------------------------------------------------------------------------------------
class Monitor:
    """The object ``codiag.monitor(...)`` returns; use it as a context manager.

    Public attributes: ``step`` (optimizer steps so far), ``epoch`` (completed
    epochs), ``co_detected`` / ``co_alarm``, ``detector``, ``n_events``,
    ``probe_time_s`` (wall time spent inside probe events, for overhead
    accounting), ``run_dir``, ``writer``.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, run_dir: str | Path,
                 eps: float, probe_data: Any = None, train_data: Any = None,
                 attack: Callable | None = None, every: Any = "epoch",
                 probes: str | Sequence[str] | None = "default", *, method: Any = None,
                 probe_n: int = DEFAULT_PROBE_N, train_probe_n: int = DEFAULT_TRAIN_PROBE_N,
                 seed: int = 0, config: Mapping[str, Any] | None = None, resume: bool = False,
                 overwrite: bool = False, reference_model: nn.Module | None = None,
                 on_co: Callable[[dict[str, Any]], Any] | None = None,
                 detector: Detector | bool | str | None = True, pgd_steps: int = 10,
                 pgd_alpha: float | None = None, pgd_random_start: bool = True,
                 probe_options: Mapping[str, Mapping[str, Any]] | None = None,
                 step_update_norms: bool = False, tensorboard: Any = None,
                 strict: bool = False) -> None:

        if not isinstance(model, nn.Module):
            raise UsageError("monitor: model must be a torch.nn.Module")
        if not hasattr(optimizer, "register_step_post_hook"):
            raise UsageError("monitor: optimizer must be a torch.optim.Optimizer")
        eps = float(eps)
        if not (0.0 < eps <= 1.0):
            raise UsageError(f"monitor: eps must lie in (0, 1] (pixel units), got {eps}")
        if probe_data is None and train_data is None:
            raise UsageError("monitor: give probe_data (and ideally train_data) to draw the probe sets from")
        self.model, self.optimizer, self.eps = model, optimizer, eps
        self.run_dir = Path(run_dir)
        self.every_kind, self.every_n = parse_every(every)
        self.probes = resolve_probes(probes, probe_options)
        self.method = method
        self.reference_model = reference_model
        self.on_co = on_co
        self.seed = int(seed)
        self.strict = bool(strict)
        self.pgd = {"steps": int(pgd_steps), "alpha": pgd_alpha, "random_start": bool(pgd_random_start)}
        self.step_update_norms = bool(step_update_norms)
        self.detector: Detector | None = make_detector(detector)
        self.device = _model_device(model)
        self._attack_fn = attack
        self._attack = normalise_attack(attack, self.device)
        self._probe_data, self._train_data = probe_data, train_data
        self._probe_n, self._train_probe_n = int(probe_n), int(train_probe_n)
        self._user_config = dict(config or {})
        self._resume, self._overwrite = resume, overwrite
        self._tb_spec = tensorboard
        # run-time state
        self.step = 0
        self.epoch = 0
        self._steps_in_epoch = 0
        self._last_event_step: int | None = None
        self.n_events = 0
        self.probe_time_s = 0.0
        self.co_alarm: dict[str, Any] | None = None
        self._probe_state: dict[str, dict[str, Any]] = {}
        self._pending: list[tuple[int, int, str, str, Any]] = []
        self._step_norms: list[tuple[int, int, Tensor]] = []
        self._prev_params: list[Tensor] | None = None
        self._loss_bad: Tensor | None = None
        self._loss_first_bad: Tensor | None = None
        self._nonfinite_seen: set[tuple[str, str]] = set()
        self._hooks: list[Any] = []
        self._tb = None
        self.writer = None
        self.probe_set = None
        self.train_set = None
        self._open = False

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "Monitor":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close("finished")
        else:
            self.close("interrupted" if issubclass(exc_type, KeyboardInterrupt) else "failed")

    def start(self) -> "Monitor":
        """Open the run directory, copy out the probe sets, hook the optimizer, run the step-0 event."""

        if self._open:
            return self
        self.probe_set = extract_probe_set(self._probe_data if self._probe_data is not None
                                           else self._train_data, self._probe_n, self.device,
                                           "probe_data" if self._probe_data is not None else "train_data")
        self.train_set = (extract_probe_set(self._train_data, self._train_probe_n, self.device, "train_data")
                          if self._train_data is not None else None)
        resuming = bool(self._resume) and (self.run_dir / "run.json").exists()
        self.writer = RunWriter(self.run_dir, self._config(), resume=self._resume,
                                overwrite=self._overwrite)
        try:
            if resuming:
                previous = load_run(self.run_dir)
                metrics = previous.metrics
                if len(metrics):
                    self.step = int(metrics["step"].max())
                    self.epoch = int(metrics["epoch"].max())
                self._last_event_step = self.step
                self._replay_detector(metrics, previous.events)
            self._tb = self._open_tensorboard()
            self._hooks.append(self.optimizer.register_step_post_hook(self._post_step))
            if self.step_update_norms:
                self._hooks.append(self.optimizer.register_step_pre_hook(self._pre_step))
            self._open = True
            if not resuming:
                self.probe_event()  # every curve gets its point at initialisation
        except BaseException:
            self._remove_hooks()
            self.writer.close("failed")
            raise
        return self

    def close(self, status: str = "finished") -> None:
        """Final event (if steps were taken since the last one), flush, release hooks and the run lock."""
        if not self._open:
            return
        try:
            if status == "finished" and self.every_kind == "epoch" and self.epoch == 0 and self.step > 0:
                warnings.warn("codiag.monitor: every='epoch' but mon.epoch_end() was never called; "
                              "only the events at step 0 and at exit were recorded", stacklevel=3)
            if status == "finished" and self._last_event_step != self.step:
                self.probe_event()
            else:
                self._flush_rows([], [])
        finally:
            self._open = False
            self._remove_hooks()
            if self._tb is not None:
                with contextlib.suppress(Exception):
                    self._tb.close()
            self.writer.update(monitor_stats={"events": self.n_events, "probe_time_s": self.probe_time_s,
                                              "steps": self.step, "epochs": self.epoch})
            self.writer.close(status)

    def _remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def _config(self) -> dict[str, Any]:
        def describe(obj: Any) -> str | None:
            if obj is None:
                return None
            return getattr(obj, "__qualname__", None) or repr(obj)

        mon = {
            "eps": self.eps, "every": f"{self.every_n} {self.every_kind}s", "probes": [p.name for p in self.probes],
            "seed": self.seed, "probe_pgd": {**self.pgd, "alpha": self.pgd["alpha"] or self.eps / 4},
            "attack": describe(self._attack_fn) or "fgsm", "method": repr(self.method) if self.method else None,
            "reference_model": self.reference_model is not None,
            "probe_set": {"source": self.probe_set.source, "n": len(self.probe_set),
                          "indices": self.probe_set.index.tolist()},
            "train_probe_set": None if self.train_set is None else {
                "source": self.train_set.source, "n": len(self.train_set),
                "indices": self.train_set.index.tolist()},
            "instance_grad_start": "method.start" if callable(getattr(self.method, "start", None)) else "clean",
            "probe_stand_in": getattr(self.method, "probe_stand_in", "") or None,
            "step_update_norms": self.step_update_norms,
            "detector": None if self.detector is None else self.detector.settings(),
        }
        return {**self._user_config, "monitor": mon}

    def _open_tensorboard(self):
        spec = self._tb_spec
        if spec is False:
            return None
        if spec is not None and spec is not True:
            return spec  # a SummaryWriter-like object given by the user
        try:  # optional extra: `pip install codiag[tensorboard]`
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # ImportError, or a broken tensorboard install
            if spec is True:
                warnings.warn("tensorboard is not installed; scalars go to metrics.csv only", stacklevel=3)
            return None
        return SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    # -- the user's side -------------------------------------------------------------------
    @property
    def co_detected(self) -> bool:
        """True once the online detector raised its alarm."""
        return self.co_alarm is not None

    @property
    def row_epoch(self) -> int:
        """The epoch stamped on rows now: completed epochs, +1 while an epoch is under way.

        So rows of epoch k (1-based) include the training rows logged during it
        and the probe event at its end; 0 is "before training".
        """
        return self.epoch + (1 if self._steps_in_epoch > 0 else 0)

    def epoch_end(self) -> None:
        """Mark the end of an epoch; runs a probe event when ``every`` is in epochs."""
        self._check_open()
        self.epoch += 1
        self._steps_in_epoch = 0
        if self.every_kind == "epoch" and self.epoch % self.every_n == 0:
            self.probe_event()
        else:
            self._flush_rows([], [])

    def log(self, probe: str, mapping: Mapping[str, Any], step: int | None = None,
            epoch: int | None = None) -> None:
        """Buffer rows of your own (e.g. ``mon.log("train", {"loss": loss_sum / n})``).

        Values may be numbers or 0-d device tensors; they are written at the next
        probe event or flush, so logging never synchronises with the device.
        """
        self._check_open()
        s = self.step if step is None else int(step)
        e = self.row_epoch if epoch is None else int(epoch)
        for key, value in mapping.items():
            if isinstance(value, Tensor):
                value = value.detach().reshape(()).float()
            self._pending.append((s, e, str(probe), str(key), value))

    def track_loss(self, loss: Tensor) -> None:
        """Optionally pass each step's training loss: non-finite values become ``nonfinite_loss`` events.

        Kept on the device (a count and the first bad step), read at the next event.
        """
        bad = ~torch.isfinite(loss.detach()).all()
        if self._loss_bad is None:
            self._loss_bad = torch.zeros((), dtype=torch.long, device=loss.device)
            self._loss_first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
        self._loss_first_bad = torch.where(bad & (self._loss_first_bad < 0),
                                           torch.full_like(self._loss_first_bad, self.step + 1),
                                           self._loss_first_bad)
        self._loss_bad = self._loss_bad + bad.long()

    def event(self, kind: str, **fields: Any) -> None:
        """Append an event (e.g. ``rollback``) to events.jsonl, stamped with step and epoch."""
        self._check_open()
        self.writer.event(kind, **{"step": self.step, "epoch": self.row_epoch, **fields})

    def update(self, **fields: Any) -> None:
        """Merge fields into run.json (e.g. final evaluation results)."""
        self._check_open()
        self.writer.update(**fields)

    def flush(self) -> None:
        """Write the rows logged so far without running probes."""
        self._check_open()
        self._flush_rows([], [])

    def reset_co(self) -> None:
        """Re-arm the detector (after a roll-back to weights from before the collapse)."""
        self.co_alarm = None
        if self.detector is not None:
            self.detector.reset()

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError("the monitor is not running (use it as `with codiag.monitor(...) as mon:`)")

    # -- optimizer hooks (cheap: no host synchronisation) ---------------------------------
    def _pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        with torch.no_grad():
            if self._prev_params is None or len(self._prev_params) != len(params):
                self._prev_params = [p.detach().clone() for p in params]
            else:
                torch._foreach_copy_(self._prev_params, [p.detach() for p in params])

    def _post_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.step += 1
        self._steps_in_epoch += 1
        if self.step_update_norms and self._prev_params is not None:
            params = [p.detach() for g in optimizer.param_groups for p in g["params"]]
            with torch.no_grad():
                diffs = torch._foreach_sub(params, self._prev_params)
                norms = torch._foreach_norm(diffs)
                total = torch.stack([n.float() for n in norms]).square().sum().sqrt() if norms else None
            if total is not None:
                self._step_norms.append((self.step, self.row_epoch, total))
        if self.every_kind == "step" and self.step % self.every_n == 0:
            self.probe_event()

    # -- probe events ----------------------------------------------------------------------
    def probe_event(self) -> None:
        """Run every selected probe now, write the rows, then evaluate the CO detector."""

        self._check_open()
        t0 = time.perf_counter()
        ctx = ProbeContext(self.model, self.eps, self.step, self.row_epoch, self.probe_set,
                           self.train_set, attack=self._attack, method=self.method,
                           reference_model=self.reference_model, state=self._probe_state,
                           seed=self.seed, pgd_steps=self.pgd["steps"], pgd_alpha=self.pgd["alpha"],
                           pgd_random_start=self.pgd["random_start"])
        with isolated_rng(self.device), eval_mode(self.model), \
                torch.autocast(self.device.type, enabled=False), torch.enable_grad():
            for probe in self.probes:
                try:
                    probe.run(ctx)
                except Exception as exc:  # a broken probe must not kill a long training run
                    if self.strict:
                        raise
                    warnings.warn(f"codiag probe {probe.name} failed at step {self.step}: {exc!r}",
                                  RuntimeWarning, stacklevel=2)
                    self.writer.event("probe_error", step=self.step, epoch=ctx.epoch, probe=probe.name,
                                      error=repr(exc), traceback=traceback.format_exc(limit=5))
        values = self._flush_rows([(ctx.step, ctx.epoch, p, k, v) for p, k, v in ctx.rows.scalars],
                                  [(ctx.step, name, arr) for name, arr in ctx.rows.arrays])
        self._last_event_step = self.step
        self.n_events += 1
        self._run_detector(ctx.step, ctx.epoch, values)
        self.probe_time_s += time.perf_counter() - t0

    def _flush_rows(self, rows: list[tuple[int, int, str, str, Any]],
                    arrays: list[tuple[int, str, Any]]) -> dict[tuple[str, str], float]:
        """Move all buffered values to the host (one transfer per device), write and flush them."""
        rows = self._pending + self._drain_step_rows() + rows
        self._pending = []
        values = host_values([r[4] for r in rows])
        event_values: dict[tuple[str, str], float] = {}
        for (step, epoch, probe, key, _), value in zip(rows, values):
            self.writer.log(step, epoch, probe, key, value)
            if self._tb is not None:
                with contextlib.suppress(Exception):
                    self._tb.add_scalar(f"{probe}/{key}", value, step)
            if not math.isfinite(value) and _is_loss_key(probe, key) and (probe, key) not in self._nonfinite_seen:
                self._nonfinite_seen.add((probe, key))
                self.writer.event("nonfinite_loss", step=step, epoch=epoch, probe=probe, key=key,
                                  value=repr(value))
            event_values[(probe, key)] = value
        self._check_tracked_loss()
        for step, name, arr in arrays:
            self.writer.save_array(name, step, arr)
        self.writer.flush()
        if self._tb is not None:
            with contextlib.suppress(Exception):
                self._tb.flush()
        return event_values

    def _drain_step_rows(self) -> list[tuple[int, int, str, str, Any]]:
        out = [(s, e, "step_update", "l2", v) for s, e, v in self._step_norms]
        self._step_norms = []
        return out

    def _check_tracked_loss(self) -> None:
        if self._loss_bad is None:
            return
        count, first = (int(v) for v in torch.stack([self._loss_bad, self._loss_first_bad]).tolist())
        if count > 0 and ("train", "step_loss") not in self._nonfinite_seen:
            self._nonfinite_seen.add(("train", "step_loss"))
            self.writer.event("nonfinite_loss", step=first, epoch=self.row_epoch, probe="train",
                              key="step_loss", count=count)

    def _replay_detector(self, metrics: Any, events: list[dict[str, Any]]) -> None:
        """On resume: rebuild the detector from the recorded probe events, and its alarm state.

        The last ``co_alarm`` stands unless a ``rollback`` followed it (the
        roll-back re-armed the detector; the replay restarts after it).
        """

        if self.detector is None:
            return
        kinds = [e.get("kind") for e in events]
        last_alarm = max((i for i, k in enumerate(kinds) if k == "co_alarm"), default=-1)
        last_rollback = max((i for i, k in enumerate(kinds) if k == "rollback"), default=-1)
        after = int(events[last_rollback].get("step", -1)) if last_rollback >= 0 else -1
        for step, epoch, values in event_values(metrics):
            if step > after:
                self.detector.update(step, epoch, values)
        if last_alarm > last_rollback:  # written (and perhaps acted on) before the interruption
            self.co_alarm = self.detector.alarm = {k: v for k, v in events[last_alarm].items()
                                                   if k not in ("kind", "time")}
        else:
            self.detector.alarm = None  # none written: it may fire (and be written) from now on

    def _run_detector(self, step: int, epoch: int, values: Mapping[tuple[str, str], float]) -> None:
        if self.detector is None:
            return
        signals = {name: values[pk] for pk, name in SIGNALS.items() if pk in values}
        if not signals:
            return
        alarm = self.detector.update(step, epoch, signals)
        if alarm is None or self.co_alarm is not None:
            return
        self.co_alarm = alarm
        self.writer.event("co_alarm", **alarm)
        if self.on_co is not None:
            self.on_co(alarm)


def monitor(model: nn.Module, optimizer: torch.optim.Optimizer, run_dir: str | Path, eps: float,
            probe_data: Any = None, train_data: Any = None, attack: Callable | None = None,
            every: Any = "epoch", probes: str | Iterable[str] | None = "default", **options: Any) -> Monitor:
    """Watch a training loop for catastrophic overfitting; use as ``with codiag.monitor(...) as mon:``.

    Arguments: ``model`` and ``optimizer`` (steps are counted by an optimizer
    step hook), ``run_dir`` (the run directory; see ``codiag.runs``), ``eps``
    (L-inf radius in pixel units), ``probe_data`` (test loader/dataset/tensors:
    the first ``probe_n`` = 256 points form the probe set), ``train_data``
    (training loader/dataset: the first ``train_probe_n`` = 512 points serve
    the per-instance probes), ``attack`` (the method's perturbation,
    ``attack(model, x, y, index[, generator=])``; FGSM if None), ``every``
    ("epoch", "Nepochs" or N optimizer steps) and ``probes`` ("default", "all",
    or names from ``probes.PROBES``).

    Keyword options: ``method`` (its ``state()`` feeds ``method_state``,
    its ``start()`` the instance gradient norms), ``reference_model``
    (transfer accuracy of ``strength_gap``), ``on_co`` (called once with the
    alarm dict), ``seed`` (of the probe generators), ``config`` (recorded in
    run.json), ``resume``/``overwrite`` (of the run directory),
    ``pgd_steps``/``pgd_alpha``/``pgd_random_start`` (the probe PGD: 10, eps/4,
    True), ``probe_options`` (``{probe: {option: value}}``),
    ``step_update_norms`` (record ||theta_t - theta_{t-1}|| after every step,
    kept on the device), ``tensorboard`` (None: when installed; False; True;
    or a SummaryWriter-like object), ``detector`` (True, False or a
    ``CODetector`` with other thresholds; ``"elle_a"`` for ELLE-A's rule on the
    ``local_linearity`` probe, ``"both"`` for either), ``strict`` (re-raise probe errors
    instead of warning).
    """
    return Monitor(model, optimizer, run_dir, eps, probe_data=probe_data, train_data=train_data,
                   attack=attack, every=every, probes=probes, **options)
