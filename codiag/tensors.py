"""Tensor helpers shared by attacks, methods and probes: one home for each.

* :func:`eval_mode`: eval mode for a block, every module's own flag restored
  afterwards (not just the root's), so BatchNorm statistics never move and a
  caller who froze some layers gets exactly that state back;
* :func:`isolated_rng`: the global RNGs (torch CPU, one CUDA device, Python,
  NumPy) saved and restored around a block;
* :func:`clamp_to_image` and :func:`project`: a perturbation shrunk so that
  ``x + delta`` lies in the input box [0, 1], after projection onto the
  L-inf eps ball (the papers' ``clamp(delta, -eps, eps)`` then
  ``clamp(delta, -x, 1 - x)``);
* :func:`input_grad`: grad_x of the cross entropy through
  ``torch.autograd.grad`` (``param.grad`` is never written), with the
  precision an explicit argument: ``"fp32"`` for probes and evaluation (norms
  and losses are not scale-invariant), ``"autocast"`` for training
  perturbations, which follow the user's mixed precision as the papers'
  training code does.
"""
from __future__ import annotations

import contextlib
import random
from typing import Callable, Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

Precision = Literal["fp32", "autocast"]

__all__ = ["Precision", "clamp_to_image", "eval_mode", "input_grad", "isolated_rng", "project"]


@contextlib.contextmanager
def eval_mode(*models: nn.Module | None, enabled: bool = True) -> Iterator[None]:
    """Put ``models`` (None entries skipped) in eval mode for the block; restore each module's flag."""
    models = tuple(m for m in models if m is not None) if enabled else ()
    saved = [(m, m.training) for model in models for m in model.modules()]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for module, flag in saved:
            module.training = flag


@contextlib.contextmanager
def isolated_rng(device: torch.device | None = None, seed: int | None = None) -> Iterator[None]:
    """Save and restore the global RNGs (torch CPU, ``device``'s CUDA generator, Python, NumPy).

    With ``seed``, the torch generators are seeded inside (the CPU one and
    only that CUDA device: ``torch.manual_seed`` would reseed every GPU).
    """
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device is not None and device.type == "cuda" else []
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=cuda):
            if seed is not None:
                torch.random.default_generator.manual_seed(seed)
                for d in cuda:
                    with torch.cuda.device(d):
                        torch.cuda.manual_seed(seed)
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def clamp_to_image(x: Tensor, delta: Tensor) -> Tensor:
    """Shrink ``delta`` so that ``x + delta`` lies in [0, 1] (inputs live in [0, 1])."""
    return torch.clamp(x + delta, 0.0, 1.0) - x


def project(x: Tensor, delta: Tensor, eps: float) -> Tensor:
    """Project ``delta`` onto the L-inf eps ball, then shrink it into the input box."""
    return clamp_to_image(x, delta.clamp(-eps, eps))


def input_grad(model: nn.Module, x: Tensor, y: Tensor, *, precision: Precision,
               reduction: str = "sum", create_graph: bool = False,
               loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
    """grad_x of CE(model(x), y) with ``torch.autograd.grad`` (``param.grad`` is never written).

    ``loss_fn`` (``(logits, y) -> per-sample loss``, a monitored loop's own
    loss) replaces the cross-entropy; it is reduced the same way.

    ``precision="fp32"`` turns autocast off and differentiates the fp32 loss
    (probes, evaluation); ``"autocast"`` runs under whatever autocast the
    caller has set (training perturbations). ``reduction="sum"`` gives every
    sample its own gradient, independent of the batch size; ``"mean"``
    divides by it, as the papers' training code does. The model runs in its
    current mode. ``x`` is not modified: a detached alias is differentiated
    unless ``x`` already requires grad, in which case the graph through ``x``
    is kept; ``create_graph=True`` keeps the graph for double backpropagation
    (GradAlign eq. 6).
    """
    if precision not in ("fp32", "autocast"):
        raise ValueError(f"precision must be 'fp32' or 'autocast'; got {precision!r}")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean'; got {reduction!r}")
    fp32 = precision == "fp32"
    with torch.autocast(device_type=x.device.type, enabled=False) if fp32 else contextlib.nullcontext(), \
            torch.enable_grad():
        x_in = x if x.requires_grad else x.detach().requires_grad_(True)
        logits = model(x_in.float()).float() if fp32 else model(x_in)
        if loss_fn is None:
            loss = F.cross_entropy(logits, y, reduction=reduction)
        else:
            per_sample = loss_fn(logits.float() if fp32 else logits, y)
            loss = per_sample.sum() if reduction == "sum" else per_sample.mean()
        (grad,) = torch.autograd.grad(loss, x_in, create_graph=create_graph)
    return grad
