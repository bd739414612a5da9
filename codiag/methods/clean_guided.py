"""The shared step of GAT and NuAT: a random-sign start, one clean forward whose logits guide the
attack (on alternate steps) and are kept for the training loss, which adds ``lam`` times a gap
between the clean and the adversarial output (GAT: L2 between softmax outputs; NuAT: nuclear norm)."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..tensors import clamp_to_image
from .base import Method


class CleanGuided(Method):
    """Base of :class:`~.gat.GAT` and :class:`~.nuat.NuAT` (hyper-parameters ``init`` and
    ``alternate`` are theirs); not a method of its own."""

    def __init__(self, eps: float, **hparams: Any) -> None:
        super().__init__(eps, **hparams)
        self._steps_in_epoch = 0
        self._cache: tuple[Tensor, Tensor] | None = None     # (x, clean logits with graph)
        self._last_gap: Tensor | None = None

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self._steps_in_epoch = 0

    def _random_start(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """``init * eps`` times random signs (the reference's ``sign(0.5 - rand)``), inside [0, 1]."""
        u = torch.rand(x.shape, generator=gen, device=x.device, dtype=torch.float32).to(x.dtype)
        return clamp_to_image(x, float(self.init) * self.eps * torch.sign(0.5 - u))

    def start(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
              generator: torch.Generator | None = None) -> Tensor:
        with self._call(generator, x.device) as gen:
            return self._random_start(x, gen)

    def _clean_pass(self, model: nn.Module, x: Tensor,
                    generator: torch.Generator | None) -> tuple[Tensor, Tensor, float]:
        """``(start, clean logits, guidance)``: the guidance term is 1, or with ``alternate`` 0 and 1
        on alternate training steps. A training step keeps the logits (with graph) for :meth:`_clean`;
        a probe's call (pure) keeps nothing and counts no step."""
        with self._call(generator, x.device) as gen:
            pure = self._pure
            start = self._random_start(x, gen)
        if pure:
            with torch.no_grad():
                return start, model(x), 1.0
        logits = model(x)                        # kept for loss(): CE at the clean image
        self._cache = (x, logits)
        guided = float(self._steps_in_epoch % 2) if self.alternate else 1.0
        self._steps_in_epoch += 1
        return start, logits, guided

    def _clean(self, model: nn.Module, x: Tensor) -> Tensor:
        """The clean logits this step's attack computed (no second forward), else a forward now."""
        cache, self._cache = self._cache, None
        return cache[1] if cache is not None and cache[0] is x else model(x)
