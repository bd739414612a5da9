"""Every option of ``codiag.monitor``, typed, with its default and meaning, in one place."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from torch import Tensor, nn

from ..errors import UsageError
from ..integrations.sinks import resolve_sinks

#: the probe events' core probes: the CO alarm reads them, so their failure at step 0 is an error
CORE_PROBES = ("robust_acc", "grad_align")


@dataclass
class MonitorOptions:
    """The keyword options of :func:`codiag.monitor` (``monitor(..., **options)``).

    Model outputs and inputs:

    * ``output_fn``: model output -> logits, for models that return a tuple, a
      dict or an object (``lambda out: out[0]``, ``lambda out: out["logits"]``).
      A model whose output is not a tensor is refused at the step-0 event.
    * ``loss_fn``: ``(logits, y) -> per-sample loss`` used by every probe
      (default: cross-entropy, ``reduction="none"``).
    * ``normalization``: ``(mean, std)`` (scalars or per-channel sequences) when
      the user's loaders yield standardized tensors ``(x - mean) / std``: the
      probe sets are mapped back to pixels (checked to lie in [0, 1]), the
      user's ``attack`` keeps receiving standardized inputs (its delta is mapped
      back to pixels), and ``eps`` stays in pixel units.

    * ``batch_fn``: a dataset item -> ``(x, y)`` for datasets whose items are not
      ``(x, y)`` tuples, e.g. dicts: ``batch_fn=lambda b: (b["image"], b["label"])``
      (Hugging Face ``datasets``). The probe sets are read through it.

    Probe sets (read once at the start, by index, with whatever transform the
    dataset applies, then frozen):

    * ``probe_n`` (256) points of ``probe_data``, ``train_probe_n`` (512) of
      ``train_data``. The alarm reads accuracies on the probe set, so its
      sampling error sets how close to a line a collapse can be caught: with
      small models collapsing from a low PGD accuracy, ``probe_n=1024`` (about
      5x the time per event) caught 51 of 52 labelled collapses of three
      scorecard corpora, with no false alarm (``docs/DETECTOR.md``);
      ``confirm_n`` reads as many points only where an event comes near a line;
    * ``confirm_n`` (1024): when a full event's accuracies come near a line of the
      alarm without crossing it (the detector's ``suspect``: PGD at most 0.1 with
      FGSM ``min_gap`` above it, or PGD past the looser ``pgd_drop_persists``
      line), ``robust_acc`` is measured again at once, at the same step, on
      ``confirm_n`` points of the probe data (selected as the probe set is; rows
      of probe ``confirm``), and the alarm reads that as one more event. It costs
      about five times one event's ``robust_acc``, paid only where a run comes near
      a line; ``0`` (or no more points than ``probe_n``) turns it off;
    * ``probe_select``: ``"first"`` (the first points, default) or
      ``"balanced"`` (class-stratified, deterministic: the first points of each
      class in turn). A probe set holding fewer than half the classes warns.

    Probes and cadence:

    * ``early_events`` (True): light events (the alarm's probes ``robust_acc``
      and ``grad_align`` on the first ``light_n`` = 128 probe points) at steps
      8, 16, 32, ... until the first regular event after step 0, so that a
      collapse inside the first epoch is seen;
    * ``pgd_steps`` / ``pgd_alpha`` / ``pgd_random_start``: the probe PGD
      (10, eps/4, True);
    * ``probe_options``: ``{probe: {option: value}}``;
    * ``method``: the method object (its ``state()`` feeds ``method_state``,
      its ``start()`` the instance gradient norms);
    * ``reference_model``: transfer accuracy of ``strength_gap``;
    * ``seed``: of the probe generators;
    * ``step_update_norms``: record ||theta_t - theta_{t-1}|| after every step.

    Alarm: ``detector`` (True: the default rules; a name from
    ``codiag.detector.DETECTORS``; a detector object; False: none), ``on_co``
    (called once with the alarm dict), ``on_event`` (called after every probe
    event, full or light, with ``{"step", "epoch", "light", "values", "co_alarm", "co_warning"}``:
    ``values`` maps ``"probe/key"`` to the floats just written, a confirming
    measurement's included; ``co_alarm`` is the alarm dict once it fired, else
    None; ``co_warning`` the early warning's once raised (``mon.co_warning``), else None;
    the integrations forward metrics to Lightning, Trainer and Ray Tune with it).

    Saving the run: ``keep_best`` (False): keep the state of the full probe event
    with the highest PGD accuracy, on the CPU, as ``mon.best`` / ``mon.restore_best()``
    and ``checkpoints/best.pt`` (:mod:`.best`; no effect on training); ``guard``
    (None): on the alarm, restore the last healthy state and let the loop mitigate
    (:mod:`.guard`; the one option that changes training; implies ``keep_best``):
    True, a mitigation name, a dict of :class:`~.guard.Guard`'s fields, or a Guard.

    Run directory: ``config`` (recorded in run.json; method, eps, dataset and
    model are filled in from the monitor's arguments where it does not give
    them), ``resume`` (continues a run with its own eps, probes, options and
    config, else refused naming what differs; give the probes' state back with
    ``mon.load_state_dict``), ``overwrite``, ``strict`` (re-raise every probe
    error instead of counting it).

    Trackers: ``sinks`` (``["tensorboard", "wandb", "mlflow"]`` or objects with
    ``log(step, rows)``, ``event(kind, fields)``, ``close(status)``;
    :mod:`codiag.integrations.sinks`): every row mirrored as ``codiag/<probe>/<key>``
    at its step, the alarm and warnings as alerts, tags or text entries, the HTML
    report logged at close. A sink's failure is counted, never raised.
    """

    output_fn: Callable[[Any], Tensor] | None = None
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None
    normalization: tuple[Any, Any] | None = None
    batch_fn: Callable[[Any], Any] | None = None
    probe_n: int = 256
    train_probe_n: int = 512
    confirm_n: int = 1024
    probe_select: str = "first"
    early_events: bool = True
    light_n: int = 128
    pgd_steps: int = 10
    pgd_alpha: float | None = None
    pgd_random_start: bool = True
    probe_options: Mapping[str, Mapping[str, Any]] | None = None
    method: Any = None
    reference_model: nn.Module | None = None
    seed: int = 0
    step_update_norms: bool = False
    detector: Any = True
    on_co: Callable[[dict[str, Any]], Any] | None = None
    on_event: Callable[[dict[str, Any]], Any] | None = None
    keep_best: bool = False
    guard: Any = None
    config: Mapping[str, Any] = field(default_factory=dict)
    resume: bool = False
    overwrite: bool = False
    sinks: Sequence[Any] = ()
    strict: bool = False

    def __post_init__(self) -> None:
        for name in ("probe_n", "train_probe_n", "light_n", "pgd_steps"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"monitor: {name} must be a positive integer, got {getattr(self, name)}")
        if int(self.confirm_n) < 0:
            raise UsageError(f"monitor: confirm_n must be 0 (off) or a number of points, got {self.confirm_n}")
        if self.resume and self.overwrite:   # at construction: long before anything could be deleted
            raise UsageError("monitor: resume=True continues a run and overwrite=True deletes it: pass one of them")
        if self.probe_select not in ("first", "balanced"):
            raise UsageError(f"monitor: probe_select must be 'first' or 'balanced', got {self.probe_select!r}")
        for name in ("output_fn", "loss_fn", "batch_fn", "on_co", "on_event"):
            if getattr(self, name) is not None and not callable(getattr(self, name)):
                raise UsageError(f"monitor: {name} must be callable")
        if self.normalization is not None and (not isinstance(self.normalization, Sequence)
                                               or len(self.normalization) != 2):
            raise UsageError("monitor: normalization must be (mean, std), scalars or per-channel")
        self.config = dict(self.config or {})
        self.sinks = resolve_sinks(self.sinks)

    @classmethod
    def from_kwargs(cls, options: Mapping[str, Any]) -> "MonitorOptions":
        """The options from ``monitor(**options)``; an unknown name is a one-line UsageError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise UsageError(f"monitor: unknown option(s) {', '.join(unknown)}; "
                             f"options are {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in options.items() if not (k == "config" and v is None)})
