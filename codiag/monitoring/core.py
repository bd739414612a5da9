"""The :class:`Monitor`: lifecycle, optimizer hooks and the user's side; the parts do the work.

Probe-set selection is :mod:`.probe_sets`, isolation :mod:`.isolation`, the cadence
and probe running :mod:`.events`, run writing :mod:`.recording`, the alarm
:mod:`.alarm`, and every option is documented once in :class:`.options.MonitorOptions`.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from ..detector import CONFIRM
from ..errors import UsageError
from ..probes import resolve_probes
from ..probes.base import ProbeContext, ProbeSet
from ..runs import RunWriter, exit_status, load_run
from .alarm import Alarm
from .events import Cadence, parse_every, run_probes
from .isolation import Normalization, ProbeModel, UserCallGuard, model_device, unwrap_compiled, wrap_attack
from .options import CORE_PROBES, MonitorOptions
from .probe_sets import extract_probe_set, num_classes
from .recording import Recorder, run_config


class Monitor:
    """The object ``codiag.monitor(...)`` returns; use it as a context manager.

    Public attributes: ``step`` (optimizer steps so far), ``epoch`` (completed
    epochs), ``co_detected`` / ``co_alarm``, ``detector``, ``n_events``, ``n_confirmations``
    (confirming measurements on ``confirm_n`` points after events near a line),
    ``probe_time_s`` (wall time spent inside probe events, for overhead
    accounting), ``run_dir``, ``writer``, ``options`` (:class:`MonitorOptions`).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, run_dir: str | Path, eps: float,
                 probe_data: Any = None, train_data: Any = None, attack: Callable | None = None,
                 every: Any = "epoch", probes: str | Iterable[str] | None = "default", **options: Any) -> None:
        if not isinstance(model, nn.Module):
            raise UsageError("monitor: model must be a torch.nn.Module")
        if not hasattr(optimizer, "register_step_post_hook"):
            raise UsageError("monitor: optimizer must be a torch.optim.Optimizer")
        eps = float(eps)
        if not (0.0 < eps <= 1.0):
            raise UsageError(f"monitor: eps must lie in (0, 1] (pixel units), got {eps}")
        if probe_data is None and train_data is None:
            raise UsageError("monitor: give probe_data (and ideally train_data) to draw the probe sets from")
        self.options = o = MonitorOptions.from_kwargs(options)
        self.model, self.optimizer, self.eps, self.run_dir = model, optimizer, eps, Path(run_dir)
        self.network = unwrap_compiled(model)   # probed eagerly: no recompiles, names without _orig_mod.
        self.device = model_device(self.network)
        self.normalization = Normalization(o.normalization)
        self.view = ProbeModel(self.network, o.output_fn, self.normalization)
        self.guard = UserCallGuard(self.network)
        self.cadence = Cadence(*parse_every(every), early=o.early_events,
                               steps_per_epoch=_batches(train_data))
        self.probes = resolve_probes(probes, o.probe_options)
        self.light_probes = [p for p in self.probes if p.name in CORE_PROBES]
        self.alarm = Alarm(o.detector, o.on_co)
        self.method, self.reference_model, self.strict = o.method, o.reference_model, o.strict
        self._attack_fn, self._data = attack, (probe_data, train_data)
        #: where the probe set (and the confirming measurement's points) are drawn from, and its name
        self._probe_source = (probe_data, "probe_data") if probe_data is not None else (train_data, "train_data")
        self._attack = wrap_attack(attack, self.network, self.device, self.normalization, self.guard)
        self.step = self.epoch = self._steps_in_epoch = self.n_events = 0
        self.probe_time_s = 0.0
        self._last_event_step: int | None = None
        self._probe_state: dict[str, dict[str, Any]] = {}
        self._prev_params: list[Tensor] | None = None
        self._hooks: list[Any] = []
        self.recorder: Recorder | None = None
        self.probe_set = self.train_set = self.light_set = None
        self._confirm_set: ProbeSet | None | bool = None   # read at the first confirmation; False: none
        self.n_confirmations = 0
        self._open = False

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "Monitor":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(exit_status(exc_type, exc))

    @property
    def writer(self):
        return None if self.recorder is None else self.recorder.writer

    def start(self) -> "Monitor":
        """Open the run directory, copy out the probe sets, hook the optimizer, run the step-0 event."""
        if self._open:
            return self
        o, (probe_data, train_data), (data, source) = self.options, self._data, self._probe_source
        self.probe_set = extract_probe_set(data, o.probe_n, self.device, source, o.probe_select, self.normalization,
                                           num_classes(self.view, self.device, probe_data, train_data))
        self.train_set = (extract_probe_set(train_data, o.train_probe_n, self.device, "train_data",
                                            o.probe_select, self.normalization)
                          if train_data is not None else None)
        ps, k = self.probe_set, o.light_n
        self.light_set = ProbeSet(ps.x[:k], ps.y[:k], None if ps.index is None else ps.index[:k], ps.source)
        resuming = bool(o.resume) and (self.run_dir / "run.json").exists()
        writer = RunWriter(self.run_dir, run_config(self), resume=o.resume, overwrite=o.overwrite)
        try:
            if resuming:
                previous = load_run(self.run_dir)
                if len(previous.metrics):
                    self.step = int(previous.metrics["step"].max())
                    self.epoch = int(previous.metrics["epoch"].max())
                self._last_event_step = self.step
                self.cadence.full_events_after_start = 1
                self.alarm.replay(previous.metrics, previous.events)
            self.recorder = Recorder(writer, o.sinks)
            self.recorder.sinks.start(self.run_dir, writer.meta.get("config", {}), resuming)
            self._hooks.append(self.optimizer.register_step_post_hook(self._post_step))
            if o.step_update_norms:
                self._hooks.append(self.optimizer.register_step_pre_hook(self._pre_step))
            self._open = True
            if not resuming:
                self.probe_event()  # every curve gets its point at initialisation
        except BaseException as e:
            self._open = False
            self._remove_hooks()
            writer.close(exit_status(type(e), e))
            if self.recorder is not None:   # a tracker run started for this run ends with it
                self.recorder.sinks.close(exit_status(type(e), e), self.run_dir, report=False)
            raise
        return self

    def close(self, status: str = "finished") -> None:
        """Final event (if steps were taken since the last one), flush, release hooks and the run lock."""
        if not self._open:
            return
        try:
            if status == "finished" and self.epoch == 0 and self.step > 0:
                warnings.warn("codiag.monitor: mon.epoch_end() was never called, so every row is stamped "
                              + ("epoch 1; call it at the end of each epoch" if self.cadence.kind == "step" else
                                 "epoch 1 and only the events at step 0 and at exit ran"), UserWarning, stacklevel=3)
            if status == "finished" and self._last_event_step != self.step:
                self.probe_event()
            else:
                self.recorder.flush([], [], self.row_epoch)
        finally:
            self._open = False
            self._remove_hooks()
            self.recorder.close(status, {"events": self.n_events, "confirmations": self.n_confirmations,
                                         "probe_time_s": self.probe_time_s, "steps": self.step,
                                         "epochs": self.epoch})

    def _remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    # -- the user's side -------------------------------------------------------------------
    @property
    def co_alarm(self) -> dict[str, Any] | None:
        """The alarm dict once the detector fired (step, epoch, rule, reason, values)."""
        return self.alarm.alarm

    @property
    def co_detected(self) -> bool:
        """True once the online detector raised its alarm."""
        return self.alarm.alarm is not None

    @property
    def detector(self):
        return self.alarm.detector

    @property
    def row_epoch(self) -> int:
        """The epoch stamped on rows now: completed epochs, +1 while an epoch is under way."""
        return self.epoch + (1 if self._steps_in_epoch > 0 else 0)

    def epoch_end(self) -> None:
        """Mark the end of an epoch; runs a probe event when ``every`` is in epochs."""
        self._check_open()
        self.epoch += 1
        if self.epoch == 1 and self.step > 0:   # the reports' x axis: light and every=N events in epochs
            self.writer.update(steps_per_epoch=self.step)
        self._steps_in_epoch = 0
        if self.cadence.after_epoch(self.epoch):
            self.probe_event()
        else:
            self.recorder.flush([], [], self.row_epoch)

    def log(self, probe: str, mapping: Mapping[str, Any], step: int | None = None,
            epoch: int | None = None) -> None:
        """Buffer rows of your own (``mon.log("train", {"loss": loss_sum / n})``), written at the next flush."""
        self._check_open()
        self.recorder.log(self.step if step is None else int(step),
                          self.row_epoch if epoch is None else int(epoch), probe, mapping)

    def track_loss(self, loss: Tensor) -> None:
        """Optionally pass each step's training loss: non-finite values become ``nonfinite_loss`` events."""
        self.recorder.track_loss(loss, self.step + 1)

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
        self.recorder.flush([], [], self.row_epoch)

    def reset_co(self) -> None:
        """Re-arm the detector (after a roll-back to weights from before the collapse)."""
        self.alarm.reset()

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
        if self.options.step_update_norms and self._prev_params is not None:
            params = [p.detach() for g in optimizer.param_groups for p in g["params"]]
            with torch.no_grad():
                norms = torch._foreach_norm(torch._foreach_sub(params, self._prev_params))
                if norms:
                    total = torch.stack([n.float() for n in norms]).square().sum().sqrt()
                    self.recorder.step_norms.append((self.step, self.row_epoch, total))
        due = self.cadence.after_step(self.step)
        if due == "full" or due == "light" and self.light_probes:
            self.probe_event(light=due == "light")

    # -- probe events ----------------------------------------------------------------------
    def probe_event(self, light: bool = False) -> None:
        """Run the probes now (``light``: the alarm's probes on the light slice), write, run the alarm."""
        self._check_open()
        t0 = time.perf_counter()
        ctx = self._measure(self.light_set if light else self.probe_set,
                            self.light_probes if light else self.probes, first=self.n_events == 0 and self.step == 0)
        rows = [(ctx.step, ctx.epoch, p, k, v) for p, k, v in ctx.rows.scalars]
        rows.append((ctx.step, ctx.epoch, "event", "probe_n", len(ctx.probe_set)))
        values = self.recorder.flush(rows, [(ctx.step, name, arr) for name, arr in ctx.rows.arrays],
                                     self.row_epoch)
        if not light:
            self._last_event_step = self.step
            if self.step > 0:
                self.cadence.full_events_after_start += 1
        self.n_events += 1
        self.alarm.on_event(self.writer, ctx.step, ctx.epoch, values)
        if not light and self.alarm.suspect and self.options.confirm_n > len(self.probe_set):
            self._confirm()
        self.probe_time_s += time.perf_counter() - t0

    def _measure(self, points: ProbeSet, probes: list, first: bool = False, name: str | None = None) -> ProbeContext:
        """Run ``probes`` on ``points`` now, isolated; failures are counted under the probe's name (or ``name``)."""
        o = self.options
        ctx = ProbeContext(self.view, self.eps, self.step, self.row_epoch, points, self.train_set,
                           attack=self._attack, method=self.method, reference_model=self.reference_model,
                           state=self._probe_state, seed=o.seed, pgd_steps=o.pgd_steps,
                           pgd_alpha=o.pgd_alpha, pgd_random_start=o.pgd_random_start, loss_fn=o.loss_fn)
        run_probes(ctx, probes, self.view, [self.network, self.reference_model], self.device, first, self.strict,
                   lambda probe, exc: self.recorder.probe_error(ctx.step, ctx.epoch, name or probe, exc))
        return ctx

    def _confirm_points(self) -> ProbeSet | None:
        """The ``confirm_n`` points, read (on the CPU, RNG isolated, by index) at the first confirmation.

        Most runs never come near a line, so they never pay for reading or holding these points.
        None where the probe data hold no more points than the probe set, or cannot be read again
        (counted as a ``confirm`` probe error)."""
        if self._confirm_set is None:
            o, (data, source) = self.options, self._probe_source
            try:
                with warnings.catch_warnings():   # the probe set has warned about its classes already
                    warnings.simplefilter("ignore", UserWarning)
                    points = extract_probe_set(data, o.confirm_n, torch.device("cpu"), source, o.probe_select,
                                               self.normalization)
            except Exception as exc:
                if self.strict:
                    raise
                self.recorder.probe_error(self.step, self.row_epoch, CONFIRM, exc)
                points = None
            self._confirm_set = points if points is not None and len(points) > len(self.probe_set) else False
        return self._confirm_set or None

    def _confirm(self) -> None:
        """Measure ``robust_acc`` again on the ``confirm_n`` points, write it as probe ``confirm``, feed the alarm.

        The probe set's sampling error can leave a collapse from a low PGD accuracy a
        few points short of every line at every event (``docs/DETECTOR.md``); four
        times the points halve that error, paid only where an event came near a line.
        """
        probe = next((p for p in self.probes if p.name == "robust_acc"), None)
        cs = None if probe is None else self._confirm_points()
        if cs is None:
            return
        points = ProbeSet(cs.x.to(self.device), cs.y.to(self.device), cs.index.to(self.device), cs.source)
        ctx = self._measure(points, [probe], name=CONFIRM)
        rows = [(ctx.step, ctx.epoch, CONFIRM, k, v) for _, k, v in ctx.rows.scalars]
        values = self.recorder.flush(rows + [(ctx.step, ctx.epoch, CONFIRM, "probe_n", len(points))], [],
                                     self.row_epoch)
        self.n_confirmations += 1
        self.alarm.on_event(self.writer, ctx.step, ctx.epoch, values)


def _batches(loader: Any) -> int | None:
    """Batches per epoch of a training loader (a DataLoader, codiag's BatchLoader), else None."""
    if hasattr(loader, "dataset") and hasattr(loader, "__len__") and hasattr(loader, "__iter__"):
        return len(loader) or None
    return None


def monitor(model: nn.Module, optimizer: torch.optim.Optimizer, run_dir: str | Path, eps: float,
            probe_data: Any = None, train_data: Any = None, attack: Callable | None = None,
            every: Any = "epoch", probes: str | Iterable[str] | None = "default", **options: Any) -> Monitor:
    """Watch a training loop for catastrophic overfitting; use as ``with codiag.monitor(...) as mon:``.

    ``model`` and ``optimizer`` (steps are counted by an optimizer step hook),
    ``run_dir`` (the run directory; see ``codiag.runs``), ``eps`` (L-inf radius
    in pixel units), ``probe_data`` (test loader/dataset/tensors: ``probe_n`` =
    256 points form the probe set), ``train_data`` (training loader/dataset:
    ``train_probe_n`` = 512 points serve the per-instance probes), ``attack``
    (the method's perturbation, called ``attack(model, x, y)``, with ``index=``
    and ``generator=`` passed as keywords only when its signature names them;
    FGSM if None), ``every`` ("epoch", "Nepochs" or N optimizer steps) and
    ``probes`` ("default", "all", or names from ``codiag.probes.PROBES``).
    Keyword options (``output_fn``, ``loss_fn``, ``normalization``,
    ``probe_select``, ``detector``, ...): :class:`MonitorOptions`.
    """
    return Monitor(model, optimizer, run_dir, eps, probe_data=probe_data, train_data=train_data,
                   attack=attack, every=every, probes=probes, **options)
