"""The shared method interface, the registry, and small helpers every method uses.

A *method* turns a clean batch into a training loss. It has two halves that a
user's own loop can call separately::

    delta = method.perturb(model, x, y, index)   # detached; x + delta in [0, 1]
    loss = method.loss(model, x, y, delta)        # CE at x + delta, plus any regulariser

and ``method.train_step(model, optimizer, x, y, index)`` does both, then
``zero_grad / backward / step``; methods whose step is not "perturb, loss,
backward, step" (Free-m replay, APART's ascent on its step sizes, gradient
clipping) override it, so a trainer only ever calls ``train_step``.

Conventions shared by all methods (docs/CONVENTIONS.md):

* ``eps`` is the L-inf radius in pixel units; inputs live in [0, 1] and every
  perturbed input is clamped to [0, 1].
* Training perturbations run in the model's current mode (train mode during
  training, so BatchNorm sees the perturbation forward pass as in the papers'
  reference code) and under the caller's autocast, for speed. They are *not*
  ``codiag.attacks``, which are fp32 and eval mode by design (probes/evaluation).
* Input gradients are taken with ``torch.autograd.grad`` on the **sum**-reduced
  cross entropy, so a sample's gradient does not depend on the batch size and
  ``param.grad`` is never written by ``perturb``.
* Randomness comes only from the method's own ``torch.Generator`` (one per
  device, seeded from the ``seed`` hparam), never from the global RNG.
* **Probe calls**: ``perturb(..., generator=g)`` with a generator is a *pure*
  call: randomness comes from ``g``, and no per-sample state (ATTA/ATAS/APART
  buffers, ATAS's moving averages, the method's generator) is read-modified-
  written. The monitor must pass its own generator so that monitored and
  unmonitored runs stay bit-identical (docs/CONVENTIONS.md, "Side-effect freedom"). Calls with
  ``index=None`` never write per-sample state either.
"""
from __future__ import annotations

import contextlib
from typing import Any, ClassVar, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import CheckpointError, decode_attributes, encode, encode_attributes
from ..errors import UsageError
from ..registry import registrar
from ..tensors import clamp_to_image, input_grad
from .checks import COMMON_CHECKS, Check, inferred

StateValue = float | np.ndarray

METHODS: dict[str, type["Method"]] = {}
register = registrar(METHODS, "method")


def get_method(name: str, eps: float, **hparams: Any) -> "Method":
    """Build the method registered as ``name`` (e.g. ``"zerograd"``) for radius ``eps``.

    ``hparams`` override the method's defaults (``Method.defaults``); ``seed``
    and ``num_samples`` (the training-set size, for per-sample state) are
    accepted by every method. Unknown names and hparams raise ``UsageError``.
    """
    key = name.strip().lower().replace("-", "_")
    if key not in METHODS:
        raise UsageError(f"unknown method {name!r}; choose from {', '.join(sorted(METHODS))}")
    return METHODS[key](eps, **hparams)


def check_method(name: str, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``hparams`` of the method registered as ``name`` without building it (UsageError)."""
    key = name.strip().lower().replace("-", "_")
    if key not in METHODS:
        raise UsageError(f"unknown method {name!r}; choose from {', '.join(sorted(METHODS))}")
    return METHODS[key].check_hparams(hparams)


class Method:
    """Base class of all training methods (see the module docstring for the contract).

    Subclasses set ``name`` (registry key), ``defaults`` (hparam -> paper default;
    each becomes an attribute), ``checks`` (hparam -> its type and range, see
    ``checks.py``; run on every value before anything is built) and override
    :meth:`perturb` and, if they add a regulariser, :meth:`loss`.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    checks: ClassVar[dict[str, Check]] = {}
    #: hparams that only matter for some runs and are not errors to pass to any method
    common: ClassVar[dict[str, Any]] = {"seed": 0, "num_samples": None, "epochs": None}

    def __init__(self, eps: float, **hparams: Any) -> None:
        eps = float(eps)
        if not 0.0 <= eps <= 1.0:
            raise UsageError(f"eps must lie in [0, 1] (pixel units), got {eps}")
        self.eps = eps
        self.hparams: dict[str, Any] = self.check_hparams(hparams)
        for key, value in self.hparams.items():
            setattr(self, key, value)
        self.seed: int = int(self.hparams["seed"])
        self.epoch = 0
        self._generators: dict[torch.device, torch.Generator] = {}
        self._pure = False  # True inside a probe call (generator given): no state writes

    @classmethod
    def _all_defaults(cls) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            merged.update(getattr(klass, "defaults", {}) or {})
        return merged

    @classmethod
    def all_checks(cls) -> dict[str, Check]:
        """Every option's check: declared ones (subclasses override their bases), else inferred."""
        merged: dict[str, Check] = dict(COMMON_CHECKS)
        for klass in reversed(cls.__mro__):
            merged.update(getattr(klass, "checks", {}) or {})
        for key, default in cls._all_defaults().items():
            if key not in merged and inferred(default) is not None:
                merged[key] = inferred(default)  # type: ignore[assignment]
        return merged

    @classmethod
    def check_hparams(cls, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """The defaults with ``hparams`` on top, each value checked and in its canonical type.

        Raises UsageError (one line: method, option, accepted values, value given) for an
        unknown option or a value of the wrong type or range.
        """
        allowed = {**cls.common, **cls._all_defaults()}
        unknown = sorted(set(hparams) - set(allowed))
        if unknown:
            raise UsageError(f"method {cls.name!r} has no option(s) {', '.join(unknown)}; "
                             f"options: {', '.join(sorted(cls._all_defaults())) or 'none'}")
        merged = {**allowed, **hparams}
        checks = cls.all_checks()
        for key, value in merged.items():
            if key in checks:
                try:
                    merged[key] = checks[key](value)
                except ValueError as e:
                    raise UsageError(f"method {cls.name!r}: {key} {e}, got {value!r}") from None
        return merged

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items() if k != "num_samples")
        return f"{type(self).__name__}(eps={self.eps:.6g}, {hp})"

    # ------------------------------------------------------------------ randomness
    def generator(self, device: torch.device | str) -> torch.Generator:
        """The method's own generator on ``device`` (created and seeded on first use)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        gen = self._generators.get(device)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            self._generators[device] = gen
        return gen

    @contextlib.contextmanager
    def _call(self, generator: torch.Generator | None, device: torch.device) -> Iterator[torch.Generator]:
        """Yield the generator for one ``perturb`` call and mark pure (probe) calls."""
        if generator is None:
            yield self.generator(device)
            return
        was, self._pure = self._pure, True
        try:
            yield generator
        finally:
            self._pure = was

    def writes_state(self, index: Any) -> bool:
        """True when this call may update per-sample state (a training call with indices)."""
        return index is not None and not self._pure

    # ------------------------------------------------------------------ interface
    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
                generator: torch.Generator | None = None) -> Tensor:
        """Return the training perturbation ``delta`` (detached, ``x + delta`` in [0, 1])."""
        raise NotImplementedError

    #: what the probes see instead of the method's training perturbation when they cannot see that
    #: one (it exists only for training samples, or belongs to another batch); "" when they see it.
    #: Recorded in run.json and shown on the report page.
    probe_stand_in: ClassVar[str] = ""

    #: where the cyclic learning rate peaks, as a fraction of training, in the paper's code: 2/5 in
    #: GradAlign's ``utils.get_lr_schedule``; 1/2 in Wong et al.'s, ZeroGrad's, N-FGSM's and APART's
    #: ``CyclicLR(step_size_up=lr_steps / 2)``. The trainer's default for ``--lr-peak``.
    lr_peak: ClassVar[float] = 0.4

    #: whether :meth:`train_step` takes several optimizer steps (Free-m's replays): the trainer then
    #: holds the probe events due inside a batch to its end, the first state training can go on from
    several_steps: ClassVar[bool] = False

    #: radius (in eps) of the uniform random start, or the name of the hparam that holds it;
    #: 0 means the method starts at the clean input
    start_radius: ClassVar[float | str] = 0.0

    def start(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
              generator: torch.Generator | None = None) -> Tensor:
        """The method's starting point ``delta0`` for ``x`` (a pure call when ``generator`` is given).

        Used by the ``instance_grad_norm`` probe (ATAS Sec. III: the gradient at
        the initialisation). It draws from the generator exactly what
        :meth:`perturb` draws first, so both see the same start.
        """
        radius = self._start_radius()
        if radius == 0:
            return torch.zeros_like(x)
        with self._call(generator, x.device) as gen:
            return clamp_to_image(x, uniform_like(x, radius * self.eps, gen))

    def _start_radius(self) -> float:
        r = self.start_radius
        return float(getattr(self, r) if isinstance(r, str) else r)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, delta: Tensor) -> Tensor:
        """Training loss: mean cross entropy at ``x + delta`` (plus a regulariser in subclasses)."""
        return F.cross_entropy(model(x + delta), y)

    def train_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
                   index: Any = None) -> Tensor:
        """One optimizer step: perturb, loss, ``zero_grad``, backward, step. Returns the loss (detached)."""
        delta = self.perturb(model, x, y, index)
        loss = self.loss(model, x, y, delta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.before_step(model, optimizer)
        optimizer.step()
        return loss.detach()

    #: attributes that are references into the trainer's objects, set again at every step
    transient: ClassVar[tuple[str, ...]] = ()
    #: options that only the live configuration sets (file locations): never saved in or
    #: taken from a checkpoint, whose content is data from wherever the run directory came from
    from_config: ClassVar[tuple[str, ...]] = ()

    def state_dict(self) -> dict[str, Any]:
        """Everything the method carries from step to step (its generators, per-sample stores,
        adapted step sizes, snapshots), for a resumable checkpoint; ``torch.load(...,
        weights_only=True)`` reads it back (``codiag.checkpoint``)."""
        state = encode_attributes(self, skip=self.transient + self.from_config)
        if self.from_config and "hparams" in state:
            state["hparams"] = encode({k: v for k, v in self.hparams.items() if k not in self.from_config})
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output into a method built with the same options;
        the ``from_config`` options keep their live values, whatever the state says."""
        live = {k: getattr(self, k) for k in self.from_config}
        decode_attributes(self, {k: v for k, v in state.items() if k not in self.from_config})
        if not isinstance(self.hparams, dict):
            raise CheckpointError("its method options are not a set of options")
        for key, value in live.items():
            setattr(self, key, value)
            self.hparams[key] = value

    def before_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called between ``backward`` and ``optimizer.step()`` (gradient clipping acts here)."""

    def state(self) -> dict[str, StateValue]:
        """Internal quantities for the ``method_state`` probe (scalars or numpy arrays)."""
        return {}

    def on_epoch_start(self, epoch: int) -> None:
        """Called by the trainer before each epoch (0-based)."""
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                     co_detected: Any = False) -> bool:
        """Called by the trainer after ``mon.epoch_end()``; returns True if it rolled back.

        ``co_detected`` is a bool or an object with a ``co_detected`` attribute
        (the monitor). Only ZeroGrad roll-back acts on it.
        """
        return False


# ---------------------------------------------------------------------- helpers
def co_flag(co_detected: Any) -> bool:
    """Read a CO signal given as a bool or as a monitor with ``.co_detected``."""
    if hasattr(co_detected, "co_detected"):
        co_detected = co_detected.co_detected
    return bool(co_detected)


def uniform_like(x: Tensor, radius: float, generator: torch.Generator) -> Tensor:
    """U[-radius, radius]^d noise of ``x``'s shape (fp32), from ``generator``."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32)
    return (u * 2 - 1).mul_(radius).to(x.dtype)


def per_sample_norm(t: Tensor) -> Tensor:
    """L2 norm of each sample (first dimension) of ``t``, in fp32."""
    return t.float().flatten(1).norm(dim=1)


def fgsm_step(model: nn.Module, x: Tensor, y: Tensor, start: Tensor, step: float, eps: float | None
              ) -> Tensor:
    """One signed-gradient step of size ``step`` from ``start``; projected to eps if ``eps`` is set."""
    grad = input_grad(model, x + start, y, precision="autocast")
    delta = start + step * grad.sign()
    if eps is not None:
        delta = delta.clamp(-eps, eps)
    return clamp_to_image(x, delta).detach()


def as_index(index: Any) -> Tensor | None:
    """Dataset indices from ``index`` (a LongTensor or a SampleMeta); None stays None."""
    if index is None or isinstance(index, Tensor):
        return index
    if isinstance(getattr(index, "index", None), Tensor):
        return index.index
    return torch.as_tensor(index)

