"""Resumable training state: what a run needs to continue bit for bit after a crash.

``codiag train`` writes ``checkpoints/resume.pt`` at the end of every epoch (temporary file,
then rename): model, optimizer, the method's state (its generators, per-sample stores,
adapted step sizes, roll-back snapshots), every RNG (torch CPU and CUDA, Python, NumPy) and
the data loader's position (its epoch: each epoch's order and augmentation come from a
generator seeded by (seed, epoch)), with the step and epoch counts. ``--resume`` loads it
and continues; the learning-rate schedule is a function of the epoch, so it resumes too.

Everything is stored in types that ``torch.load(..., weights_only=True)`` reads (tensors,
numbers, strings, lists, dicts), so loading a checkpoint never runs pickled code. Objects
are encoded by :func:`encode` as tagged dicts: a ``torch.Generator`` as its device and
state, a NumPy array as a tensor, a codiag object (a per-sample store) as its class path
and attributes, a ``torch.optim`` optimizer as its class, its parameters (by the name of
the attribute holding each) and its state dict.
"""
from __future__ import annotations

import io
import random
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import atomic

CHECKPOINT_VERSION = 2
RESUME_FILE = "resume.pt"


class CheckpointError(ValueError):
    """A checkpoint that names something codiag does not rebuild, or is not shaped as codiag writes it."""


# ------------------------------------------------------------------------------------- the allow-list
def _name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _class_path(obj: Any) -> str:
    return _name(type(obj))


#: the optimizer classes ``torch.optim`` exports, by exact name (``torch.optim.sgd:SGD``)
_OPTIMIZERS: dict[str, type] = {
    _name(c): c for c in vars(torch.optim).values()
    if isinstance(c, type) and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer}
#: codiag classes whose instances a checkpoint may hold (see :func:`checkpointable`)
_OBJECTS: dict[str, type] = {}


def checkpointable(cls: type) -> type:
    """Class decorator: instances of ``cls`` (plain attribute holders) may be stored in and
    rebuilt from a checkpoint. Only registered classes are ever rebuilt."""
    _OBJECTS[_name(cls)] = cls
    return cls


def _allowed(table: dict[str, type], name: Any, what: str) -> type:
    cls = table.get(name) if isinstance(name, str) else None
    if cls is None:
        raise CheckpointError(f"it names {what} {str(name)[:80]!r}, which codiag does not rebuild")
    return cls


def encode(value: Any, params: dict[int, str] | None = None, where: str = "value") -> Any:
    """``value`` in weights-only types; ``params`` names the tensors an optimizer may hold."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.array(value, copy=True))}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Generator):
        return {"__generator__": str(value.device), "state": value.get_state()}
    if isinstance(value, torch.device):
        return {"__device__": str(value)}
    if isinstance(value, (deque, tuple, set, frozenset, list, dict)):
        return _encode_container(value, params, where)
    if isinstance(value, torch.optim.Optimizer):
        return _encode_optimizer(value, params, where)
    if _OBJECTS.get(_class_path(value)) is type(value):
        return {"__object__": _class_path(value), "vars": encode(vars(value), params, where)}
    raise TypeError(f"cannot checkpoint {where} of type {type(value).__name__}")


def _encode_container(value: Any, params: dict[int, str] | None, where: str) -> Any:
    items = [encode(v, params, where) for v in value] if not isinstance(value, dict) else []
    if isinstance(value, deque):
        return {"__deque__": items, "maxlen": value.maxlen}
    if isinstance(value, tuple):
        return {"__tuple__": items}
    if isinstance(value, (set, frozenset)):
        return {"__set__": items}
    if isinstance(value, list):
        return items
    return {"__dict__": [[encode(k, params, where), encode(v, params, f"{where}[{k!r}]")]
                         for k, v in value.items()]}


def _encode_optimizer(opt: torch.optim.Optimizer, params: dict[int, str] | None, where: str) -> dict[str, Any]:
    if _OPTIMIZERS.get(_class_path(opt)) is not type(opt):
        raise TypeError(f"cannot checkpoint {where}: {type(opt).__name__} is not an optimizer of torch.optim")
    names = []
    for group in opt.param_groups:
        for p in group["params"]:
            if params is None or id(p) not in params:
                raise TypeError(f"cannot checkpoint {where}: an optimizer over a tensor that is "
                                "not an attribute of its owner")
            names.append(params[id(p)])
    return {"__optimizer__": _class_path(opt), "params": names, "defaults": encode(opt.defaults),
            "state": opt.state_dict()}


def decode(value: Any, owner: Any = None) -> Any:
    """The inverse of :func:`encode`; optimizers are rebuilt over ``owner``'s attributes."""
    if isinstance(value, list):
        return [decode(v, owner) for v in value]
    if not isinstance(value, dict):
        return value
    if "__ndarray__" in value:
        return value["__ndarray__"].numpy()
    if "__generator__" in value:
        gen = torch.Generator(device=value["__generator__"])
        gen.set_state(value["state"].cpu())
        return gen
    if "__device__" in value:
        return torch.device(value["__device__"])
    if "__deque__" in value:
        return deque((decode(v, owner) for v in value["__deque__"]), maxlen=value["maxlen"])
    if "__tuple__" in value:
        return tuple(decode(v, owner) for v in value["__tuple__"])
    if "__set__" in value:
        return {decode(v, owner) for v in value["__set__"]}
    if "__dict__" in value:
        return {decode(k, owner): decode(v, owner) for k, v in value["__dict__"]}
    if "__optimizer__" in value:
        return _decode_optimizer(value, owner)
    if "__object__" in value:
        cls = _allowed(_OBJECTS, value["__object__"], "the class")
        attrs = decode(value.get("vars"), owner)
        if not isinstance(attrs, dict) or not all(_attribute_name(k) for k in attrs):
            raise CheckpointError(f"its {cls.__name__} record is not a set of attributes")
        obj = cls.__new__(cls)
        obj.__dict__.update(attrs)
        return obj
    raise CheckpointError(f"unknown record in a checkpoint: {sorted(map(str, value))[:5]}")


def _attribute_name(key: Any) -> bool:
    return isinstance(key, str) and key.isidentifier() and not key.startswith("__")


def _decode_optimizer(value: dict[str, Any], owner: Any) -> torch.optim.Optimizer:
    cls = _allowed(_OPTIMIZERS, value["__optimizer__"], "the optimizer")
    names, defaults = value.get("params"), decode(value.get("defaults"))
    if not isinstance(names, list) or not all(
            _attribute_name(n) and isinstance(vars(owner).get(n) if hasattr(owner, "__dict__") else None,
                                              torch.Tensor) for n in names):
        raise CheckpointError(f"its {cls.__name__} names parameters that are not tensors of their owner")
    if not isinstance(defaults, dict) or not all(_attribute_name(k) for k in defaults):
        raise CheckpointError(f"its {cls.__name__} settings are not a set of options")
    try:
        opt = cls([vars(owner)[n] for n in names], **defaults)
        opt.load_state_dict(value["state"])
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"its {cls.__name__} does not rebuild: {str(e).splitlines()[0] if str(e) else e!r}") \
            from None
    return opt


def _has_optimizer(value: Any) -> bool:
    if isinstance(value, dict):
        return "__optimizer__" in value or any(_has_optimizer(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_optimizer(v) for v in value)
    return False


def encode_attributes(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every attribute of ``obj`` except ``skip``, encoded (see :func:`encode`)."""
    attrs = {k: v for k, v in vars(obj).items() if k not in skip}
    params = {id(v): k for k, v in attrs.items() if isinstance(v, torch.Tensor)}
    name = type(obj).__name__
    return {k: encode(v, params, f"{name}.{k}") for k, v in attrs.items()}


def decode_attributes(obj: Any, state: dict[str, Any]) -> None:
    """Set ``obj``'s attributes from :func:`encode_attributes`' output (optimizers last)."""
    bad = [k for k in state if not _attribute_name(k)]
    if bad:
        raise CheckpointError(f"it sets {str(bad[0])[:40]!r}, which is not an attribute name")
    for key in sorted(state, key=lambda k: _has_optimizer(state[k])):
        setattr(obj, key, decode(state[key], obj))


# ------------------------------------------------------------------------------------- RNGs
def rng_state() -> dict[str, Any]:
    """Every global RNG: torch CPU, each CUDA device, Python's, NumPy's."""
    return {"torch": torch.get_rng_state(),
            "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
            "python": encode(random.getstate()), "numpy": encode(np.random.get_state())}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    random.setstate(decode(state["python"]))
    np.random.set_state(decode(state["numpy"]))


# ------------------------------------------------------------------------------------- files
def save(state: dict[str, Any], path: str | Path, inside: str | Path | None = None) -> None:
    """``torch.save`` to memory, then an atomic write: a full disk leaves no partial file."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic.write_bytes(path, buf.getbuffer().tobytes(), inside=inside)


def load(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``: a checkpoint never runs pickled code."""
    return torch.load(path, map_location=map_location, weights_only=True)
