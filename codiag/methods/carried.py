"""Shared machinery of the methods that carry each sample's perturbation across epochs
(ATTA and ATAS): the int8 store in the padded frame, epoch bookkeeping and resets.

Reference behaviour (ATAS code, ``ATAS.py``/``adv_attack.py``, which also runs
its ATTA baseline): the stored perturbation is read through the sample's
current crop/flip, one signed step is taken from it in *eval* mode, the result
is projected onto the eps ball and [0, 1] and written back through the inverse
augmentation; every ``reset_every`` (10) epochs, except in the last epoch, the
store is re-drawn from U[-eps, eps].

Epoch bookkeeping: the trainer calls ``on_epoch_start(epoch)``. In a user's own
loop that never calls it, the epoch is inferred from the number of training
samples seen (``num_samples`` per epoch), so warm-up and resets still happen.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..tensors import clamp_to_image, eval_mode, input_grad
from .base import Method, StateValue, uniform_like
from .checks import Flag, Integer
from .sample_store import SampleStore, ensure_store, split_meta


class CarriedPerturbation(Method):
    """Base of ATTA/ATAS: one signed step from the stored perturbation of the same sample index."""

    defaults: dict[str, Any] = {"reset_every": 10, "eval_mode": True}
    probe_stand_in = ("probe points carry no stored perturbation: the probes' step starts from "
                      "U[-eps, eps] instead (training samples start from their stored one)")
    checks = {"reset_every": Integer(0), "eval_mode": Flag()}

    def __init__(self, eps: float, **hparams: Any) -> None:
        super().__init__(eps, **hparams)
        self.store: SampleStore | None = None
        self._epoch_calls = False
        self._seen = 0
        self._last_step: Tensor | None = None

    # ------------------------------------------------------------- epochs and resets
    def on_epoch_start(self, epoch: int) -> None:
        self._epoch_calls = True
        self._set_epoch(epoch)

    def _set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch and self._is_reset_epoch(epoch) and self.store is not None:
            self.store.reset(self.generator(self.store.data.device))
        self.epoch = epoch

    def _is_reset_epoch(self, epoch: int) -> bool:
        n = int(self.reset_every or 0)
        if n <= 0 or epoch == 0 or (epoch + 1) % n != 0:
            return False
        return self.epochs is None or epoch + 1 != int(self.epochs)

    def _count(self, n: int) -> None:
        if not self._epoch_calls and self.num_samples:
            self._seen += n
            self._set_epoch((self._seen - 1) // int(self.num_samples))

    # ------------------------------------------------------------- the step
    def step_size(self, grad: Tensor, idx: Tensor | None, write: bool) -> Tensor | float:
        """Per-sample step (B,) or a scalar, in pixel units. Subclasses define it."""
        raise NotImplementedError

    def _read_start(self, x: Tensor, idx: Tensor | None, aug: Any, gen: torch.Generator) -> Tensor:
        if idx is not None and self.store is not None:
            start = self.store.read(idx, aug, x.dtype)
        else:  # no sample identity (probe batch, test data): a uniform start as in Alg. 1 line 2
            start = uniform_like(x, self.eps, gen)
        return clamp_to_image(x, start)

    def start(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
              generator: torch.Generator | None = None) -> Tensor:
        """The stored perturbation of the samples (read only), or a uniform start without indices."""
        idx, aug = split_meta(index)
        with self._call(generator, x.device) as gen:
            return self._read_start(x, idx, aug, gen)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
                generator: torch.Generator | None = None) -> Tensor:
        idx, aug = split_meta(index)
        with self._call(generator, x.device) as gen:
            write = self.writes_state(idx)
            if write:
                self._count(len(idx))
                self.store = ensure_store(self.store, self.num_samples, x, aug, self.eps,
                                          self.generator(x.device))
            start = self._read_start(x, idx, aug, gen)
        with eval_mode(model, enabled=bool(self.eval_mode)):
            grad = input_grad(model, x + start, y, precision="autocast")
        step = self.step_size(grad, idx if self.store is not None else None, write)
        if isinstance(step, Tensor):
            self._last_step = step.detach()
            step = step.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        delta = (start + step * grad.sign()).clamp(-self.eps, self.eps)
        delta = clamp_to_image(x, delta).detach()
        if write:
            self.store.write(idx, aug, delta)
        return delta

    def state(self) -> dict[str, StateValue]:
        out: dict[str, StateValue] = {"epoch": float(self.epoch)}
        if self.store is not None:
            out["store_bytes"] = float(self.store.nbytes)
        return out
