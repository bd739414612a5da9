"""MultiGrad (Golgooni et al., ZeroGrad paper, Sec. 3.2, Algorithm 2).

Take the input gradient at ``N`` uniform random starts ``x + delta_j``; keep the
coordinates where all ``N`` gradient signs agree (``|mean_j sign(g_j)| == 1``)
and set the rest to zero; ``delta = alpha * sign(g_1)`` on the kept coordinates,
added to the *clean* input (no random start in the result), clipped to the eps
ball and [0, 1]. Defaults (Sec. 4): ``N = 3``, ``alpha = eps``.

Batched vs sequential starts (docs/CONVENTIONS.md, "MultiGrad's starts"). ``batched=True``
concatenates the N starts into one forward and one backward of an ``N*B``
batch: one kernel launch/Python round trip instead of N, the fast path on a GPU
(Alg. 2 says "in parallel"). In train mode BatchNorm then normalises
with statistics of the N*B batch (the same images with N noise draws, so very
close to the B-batch statistics) and updates its running averages once instead
of N times. ``batched=False`` runs the starts one after another like the
reference code (``consensus_fgsm`` with ``--c-parallel`` off, its default), so
each start sees B-batch statistics and the running averages get N updates;
choose it to reproduce the reference's BatchNorm behaviour. Models without
BatchNorm (cnn4) give identical perturbations either way (tested).

``random_start=True`` (ours, off by default) implements the variant the paper
suggests for large eps (Appendix C.2, "maybe use a random start variation"):
the step is taken from the first random start instead of the clean input, so
coordinates without sign agreement keep random values. The default,
``batched="auto"``, batches on CUDA devices and runs the starts one after another
on the CPU: on a GPU the N*B batch fills the device (the paper's "in parallel";
the BatchNorm difference is a second-order effect on the statistics, not on the
algorithm), while on the CPU oneDNN's convolution backward-data grows faster
than linearly with the batch (cnn4, batch 128, 1 thread: one 3B input gradient
43-45 ms vs. three B ones 22 ms), so sequential is both faster there and the
reference behaviour. Pass ``batched=True``/``False`` to force either.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..tensors import clamp_to_image, input_grad
from .base import Method, StateValue, register, uniform_like
from .checks import NON_NEGATIVE, POSITIVE, Flag, Integer, OneOf


def agreeing_signs(grads: Tensor) -> Tensor:
    """``grads`` (N, B, ...) -> sign of the first start where all N signs agree, else 0."""
    signs = grads.sign()
    total = signs.sum(0)
    n = grads.shape[0]
    return torch.where(total.abs() == n, signs[0], torch.zeros_like(signs[0]))


@register
class MultiGrad(Method):
    """MultiGrad: N (3) uniform starts, keep sign-unanimous coordinates, step ``step`` eps (1.0) from zero."""

    name = "multigrad"
    lr_peak = 0.5
    defaults = {"n": 3, "step": 1.0, "init": 1.0, "batched": "auto", "random_start": False}
    checks = {"n": Integer(1), "step": POSITIVE, "init": NON_NEGATIVE, "batched": OneOf("auto", True, False),
              "random_start": Flag()}
    start_radius = "init"

    def __init__(self, eps: float, **hparams: Any) -> None:
        super().__init__(eps, **hparams)
        self._kept = 0.0

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
                generator: torch.Generator | None = None) -> Tensor:
        n = self.n
        with self._call(generator, x.device) as gen:
            # one draw for all starts, so batched and sequential use the same random starts
            xs = x.unsqueeze(0).expand(n, *x.shape)
            starts = clamp_to_image(xs, uniform_like(xs, self.init * self.eps, gen))
        batched = x.is_cuda if self.batched == "auto" else bool(self.batched)
        if batched:
            grads = input_grad(model, (xs + starts).reshape(n * x.shape[0], *x.shape[1:]),
                               y.repeat(n), precision="autocast").view(n, *x.shape)
        else:
            grads = torch.stack([input_grad(model, x + starts[j], y, precision="autocast") for j in range(n)])
        direction = agreeing_signs(grads)
        if generator is None:     # state() reports training's share, not a probe's
            self._kept = direction.ne(0)
        # the paper's delta starts at the clean input; random_start keeps the first start (C.2's
        # suggested variant for large eps: disagreeing coordinates keep random values)
        origin = starts[0] if self.random_start else torch.zeros_like(x)
        delta = (origin + self.step * self.eps * direction).clamp(-self.eps, self.eps)
        return clamp_to_image(x, delta).detach()

    def state(self) -> dict[str, StateValue]:
        kept = self._kept
        share = float(kept.float().mean()) if isinstance(kept, Tensor) else float(kept)
        return {"n": float(self.n), "kept_share": share}
