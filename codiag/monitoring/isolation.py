"""Isolation of probe events from training: RNGs, modes, buffers, and the model the probes see.

Everything a probe event does must leave training bit-identical (docs/CONVENTIONS.md "Side-effect
freedom"). Probes themselves run in eval mode and draw only from their own generators;
what is left is user code called from an event (the user's ``attack``, a method's
``start``), which may flip modes, update BatchNorm statistics or draw from the global
RNG. :class:`ModuleState` snapshots every buffer and every module's mode before such a
call and restores them after it, and :func:`wrap_attack` puts the user's attack behind
that guard with the attack protocol ``attack(model, x, y)``.
"""
from __future__ import annotations

import contextlib
import inspect
import warnings
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError
from ..tensors import isolated_rng


def model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The module a ``torch.compile``d model wraps (probes run it eagerly: no recompiles, plain names)."""
    while isinstance(getattr(model, "_orig_mod", None), nn.Module):
        model = model._orig_mod
    return model


class ModuleState:
    """A snapshot of every module's mode and every buffer of ``model`` (BatchNorm statistics included).

    ``restore()`` puts both back exactly (buffers by an in-place copy, so the
    tensors the user holds stay the same objects); ``modes_changed()`` says
    whether any module's mode differs from the snapshot.
    """

    def __init__(self, model: nn.Module) -> None:
        self.modes = [(m, m.training) for m in model.modules()]
        with torch.no_grad():
            self.buffers = [(b, b.detach().clone()) for b in model.buffers()]

    def modes_changed(self) -> bool:
        return any(m.training != flag for m, flag in self.modes)

    def restore(self) -> None:
        for m, flag in self.modes:
            m.training = flag
        with torch.no_grad():
            for b, saved in self.buffers:
                if b.shape != saved.shape:   # a module resized its own buffer: put the old one back
                    b.set_(saved.clone())
                else:
                    b.copy_(saved)


class UserCallGuard:
    """Runs user code from inside a probe event and undoes what it did to the model.

    After each call every buffer and every module's mode are restored; the first
    call that changed a mode warns once (the user's attack calls
    ``model.train()`` / ``model.eval()`` itself, which is common and harmless here).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.warned = False

    @contextlib.contextmanager
    def call(self, what: str) -> Iterator[None]:
        state = ModuleState(self.model)
        try:
            yield
        finally:
            changed = state.modes_changed()
            state.restore()
            if changed and not self.warned:
                self.warned = True
                warnings.warn(f"codiag.monitor: {what} changed the model's train/eval mode during a probe "
                              "event; the monitor restored every module's mode and every buffer "
                              "(BatchNorm statistics) after the call", RuntimeWarning, stacklevel=4)


def _as_stats(value: Any, x: Tensor) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float32, device=x.device)
    if t.ndim == 1 and x.ndim >= 2:   # per channel
        t = t.reshape(1, -1, *([1] * (x.ndim - 2)))
    return t


class Normalization:
    """The user's standardization ``(x - mean) / std`` and its inverse (identity when None)."""

    def __init__(self, spec: Sequence[Any] | None) -> None:
        self.spec = None if spec is None else (spec[0], spec[1])

    def to_user(self, x: Tensor) -> Tensor:
        if self.spec is None:
            return x
        return (x - _as_stats(self.spec[0], x)) / _as_stats(self.spec[1], x)

    def to_pixels(self, x: Tensor) -> Tensor:
        if self.spec is None:
            return x
        return x * _as_stats(self.spec[1], x) + _as_stats(self.spec[0], x)

    def delta_to_pixels(self, delta: Tensor) -> Tensor:
        return delta if self.spec is None else delta * _as_stats(self.spec[1], delta)

    def describe(self) -> Any:
        return None if self.spec is None else [torch.as_tensor(v).tolist() for v in self.spec]


def default_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample cross-entropy (the default ``loss_fn``)."""
    return F.cross_entropy(logits, y, reduction="none")


def per_sample_loss(loss_fn: Callable[[Tensor, Tensor], Tensor] | None) -> Callable[[Tensor, Tensor], Tensor] | None:
    """The user's ``loss_fn``, refusing a result that is not one loss per sample.

    A reduced (scalar) loss would pass every probe with wrong values: per-instance
    gradient norms 1/N of the right ones. A UsageError at the step-0 event instead
    (a shape check: no host synchronisation).
    """
    if loss_fn is None:
        return None

    def checked(logits: Tensor, y: Tensor) -> Tensor:
        out = loss_fn(logits, y)
        if not isinstance(out, Tensor) or out.ndim != 1 or out.shape[0] != logits.shape[0]:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise UsageError(f"loss_fn returned {shape}, not one loss per sample ({logits.shape[0]},): it must "
                             "not reduce, e.g. loss_fn=lambda logits, y: F.cross_entropy(logits, y, "
                             "reduction='none')")
        return out

    return checked


class ProbeModel(nn.Module):
    """The module probes see: pixel inputs in [0, 1] -> logits, of the user's (uncompiled) network.

    It shares the network's parameters, buffers and children (so
    ``named_parameters()`` and ``named_modules()`` give the network's own names)
    and applies, around the network's forward, the user's ``normalization`` and
    ``output_fn``. A forward whose result is not a tensor is refused with a
    one-line error naming ``output_fn``.
    """

    def __init__(self, network: nn.Module, output_fn: Callable[[Any], Tensor] | None = None,
                 normalization: Normalization | None = None) -> None:
        super().__init__()
        object.__setattr__(self, "_parameters", network._parameters)
        object.__setattr__(self, "_buffers", network._buffers)
        object.__setattr__(self, "_modules", network._modules)
        object.__setattr__(self, "network", network)
        object.__setattr__(self, "output_fn", output_fn)
        object.__setattr__(self, "normalization", normalization or Normalization(None))

    def train(self, mode: bool = True) -> "ProbeModel":
        self.network.train(mode)
        self.training = mode
        return self

    def forward(self, x: Tensor) -> Tensor:
        out = self.network(self.normalization.to_user(x))
        if self.output_fn is not None:
            out = self.output_fn(out)
        if not isinstance(out, Tensor):
            raise UsageError(f"the model returned {type(out).__name__}, not a tensor of logits: pass "
                             f"output_fn= (model output -> logits), e.g. output_fn={_output_hint(out)}")
        return out


def _output_hint(out: Any) -> str:
    """The ``output_fn`` that picks the logits out of ``out``, written for its kind (dict, tuple, object)."""
    if isinstance(out, Mapping):
        keys = [k for k, v in out.items() if isinstance(v, Tensor)]
        key = next((k for k in keys if "logit" in str(k).lower()), keys[0] if keys else "logits")
        return f"lambda out: out[{key!r}]" + (f" (its keys: {', '.join(map(repr, out))})" if len(out) > 1 else "")
    if isinstance(out, (tuple, list)):
        return "lambda out: out[0]"
    if isinstance(getattr(out, "logits", None), Tensor):
        return "lambda out: out.logits"
    return "a function returning the logits tensor"


def _names(fn: Callable, name: str) -> bool:
    """Whether ``fn``'s signature names parameter ``name`` (``**kwargs`` does not count)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    p = params.get(name)
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def wrap_attack(attack: Callable | None, network: nn.Module, device: torch.device,
                normalization: Normalization, guard: UserCallGuard) -> Callable | None:
    """The user's ``attack(model, x, y)`` as ``f(model, x, y, index, generator) -> pixel delta``.

    The attack protocol: the attack is called as ``attack(network, x, y)`` with the
    user's own (uncompiled) network and inputs in the user's space (standardized
    when ``normalization`` is given); ``index=`` and ``generator=`` are passed only
    as keywords and only when the attack's signature names them. With
    ``generator=`` codiag methods make a pure probe call; without it the attack
    runs with the global RNG seeded from the event generator inside
    :func:`isolated_rng`, so it draws the same numbers at every event and leaves
    the user's RNG state as it was. Every buffer and mode is restored after the
    call (:class:`UserCallGuard`). The ``model`` argument of the returned function
    is ignored: the user's attack always gets the user's network.
    """
    if attack is None:
        return None
    with_index, with_gen = _names(attack, "index"), _names(attack, "generator")
    what = f"attack {getattr(attack, '__qualname__', type(attack).__name__)}"

    def call(model: nn.Module, x: Tensor, y: Tensor, index: Any, generator: torch.Generator) -> Tensor:
        kwargs: dict[str, Any] = {}
        if with_index:
            kwargs["index"] = index
        if with_gen:
            kwargs["generator"] = generator
        x_user = normalization.to_user(x)
        with guard.call(what), contextlib.ExitStack() as stack:
            if not with_gen:
                stack.enter_context(isolated_rng(device, seed=int(generator.initial_seed()) % (2**63 - 1)))
            try:
                delta = attack(network, x_user, y, **kwargs)
            except UsageError:
                raise
            except Exception as exc:
                raise UsageError(f"{what} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                                 f" (codiag calls attack(model, x, y), passing index= and generator= "
                                 "only as keywords the attack names)") from exc
        if not isinstance(delta, Tensor):
            raise UsageError(f"{what} returned {type(delta).__name__}; it must return the perturbation "
                             "delta as a tensor shaped like x")
        return normalization.delta_to_pixels(delta.detach().float())

    return call
