"""The shared probe machinery: the ``Probe`` base class, the per-event ``ProbeContext``, the registry.

A *probe* measures one diagnostic of docs/PROBES.md's table at a probe event
and writes rows through the context. Probes never see the training loop: the
monitor builds one :class:`ProbeContext` per event and calls every selected
probe's :meth:`Probe.run` with it.

Side-effect rule (docs/CONVENTIONS.md, "Side-effect freedom"), enforced here and in the
monitor rather than in each probe:

* the monitor puts the model in eval mode for the whole event and restores
  every module's own flag afterwards, so BatchNorm statistics never move and
  dropout draws nothing;
* randomness comes only from :meth:`ProbeContext.generator`, a fresh
  ``torch.Generator`` seeded from ``(seed, purpose)`` at every call, so every
  event uses the same eta and random starts and a curve moves only because the
  model moved (and the order in which probes run does not matter);
* input gradients come from ``codiag.tensors.input_grad``
  (``torch.autograd.grad``): ``param.grad`` is never written and
  ``requires_grad`` flags are left as found;
* autocast is off: gradients, norms and losses are fp32 (docs/CONVENTIONS.md, "Precision").

Results that several probes need (clean gradients, the FGSM, PGD and method
perturbations, the per-sample losses at each) are computed lazily, once per
event, and shared ("one PGD per event serves every probe that needs it").
Values stay on the model's device: :meth:`ProbeContext.log` buffers 0-d
tensors and the monitor moves them to the host together at the end of the
event.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, ClassVar, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codiag import attacks
from codiag.registry import registrar
from codiag.tensors import clamp_to_image, input_grad

from .outputs import Array, Key, Output, declared

#: ``attack(model, x, y, index, generator) -> delta``: the monitor normalises the
#: user's callable to this signature (see ``codiag.monitor``).
AttackFn = Callable[[nn.Module, Tensor, Tensor, Any, torch.Generator], Tensor]


class Probe:
    """Base class of all probes: one small subclass per module under ``probes/``.

    Subclasses set ``name`` (the registry key and the ``probe`` column of
    metrics.csv), ``needs`` (the shared results they use, documentation and
    planning only: ``clean``, ``grads``, ``fgsm``, ``pgd``, ``method``,
    ``train``, ``reference``, ``params``), ``paper`` (the figure they
    reproduce), declare what they write as :class:`Key` and :class:`Array`
    class attributes (``probes/outputs.py``) and implement :meth:`run`. Options come in as keyword
    arguments (``probe_options={"loss_surface": {"grid": 11}}`` on the monitor).
    A probe may keep values between events in ``ctx.state`` (its own dict): tensors, numbers,
    strings, tuples, lists and dicts only, because the monitor saves them in a resumable
    checkpoint (``Monitor.state_dict``) so that a resumed run records every row.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    paper: ClassVar[str] = ""
    #: part of the default probe set (cheap enough for every epoch)
    default: ClassVar[bool] = True

    def __init__(self, **options: Any) -> None:
        if options:
            raise TypeError(f"probe {self.name!r} takes no options {sorted(options)}")

    def run(self, ctx: "ProbeContext") -> None:
        raise NotImplementedError

    @classmethod
    def keys(cls) -> list[Key]:
        """The metric keys this probe declares (class attributes of type :class:`Key`)."""
        return declared(cls, Key)

    @classmethod
    def arrays(cls) -> list[Array]:
        """The arrays this probe declares (class attributes of type :class:`Array`)."""
        return declared(cls, Array)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


PROBES: dict[str, type[Probe]] = {}
register = registrar(PROBES, "probe")


# ---------------------------------------------------------------------------------------------
# small tensor helpers shared by probes
# ---------------------------------------------------------------------------------------------
def per_sample_cos(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Cosine of each sample pair (rows flattened) and a mask of samples where it is defined.

    The cosine is undefined where either vector is zero; those samples are
    masked out (and counted by the caller) instead of being dropped silently
    or set to 1 (docs/CONVENTIONS.md, "grad_align").
    """
    a, b = a.flatten(1).float(), b.flatten(1).float()
    na, nb = a.norm(dim=1), b.norm(dim=1)
    ok = (na > 0) & (nb > 0)
    cos = (a * b).sum(1) / (na * nb).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.where(ok, cos, torch.zeros_like(cos)), ok


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask`` holds (NaN when nothing is left: undefined, not 0)."""
    n = mask.sum()
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return torch.where(n > 0, total / n.clamp_min(1), torch.full_like(total, float("nan")))


def _declared(out: Any, kind: type[Output]) -> Output:
    if not isinstance(out, kind) or not out.probe:
        raise TypeError(f"{out!r} is not a {kind.__name__} declared on a probe class; declare it "
                        f"as a class attribute ({kind.__name__}(doc, name)) of the probe that writes it")
    return out


def _seed_for(seed: int, purpose: str) -> int:
    # A stable (process-independent, unlike hash()) seed per purpose.
    return (int(seed) * 1_000_003 + zlib.crc32(purpose.encode())) % (2**63 - 1)


# ---------------------------------------------------------------------------------------------
# the per-event context
# ---------------------------------------------------------------------------------------------
@dataclass
class ProbeSet:
    """A fixed, un-augmented probe set on the model's device; ``index`` = dataset indices."""

    x: Tensor
    y: Tensor
    index: Tensor | None = None
    source: str = ""

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass
class EventRows:
    """Rows and arrays buffered during one event; values may be device tensors."""

    scalars: list[tuple[str, str, Any]] = field(default_factory=list)
    arrays: list[tuple[str, Any]] = field(default_factory=list)


class ProbeContext:
    """Everything a probe needs at one probe event, with shared results computed once.

    Attributes: ``model`` (in eval mode for the event), ``eps``, ``step``,
    ``epoch``, ``probe_set`` / ``x`` / ``y`` (the fixed test probe set),
    ``train_set`` (the fixed training subset for per-instance probes; the
    probe set when no training data was given), ``attack`` (the method's
    perturbation, normalised to ``attack(model, x, y, index, generator)``;
    FGSM when none was given), ``method`` (the method object or None),
    ``reference_model`` (or None), ``state`` (per-probe dicts kept across
    events), ``seed``, ``loss_fn`` (``(logits, y) -> per-sample loss``, the
    user's ``loss_fn=``; None: cross-entropy). The loss the probes measure and
    differentiate is ``loss_fn``; the probe PGD maximises the cross-entropy, as
    the papers' evaluation does.
    """

    def __init__(self, model: nn.Module, eps: float, step: int, epoch: int, probe_set: ProbeSet,
                 train_set: ProbeSet | None = None, attack: AttackFn | None = None,
                 method: Any = None, reference_model: nn.Module | None = None,
                 state: dict[str, dict[str, Any]] | None = None, seed: int = 0,
                 pgd_steps: int = 10, pgd_alpha: float | None = None,
                 pgd_random_start: bool = True,
                 loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.eps = float(eps)
        self.step = int(step)
        self.epoch = int(epoch)
        self.probe_set = probe_set
        self.train_set = train_set if train_set is not None else probe_set
        self._attack = attack
        self.method = method
        self.reference_model = reference_model
        self.state = state if state is not None else {}
        self.seed = int(seed)
        self.pgd_steps = int(pgd_steps)
        self.pgd_alpha = pgd_alpha
        self.pgd_random_start = bool(pgd_random_start)
        self.rows = EventRows()
        self.device = probe_set.x.device

    # -- plumbing ---------------------------------------------------------------------------
    @property
    def x(self) -> Tensor:
        return self.probe_set.x

    @property
    def y(self) -> Tensor:
        return self.probe_set.y

    def generator(self, purpose: str) -> torch.Generator:
        """A fresh generator on the model's device, seeded from ``(seed, purpose)``.

        Re-created at every call, so every event draws the same numbers for the
        same purpose (the same eta for grad_align, the same random start for
        PGD and the method) whatever the order in which probes run.
        """
        g = torch.Generator(device=self.device)
        g.manual_seed(_seed_for(self.seed, purpose))
        return g

    def probe_state(self, name: str) -> dict[str, Any]:
        """The dict that probe ``name`` keeps across events (weights at the last event, ...)."""
        return self.state.setdefault(name, {})

    def log(self, key: Key, value: Any, **fields: Any) -> None:
        """Buffer one scalar row of a declared ``key`` (a number or a 0-d tensor, left on its device).

        ``fields`` fill in a key pattern (``ctx.log(self.mse, v, param="fc.weight")``).
        Anything but a key declared on a probe class raises: every key a
        probe writes is one that the reports, the detector and the docs know.
        """
        name = _declared(key, Key).format(**fields)
        if isinstance(value, Tensor):
            value = value.detach().reshape(()).float()
        self.rows.scalars.append((key.probe, name, value))

    def save_array(self, array: Array, value: Any, **fields: Any) -> None:
        """Buffer one declared array (written as ``arrays/NAME-STEPxxxxxxx.npy`` at the end of the event)."""
        name = _declared(array, Array).format(**fields)
        if isinstance(value, Tensor):
            value = value.detach()
        self.rows.arrays.append((name, value))

    # -- primitive computations (fp32, eval mode set by the monitor) ------------------------
    def input_grad(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-sample input gradients of the sum-reduced loss (``loss_fn``, default CE), in fp32
        (``codiag.tensors.input_grad``)."""
        return input_grad(self.model, x, y, precision="fp32", loss_fn=self.loss_fn).detach()

    def losses(self, x_adv: Tensor, y: Tensor, model: nn.Module | None = None) -> tuple[Tensor, Tensor]:
        """Per-sample loss (``loss_fn``, default CE) and correctness of ``model`` (default: the monitored one)."""
        with torch.no_grad():
            logits = (model or self.model)(x_adv).float()
            loss = F.cross_entropy(logits, y, reduction="none") if self.loss_fn is None else \
                self.loss_fn(logits, y).reshape(-1).float()
            return loss, logits.argmax(1) == y

    # -- shared results on the probe set (each computed once per event) --------------------
    @cached_property
    def clean(self) -> tuple[Tensor, Tensor]:
        """(per-sample loss, correct) at the clean probe set."""
        return self.losses(self.x, self.y)

    @cached_property
    def clean_grad(self) -> Tensor:
        """grad_x of the per-sample CE at the clean probe set."""
        return self.input_grad(self.x, self.y)

    @cached_property
    def fgsm_delta(self) -> Tensor:
        """delta_FGSM = eps * sign(grad_x L(x)) from zero, x + delta clamped to [0, 1] (GradAlign eq. 2).

        Built from the shared clean gradient; equal to ``codiag.attacks.fgsm``.
        """
        return clamp_to_image(self.x, self.eps * self.clean_grad.sign())

    @cached_property
    def pgd_delta(self) -> Tensor:
        """Probe PGD: Linf, ``pgd_steps`` (10) steps of eps/4, one random start, no early stop.

        The random start comes from ``generator("start")``, the same stream the
        method's perturbation gets, so a method that *is* this PGD reproduces it
        exactly (its strength gap is 0).
        """

        return attacks.pgd(self.model, self.x, self.y, self.eps, alpha=self.pgd_alpha,
                           steps=self.pgd_steps, restarts=1, random_start=self.pgd_random_start,
                           early_stop=False, generator=self.generator("start")).detach()

    @cached_property
    def method_delta(self) -> Tensor:
        """The method's perturbation of the probe set, same random start at every event.

        FGSM (from zero) when the monitor was given no ``attack``. Only clamped
        so that ``x + delta`` lies in [0, 1], not projected to the eps ball:
        it is the perturbation the method trains on (N-FGSM's, for one, is
        larger than eps), and its norms and strength are what the probes report.
        """
        if self._attack is None:
            return self.fgsm_delta
        delta = self._attack(self.model, self.x, self.y, None, self.generator("start"))
        return clamp_to_image(self.x, delta.detach().float())

    @cached_property
    def at_fgsm(self) -> tuple[Tensor, Tensor]:
        return self.losses(self.x + self.fgsm_delta, self.y)

    @cached_property
    def at_pgd(self) -> tuple[Tensor, Tensor]:
        return self.losses(self.x + self.pgd_delta, self.y)

    @cached_property
    def at_method(self) -> tuple[Tensor, Tensor]:
        return self.losses(self.x + self.method_delta, self.y)

    # -- shared results on the training subset ---------------------------------------------
    @cached_property
    def train_start(self) -> Tensor:
        """The method's starting point on the training subset (ATAS: ``x~``, the initialisation).

        Uses ``method.start(model, x, y, index, generator)`` when the method
        offers it (a pure call); otherwise zero, i.e. the clean point, which is
        FGSM's start.
        """
        ts = self.train_set
        start_fn = getattr(self.method, "start", None)
        if callable(start_fn):
            delta = start_fn(self.model, ts.x, ts.y, ts.index, generator=self.generator("start"))
            return clamp_to_image(ts.x, delta.detach().float())
        return torch.zeros_like(ts.x)

    @cached_property
    def train_grad(self) -> Tensor:
        """Per-sample input gradients at the method's starting point on the training subset."""
        ts = self.train_set
        return self.input_grad(ts.x + self.train_start, ts.y)

    @cached_property
    def train_grad_norm(self) -> Tensor:
        """Per-sample L2 norm of :attr:`train_grad` (sum-reduced loss: batch-size independent)."""
        return self.train_grad.flatten(1).norm(dim=1)


def conv_modules(model: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            yield name, module
