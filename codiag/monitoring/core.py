"""The :class:`Monitor`: lifecycle, optimizer hooks and the user's side; the parts do the work.

Probe-set selection is :mod:`.probe_sets`, isolation :mod:`.isolation`, the cadence
and probe running :mod:`.events`, run writing :mod:`.recording`, the alarm
:mod:`.alarm`, and every option is documented once in :class:`.options.MonitorOptions`.
"""
from __future__ import annotations

import contextlib
import numbers
import os
import time
import warnings
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from torch import Tensor, nn

from .. import checkpoint
from ..detector import CONFIRM
from ..errors import UsageError
from ..parsing import parse_fraction
from ..probes import resolve_probes
from ..probes.base import ProbeContext, ProbeSet
from ..runs import RunWriter, exit_status, load_run
from .alarm import Alarm
from .best import BestKeeper
from .events import Cadence, parse_every, run_probes
from .guard import Guard, GuardState
from .isolation import (
    Normalization,
    ProbeModel,
    UserCallGuard,
    model_device,
    per_sample_loss,
    unwrap_compiled,
    wrap_attack,
)
from .options import CORE_PROBES, MonitorOptions
from .probe_sets import extract_probe_set, num_classes
from .recording import Recorder, refuse_other_run, run_config


class Monitor:
    """The object ``codiag.monitor(...)`` returns; use it as a context manager.

    Public attributes: ``step`` (optimizer steps so far), ``epoch`` (completed
    epochs), ``co_detected`` / ``co_alarm``, ``co_warning`` (the early warning), ``detector``, ``n_events``,
    ``n_confirmations``
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
        eps = _eps(eps)
        if run_dir is None or not isinstance(run_dir, (str, os.PathLike)) or not str(run_dir).strip():
            raise UsageError(f"monitor: run_dir must name a directory (a str or Path), got {run_dir!r}")
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
        policy = Guard.from_spec(o.guard)
        self.co_guard = GuardState(policy) if policy is not None else None
        self.best_keeper = BestKeeper(self.run_dir) if o.keep_best or policy is not None else None
        self.alarm = Alarm(o.detector, o.on_co if policy is None else self._on_alarm,
                           self._on_warning if policy is not None and "warning" in policy.on else None)
        if policy is not None and self.alarm.detector is None:
            raise UsageError("monitor: guard= acts on the CO alarm; it needs a detector (detector=False is set)")
        self.method, self.reference_model, self.strict = o.method, o.reference_model, o.strict
        self._attack_fn, self._data = attack, (probe_data, train_data)
        self._loss_fn = per_sample_loss(o.loss_fn)
        #: where the probe set (and the confirming measurement's points) are drawn from, and its name
        self._probe_source = (probe_data, "probe_data") if probe_data is not None else (train_data, "train_data")
        self._attack = wrap_attack(attack, self.network, self.device, self.normalization, self.guard)
        self.step = self.epoch = self._steps_in_epoch = self.n_events = 0
        self.probe_time_s = 0.0
        self._last_event_step: int | None = None
        self.last_values: dict[tuple[str, str], float] = {}
        self._probe_state: dict[str, dict[str, Any]] = {}
        self._prev_params: list[Tensor] | None = None
        self._hooks: list[Any] = []
        self._input_hook: Any = None   # the one-time look at the model's training inputs
        self._finalizer: weakref.finalize | None = None
        self._pid = os.getpid()
        self._in_event = False
        self._held: str | None = None   # inside events_held(): the event due since it began ("full", "light")
        self._holding = False
        self.recorder: Recorder | None = None
        self.probe_set = self.train_set = self.light_set = None
        self._confirm_set: ProbeSet | None | bool = None   # read at the first confirmation; False: none
        self.n_confirmations = 0
        self._open = False
        self._rolled_back = False

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
                                           num_classes(self.view, self.device, probe_data, train_data), o.batch_fn)
        self.train_set = (extract_probe_set(train_data, o.train_probe_n, self.device, "train_data",
                                            o.probe_select, self.normalization, batch_fn=o.batch_fn)
                          if train_data is not None else None)
        ps, k = self.probe_set, o.light_n
        self.light_set = ProbeSet(ps.x[:k], ps.y[:k], None if ps.index is None else ps.index[:k], ps.source)
        resuming = bool(o.resume) and (self.run_dir / "run.json").exists()
        config = run_config(self)
        if resuming:   # before anything is written: a resumed run continues its own measurement
            refuse_other_run(self.run_dir, config)
        writer = RunWriter(self.run_dir, config, resume=o.resume, overwrite=o.overwrite)
        try:
            if resuming:
                previous = load_run(self.run_dir)
                if len(previous.metrics):
                    self.step = int(previous.metrics["step"].max())
                    self.epoch = int(previous.metrics["epoch"].max())
                self._last_event_step = self.step
                self.cadence.full_events_after_start = 1
                self.alarm.replay(previous.metrics, previous.events)
                self._resume_best(previous.meta.get("best"))
            self.recorder = Recorder(writer, o.sinks)
            self.recorder.sinks.start(self.run_dir, writer.meta.get("config", {}), resuming)
            self._pid = os.getpid()
            # the hooks hold the monitor weakly: a monitor dropped without close() can be collected
            self._hooks.append(self.optimizer.register_step_post_hook(_weak(self._post_step)))
            if o.step_update_norms:
                self._hooks.append(self.optimizer.register_step_pre_hook(_weak(self._pre_step)))
            self._open = True
            if self.co_guard is not None:
                self.writer.update(guard=self.co_guard.summary())
            if not resuming:
                self.probe_event()  # every curve gets its point at initialisation
            if self.normalization.spec is None:   # after the step-0 event: the next forward is the user's
                self._input_hook = self.model.register_forward_pre_hook(_weak(self._check_inputs))
                self._hooks.append(self._input_hook)
        except BaseException as e:
            self._open = False
            self._remove_hooks()
            writer.close(exit_status(type(e), e))
            if self.recorder is not None:   # a tracker run started for this run ends with it
                self.recorder.sinks.close(exit_status(type(e), e), self.run_dir, report=False)
            raise
        # collected, or its notebook cell re-run, without close(): hooks off, the run "interrupted", lock released
        self._finalizer = weakref.finalize(self, _release, self._hooks, self.recorder, self._pid)
        return self

    def close(self, status: str = "finished") -> None:
        """Final event (if steps were taken since the last one), flush, release hooks and the run lock.

        In a notebook, ``mon = codiag.monitor(...).start()`` in one cell and ``mon.close()``
        in another work as the ``with`` block does; a monitor that is dropped without
        ``close()`` (collected, or its cell re-run) removes its hooks, ends its run
        "interrupted" and releases the run directory by itself. In a forked child the
        monitor is the parent's: closing it there does nothing.
        """
        if not self._open or self._pid != os.getpid():
            return
        if self._finalizer is not None:
            self._finalizer.detach()
        try:
            if status == "finished" and self.epoch == 0 and self.step > 0:
                warnings.warn("codiag.monitor: mon.epoch_end() was never called, so every row is stamped "
                              + ("epoch 1; call it at the end of each epoch" if self.cadence.kind == "step" else
                                 "epoch 1 and only the events at step 0 and at exit ran"), UserWarning, stacklevel=3)
            if status == "finished" and self._last_event_step != self.step:
                self.probe_event()
            else:
                self.recorder.flush([], [], self.row_epoch)
            self._record_rescue()
        except BaseException as e:   # Ctrl-C or SIGTERM in the final event: the run did not end as asked
            status = exit_status(type(e), e) if status == "finished" else status
            raise
        finally:
            self._open = False
            self._remove_hooks()
            self.recorder.close(status, {"events": self.n_events, "confirmations": self.n_confirmations,
                                         "probe_time_s": self.probe_time_s, "steps": self.step,
                                         "epochs": self.epoch})

    def state_dict(self) -> dict[str, Any]:
        """What the monitor carries from one probe event to the next, for a resumable checkpoint.

        The probes that measure change since the previous event (``weight_update``,
        ``perturbation_delta``, ``abnormal_examples``' tally, ``loss_surface``'s running sum)
        keep their last values here, with the best checkpoint's and the guard's state; saved
        with the training state and given back by :meth:`load_state_dict` after ``start()``
        (``resume=True``), a resumed run records every row the uninterrupted run records, and a
        run that rolled back resumes to the uninterrupted result. Plain tensors, numbers,
        strings, tuples and dicts only (``torch.load(..., weights_only=True)`` reads them).
        """
        return {"probes": {name: _copy_state(state) for name, state in self._probe_state.items()},
                "best": None if self.best_keeper is None else self.best_keeper.state_dict(),
                "guard": None if self.co_guard is None else self.co_guard.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s values (call it after ``start()``, before the next event).

        Only the state of the probes this monitor runs is taken; it is data (tensors,
        numbers), never code.
        """
        probes = state.get("probes", {}) if isinstance(state, Mapping) else None
        if not isinstance(probes, Mapping):
            raise UsageError("monitor.load_state_dict: not a monitor state (no 'probes' mapping)")
        names = {p.name for p in self.probes}
        self._probe_state = {name: _copy_state(dict(s)) for name, s in probes.items()
                             if name in names and isinstance(s, Mapping)}
        if self.best_keeper is not None and state.get("best") is not None:
            self.best_keeper.load_state_dict(state["best"])
        if self.co_guard is not None and state.get("guard") is not None:
            self.co_guard.load_state_dict(state["guard"])

    def _remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        if self._input_hook is not None:
            self._input_hook.remove()
            self._input_hook = None

    def _check_inputs(self, module: nn.Module, args: Any) -> None:
        """One look at the model's real inputs (the first forward after the start), then removed.

        A model trained on standardized inputs but monitored with probe data in [0, 1]
        and no ``normalization=`` is probed on inputs it never saw: every value would be
        wrong without a word. One host read of the batch's range, once.
        """
        if self._in_event:
            return
        self._input_hook.remove()
        self._input_hook = None
        x = args[0] if args else None
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.numel() == 0:
            return
        with torch.no_grad():
            lo, hi = (float(v) for v in torch.stack([x.detach().min(), x.detach().max()]).float().cpu())
        if lo < -1e-4 or hi > 1 + 1e-4:
            warnings.warn(f"codiag.monitor: the model's training inputs span [{lo:.3g}, {hi:.3g}] while the "
                          "probe data lie in [0, 1]; if your loader standardizes the inputs, pass "
                          "normalization=(mean, std) and give probe_data in the same space, or every probe "
                          "measures a model on inputs it never saw", UserWarning, stacklevel=2)

    # -- the user's side -------------------------------------------------------------------
    @property
    def co_alarm(self) -> dict[str, Any] | None:
        """The alarm dict once the detector fired (step, epoch, rule, reason, values)."""
        return self.alarm.alarm

    @property
    def co_warning(self) -> dict[str, Any] | None:
        """The early warning once raised before the alarm (step, epoch, rule, reason, signals), else None."""
        return self.alarm.warning

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
            # a guard's roll-back inside the first epoch made it longer: the loader's length where known
            spe = (self.cadence.steps_per_epoch if self.rollbacks else None) or self.step
            self.writer.update(steps_per_epoch=spe)
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

    # -- saving the run: the best checkpoint and the guard -----------------------------------
    @property
    def best(self) -> dict[str, Any] | None:
        """The best full probe event so far (step, epoch, pgd_acc, fgsm_acc, clean_acc); ``keep_best``."""
        return None if self.best_keeper is None or self.best_keeper.info is None else dict(self.best_keeper.info)

    def restore_best(self) -> dict[str, Any]:
        """Load the best event's weights into the model (``keep_best``); returns :attr:`best`."""
        if self.best_keeper is None:
            raise UsageError("monitor: restore_best() needs keep_best=True")
        return self.best_keeper.restore(self.network)

    @property
    def collapsed(self) -> bool:
        """True once the guard has used up ``max_rollbacks`` and an alarm stood (stop, keep the best)."""
        return self.co_guard is not None and self.co_guard.status == "collapsed"

    @property
    def rollbacks(self) -> list[dict[str, Any]]:
        """The guard's roll-backs so far (restored step and epoch, the alarm, the mitigation)."""
        return [] if self.co_guard is None else [dict(r) for r in self.co_guard.rollbacks]

    def switch_attack(self, attack: Callable | None, method: Any = None) -> None:
        """The loop now trains with ``attack`` (and ``method``): the probes of the training
        perturbation follow it (after a roll-back's mitigation)."""
        self._attack_fn = attack
        self._attack = wrap_attack(attack, self.network, self.device, self.normalization, self.guard)
        if method is not None:
            self.method = method

    def _on_warning(self, warning: dict[str, Any]) -> None:
        """The guard's answer to the early warning, where its policy acts on it (``on=("warning", ...)``)."""
        self._on_alarm(warning, kind="warning")

    def _on_alarm(self, alarm: dict[str, Any], kind: str = "alarm") -> None:
        """The guard's answer to the alarm: roll back (event ``rollback``, detector re-armed) or, past
        ``max_rollbacks``, record ``collapsed``; then ``on_co(info)``, or a warning without one."""
        info = self.co_guard.act(self.network, self.optimizer, alarm, kind=kind)
        if info is None:
            if kind == "warning":
                return
            if self.options.on_co is not None:
                self.options.on_co(alarm)
            return
        if info["action"] == "rollback":
            self._rolled_back = True
            self.event("rollback", **{k: info[k] for k in ("trigger", "restored_step", "restored_epoch",
                                                           "alarm_step", "alarm_rule", "mitigation", "rollbacks")})
            self.reset_co()
            message = (f"restored the state of step {info['restored_step']} (roll-back {info['rollbacks']} of "
                       f"{info['max_rollbacks']}); switch the attack to {info['mitigation'] or 'a stronger one'}")
        else:
            self.event("collapsed", reason=info["reason"], rollbacks=info["rollbacks"])
            message = f"the run collapsed again after {info['rollbacks']} roll-back(s); keep the best checkpoint"
        self._record_rescue()
        if self.options.on_co is not None:
            self.options.on_co(info)
        else:
            what = "CO alarm" if kind == "alarm" else "CO warning"
            warnings.warn(f"codiag.monitor guard: {what} at step {alarm.get('step')}: {message}", UserWarning,
                          stacklevel=2)

    def _after_full_event(self, values: Mapping[tuple[str, str], float]) -> None:
        if self.best_keeper is not None and self.best_keeper.update(self.network, self.step, self.row_epoch, values):
            self.writer.update(best=self.best)

    def _resume_best(self, info: Mapping[str, Any] | None) -> None:
        """On resume: the recorded best (best.pt) if it is from before the resumed step (a loop that
        saves :meth:`state_dict` in its own checkpoint restores it exactly instead)."""
        keeper = self.best_keeper
        if keeper is None or not info or int(info.get("step", -1)) > self.step or not keeper.path.exists():
            return
        try:
            keeper.load_state_dict({"info": dict(info), "state": checkpoint.load(keeper.path)})
        except Exception as exc:   # never silent: the run keeps going without its old best
            warnings.warn(f"codiag.monitor: cannot read {keeper.path} ({str(exc).splitlines()[0]}); "
                          "the best checkpoint starts again", UserWarning, stacklevel=3)

    def _record_rescue(self) -> None:
        """run.json's ``best`` and ``guard`` (and best.pt, if it was never written)."""
        if self.best_keeper is not None:
            if not self.best_keeper.path.exists():
                self.best_keeper.write()
            self.writer.update(best=self.best)
        if self.co_guard is not None:
            self.writer.update(guard=self.co_guard.summary())

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError("the monitor is not running (use it as `with codiag.monitor(...) as mon:`)")
        self._check_owner()

    def _check_owner(self) -> None:
        if self._pid != os.getpid():
            raise UsageError(f"monitor: this monitor belongs to process {self._pid}, not to this forked child "
                             f"(pid {os.getpid()}); the child must not write the parent's run: train in the "
                             "parent, or start a monitor with its own run_dir in the child")

    # -- optimizer hooks (cheap: no host synchronisation) ---------------------------------
    def _pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        with torch.no_grad():
            if self._prev_params is None or len(self._prev_params) != len(params):
                self._prev_params = [p.detach().clone() for p in params]
            else:
                torch._foreach_copy_(self._prev_params, [p.detach() for p in params])

    def _post_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._check_owner()
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
            if self._holding:
                self._held = "full" if "full" in (due, self._held) else due
            else:
                self.probe_event(light=due == "light")

    @contextlib.contextmanager
    def events_held(self) -> Iterator[None]:
        """Hold the probe events due at the optimizer steps inside the block to its end, then run
        one (full if any due was). For a loop whose one training step takes several optimizer
        steps (Free-m's replays): the state between them is no place to measure and roll back to."""
        self._holding, self._held = True, None
        try:
            yield
        finally:
            self._holding = False
        due, self._held = self._held, None
        if due is not None:
            self.probe_event(light=due == "light")

    # -- probe events ----------------------------------------------------------------------
    def probe_event(self, light: bool = False) -> None:
        """Run the probes now (``light``: the alarm's probes on the light slice), write, run the alarm."""
        self._check_open()
        t0 = time.perf_counter()
        self._in_event = True
        try:
            self._event(light)
        finally:
            self._in_event = False
        self.probe_time_s += time.perf_counter() - t0

    def _event(self, light: bool) -> None:
        ctx = self._measure(self.light_set if light else self.probe_set,
                            self.light_probes if light else self.probes, first=self.n_events == 0 and self.step == 0)
        rows = [(ctx.step, ctx.epoch, p, k, v) for p, k, v in ctx.rows.scalars]
        rows.append((ctx.step, ctx.epoch, "event", "probe_n", len(ctx.probe_set)))
        values = self.recorder.flush(rows, [(ctx.step, name, arr) for name, arr in ctx.rows.arrays],
                                     self.row_epoch)
        self.last_values = values   # (probe, key) -> value of the latest event (the trainer's --select best)
        if not light:
            self._last_event_step = self.step
            if self.step > 0:
                self.cadence.full_events_after_start += 1
        self.n_events += 1
        if not light:
            self._after_full_event(values)   # before the alarm: a roll-back must not be taken as the best
        self._rolled_back = False
        self.alarm.on_event(self.writer, ctx.step, ctx.epoch, values)
        if not light and self.alarm.suspect and self.options.confirm_n > len(self.probe_set):
            values = {**values, **self._confirm()}
        if not light and self.co_guard is not None:
            self.co_guard.observe(self.network, self.optimizer, self.step, self.row_epoch, values,
                                  alarmed=self._rolled_back or self.alarm.alarm is not None,
                                  suspect=self.alarm.suspect)
        if self.options.on_event is not None:
            self.options.on_event({"step": ctx.step, "epoch": ctx.epoch, "light": light,
                                   "values": {f"{p}/{k}": v for (p, k), v in values.items()},
                                   "co_alarm": self.co_alarm, "co_warning": self.co_warning})

    def _measure(self, points: ProbeSet, probes: list, first: bool = False, name: str | None = None) -> ProbeContext:
        """Run ``probes`` on ``points`` now, isolated; failures are counted under the probe's name (or ``name``)."""
        o = self.options
        ctx = ProbeContext(self.view, self.eps, self.step, self.row_epoch, points, self.train_set,
                           attack=self._attack, method=self.method, reference_model=self.reference_model,
                           state=self._probe_state, seed=o.seed, pgd_steps=o.pgd_steps,
                           pgd_alpha=o.pgd_alpha, pgd_random_start=o.pgd_random_start, loss_fn=self._loss_fn)
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
                                               self.normalization, batch_fn=o.batch_fn)
            except Exception as exc:
                if self.strict:
                    raise
                self.recorder.probe_error(self.step, self.row_epoch, CONFIRM, exc)
                points = None
            self._confirm_set = points if points is not None and len(points) > len(self.probe_set) else False
        return self._confirm_set or None

    def _confirm(self) -> dict[tuple[str, str], float]:
        """Measure ``robust_acc`` again on the ``confirm_n`` points, write it as probe ``confirm``, feed the alarm.

        The probe set's sampling error can leave a collapse from a low PGD accuracy a
        few points short of every line at every event (``docs/DETECTOR.md``); four
        times the points halve that error, paid only where an event came near a line.
        """
        probe = next((p for p in self.probes if p.name == "robust_acc"), None)
        cs = None if probe is None else self._confirm_points()
        if cs is None:
            return {}
        points = ProbeSet(cs.x.to(self.device), cs.y.to(self.device), cs.index.to(self.device), cs.source)
        ctx = self._measure(points, [probe], name=CONFIRM)
        rows = [(ctx.step, ctx.epoch, CONFIRM, k, v) for _, k, v in ctx.rows.scalars]
        values = self.recorder.flush(rows + [(ctx.step, ctx.epoch, CONFIRM, "probe_n", len(points))], [],
                                     self.row_epoch)
        self.n_confirmations += 1
        self.alarm.on_event(self.writer, ctx.step, ctx.epoch, values)
        return values


def _weak(method: Callable) -> Callable:
    """``method`` through a weak reference: a hook that does not keep its monitor alive (a no-op once it is gone)."""
    ref = weakref.WeakMethod(method)

    def call(*args: Any, **kwargs: Any) -> Any:
        bound = ref()
        return None if bound is None else bound(*args, **kwargs)

    return call


def _release(hooks: list, recorder: Recorder, pid: int) -> None:
    """A dropped monitor's finalizer: its hooks removed, its run ended "interrupted", its lock released.

    Only in the process that opened the run (a forked child's copy must not end the parent's run).
    """
    if os.getpid() != pid:
        return
    for h in hooks:
        h.remove()
    hooks.clear()
    with contextlib.suppress(Exception):
        recorder.close("interrupted", {})


def _eps(eps: Any) -> float:
    """``eps`` as a float in (0, 1]: a number, a one-element tensor or a fraction such as ``"8/255"``."""
    if isinstance(eps, Tensor) and eps.numel() == 1:
        eps = eps.item()
    if eps is None or isinstance(eps, bool) or not isinstance(eps, (str, numbers.Real)):
        raise UsageError(f"monitor: eps must be the L-inf radius in pixel units (e.g. 8/255 or \"8/255\"), "
                         f"got {eps!r}")
    value = parse_fraction(eps, "monitor: eps")
    if not 0.0 < value <= 1.0:
        raise UsageError(f"monitor: eps must lie in (0, 1] (pixel units, e.g. 8/255), got {eps!r}")
    return value


def _copy_state(value: Any) -> Any:
    """A copy of a probe's state: tensors cloned (detached), containers rebuilt, numbers and strings kept."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, Mapping):
        return {k: _copy_state(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copy_state(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a probe's state between events must hold tensors, numbers, strings, tuples, lists "
                    f"and dicts, not {type(value).__name__}")


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
