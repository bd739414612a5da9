"""APART, adaptive adversarial training ("Perturbation Deterioration: The Other Side of
Catastrophic Overfitting", ICLR 2022 submission, Algorithm 1, Sec. 4 and 5.1), as its official
code runs it (LiyuanLucasLiu/APART, ``train.py`` and ``models/preresnet.py``).

Notation of Alg. 1: ``eps`` the radius, ``omega_x`` a learned per-sample initialisation in
[-1, 1]^d, ``alpha = (alpha_w, alpha_1, alpha_2..n)`` learned step sizes (input start, input
step, one per residual block).

1. first round (``perturb``): ``delta = clip(alpha_w * omega_x, -eps, eps)``; one forward and
   backward at ``clip(x + delta, 0, 1)`` gives the input gradient and the gradient at every
   block's noise point; ``delta <- clip(delta + alpha_1 sign(g_x), -eps, eps)``, the training
   input is ``clip(x + delta, 0, 1)`` and block ``i`` gets ``alpha_i sign(g_i)``;
2. second round (``loss``): the training loss with both. Its backward yields the descent
   step of ``theta`` and, first-order (the signs are constants, FOMAML), the gradients of the
   step sizes and of the input; then ``omega_x <- clip(omega_x + mu_w sign(.), -1, 1)`` with
   ``mu_w = alpha_1 / alpha_w`` and gradient *ascent* on the step sizes with an L2 pull
   ``lambda ||alpha||^2``.

``variant`` (where the paper and its code differ; default ``"code"``, which produced the
paper's numbers):

* ``"code"``: the layer-wise noise is added after the block's BN-ReLU on the residual branch,
  past the shortcut (``preresnet.py`` L37-47; codiag's ``PreActBlock.branch``); ``omega``
  moves by the sign of the gradient at the training input (``train.py`` L145-146,
  ``mu_w = alpha_1 / (alpha_w + 1e-7)``); the step sizes take an SGD step on the negated
  gradient (lr ``mu_a`` following the schedule, momentum 0.9, weight decay ``2 lambda`` =
  400; ``train.py`` L149-158, L273) *and*, since they are parameters of the main optimizer
  too, a step of that optimizer on a zero gradient (its weight decay and momentum at its
  learning rate, ``train.py`` L159; the reference's torch 1.x ``zero_grad`` zeroes gradients
  rather than freeing them). Blocks without a ``branch`` module get the paper's placement.
* ``"paper"``: the noise enters the block input on the residual branch, ``x_i +
  CNN_i(x_i + delta_i)`` (Sec. 4; a pre-hook adds it, a post-hook takes it off the identity
  shortcut; projection shortcuts see it, ours); ``omega`` moves by the sign of its own
  gradient; the step sizes by plain ascent ``alpha + mu_a (dL/dalpha - 2 lambda alpha)``
  (Alg. 1 line 9), kept >= 0 (ours).

Initial values (the paper gives none; both variants use the code's): ``alpha_w = alpha_1 =
1e-4`` (pixel units, ``init_step``, ``input_step``), block step sizes 0 (``block_step``),
``omega = 0.001 * N(0, 1)`` (``omega_std``; ``train.py`` L259, ``preresnet.py`` L20, L96-97).
``mu_a`` peaks at ``5e-8`` (``alpha_lr``) and follows the shape of the model's learning-rate
schedule (scaled by ``lr_now / lr_initial`` of the optimizer), ``lambda = 200`` (``l2``).

With these values the step sizes grow only as fast as ``mu_a`` lets them: on Fashion-MNIST
at eps 0.2 (cnn4, the first 6,000 images, Adam 3e-3 one-cycle, 3 epochs, CPU) ``alpha_1``
reached 3.4e-4 (code) and 1.3e-4 (paper), so the model trained almost clean (PGD-10
accuracy 0.01 on 300 test points). For another data set, raise ``alpha_lr`` or the
initial step sizes.

Per-sample state: ``omega_x`` in the padded frame as float16 (``sample_store.py``),
following the augmentation. Probe points outside the training set have no ``omega``: a
fresh draw stands in for it.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Method, StateValue, register
from .checks import NON_NEGATIVE, Flag, OneOf, Real
from .sample_store import SampleStore, ensure_store, split_meta


def _branch_point(block: nn.Module, variant: str) -> nn.Module | None:
    return getattr(block, "branch", None) if variant == "code" else None


@contextlib.contextmanager
def block_perturbations(blocks: list[nn.Module], deltas: list[Tensor | None], created: list[Tensor] | None = None,
                        variant: str = "code") -> Iterator[None]:
    """Add ``deltas[i]`` to the residual branch of ``blocks[i]`` during the forward passes inside.

    ``variant="code"``: at the block's ``branch`` module (after BN-ReLU, past the shortcut);
    ``"paper"`` (and blocks without ``branch``): at the block input, taken off again for an
    identity shortcut, i.e. ``x + F(x + d)``. A ``None`` delta becomes a zero tensor that
    requires grad (appended to ``created``), so a backward yields the gradient there.
    """
    handles = []

    def noise(i: int, like: Tensor) -> Tensor:
        d = deltas[i]
        if d is None:
            d = torch.zeros_like(like, requires_grad=True)
            if created is not None:
                created.append(d)
        return d.to(like.dtype)

    for i, block in enumerate(blocks):
        point = _branch_point(block, variant)
        if point is not None:
            def add(module: nn.Module, args: tuple, out: Tensor, i: int = i) -> Tensor:
                return out + noise(i, out)
            handles.append(point.register_forward_hook(add))
            continue

        def pre(module: nn.Module, args: tuple, i: int = i) -> tuple:
            d = noise(i, args[0])
            module._apart_delta = d
            return (args[0] + d, *args[1:])

        def post(module: nn.Module, args: tuple, out: Tensor) -> Tensor:
            d = getattr(module, "_apart_delta", None)
            module._apart_delta = None
            if d is not None and isinstance(out, Tensor) and out.shape == d.shape:
                return out - d     # identity shortcut: x + F(x + d) exactly
            return out

        handles.append(block.register_forward_pre_hook(pre))
        handles.append(block.register_forward_hook(post))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@register
class APART(Method):
    """APART: learned per-sample start omega and step sizes (input + one per residual block), ascent
    with mu_a 5e-8 (cyclic) and lambda 200; ``variant`` code (default) or paper."""

    name = "apart"
    lr_peak = 0.5
    probe_stand_in = ("probe points have no learned initialisation omega: a fresh draw of the "
                      "initial omega (0.001 N(0, 1)) stands in; the learned step sizes are the training ones")
    defaults: dict[str, Any] = {"variant": "code", "init_step": 1e-4, "input_step": 1e-4, "block_step": 0.0,
                                "omega_std": 0.001, "alpha_lr": 5e-8, "l2": 200.0, "momentum": 0.9,
                                "layerwise": True}
    checks = {"variant": OneOf("code", "paper"), "init_step": NON_NEGATIVE, "input_step": NON_NEGATIVE,
              "block_step": NON_NEGATIVE, "omega_std": NON_NEGATIVE, "alpha_lr": NON_NEGATIVE, "l2": NON_NEGATIVE,
              "momentum": Real(0, 1, hi_open=True), "layerwise": Flag()}

    transient = ("_main_group",)

    def __init__(self, eps: float, **hparams: Any) -> None:
        super().__init__(eps, **hparams)
        #: (alpha_w, alpha_1, alpha_2..n); the block entries are added on first use
        self.alphas = torch.tensor([float(self.init_step), float(self.input_step)])
        self.store: SampleStore | None = None
        self.alpha_lr_scale = 1.0          # the trainer's schedule shape; train_step sets it
        self._main_group: dict[str, Any] | None = None
        self._opts: dict[str, torch.optim.Optimizer] = {}
        self._first: dict[str, Any] | None = None
        self._pending: dict[str, Any] | None = None
        self._last_ascent: dict[str, float] = {}

    # ---------------------------------------------------------------- state
    @property
    def alpha_init(self) -> float:
        return float(self.alphas[0])

    @property
    def alpha_input(self) -> float:
        return float(self.alphas[1])

    @property
    def alpha_blocks(self) -> list[float]:
        return [float(a) for a in self.alphas[2:]]

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        if not self.layerwise:
            return []
        blocks = getattr(model, "blocks", None)
        return list(blocks) if blocks is not None else []

    def _ensure_alphas(self, n_blocks: int, device: torch.device) -> None:
        if len(self.alphas) != 2 + n_blocks:
            self.alphas = torch.cat([self.alphas[:2].cpu(), torch.full((n_blocks,), float(self.block_step))])
            self._opts = {}
        if self.alphas.device != device:
            self.alphas = self.alphas.to(device)
            self._opts = {}

    def init_store(self, x: Tensor, index: Any, omega: Tensor) -> None:
        """Create the per-sample store (if needed) and set the samples ``index`` to ``omega``."""
        idx, aug = split_meta(index)
        self.store = ensure_store(self.store, self.num_samples, x, aug, float(self.omega_std),
                                  self.generator(x.device), init="normal", dtype=torch.float16)
        self.store.write(idx, aug, omega)

    def _omega(self, x: Tensor, idx: Tensor | None, aug: Any, gen: torch.Generator) -> Tensor:
        if idx is not None and self.store is not None:
            return self.store.read(idx, aug, x.dtype)
        # no sample identity (probe points): a draw from the initial distribution stands in
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=torch.float32)
        return (noise * float(self.omega_std)).to(x.dtype)

    def start(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
              generator: torch.Generator | None = None) -> Tensor:
        """``clip(alpha_w * omega_x, -eps, eps)`` in the image (Alg. 1 line 3), read only."""
        idx, aug = split_meta(index)
        with self._call(generator, x.device) as gen:
            omega = self._omega(x, idx, aug, gen)
        d0 = (self.alpha_init * omega).clamp(-self.eps, self.eps)
        return torch.clamp(x + d0, 0, 1) - x

    # ---------------------------------------------------------------- round 1
    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
                generator: torch.Generator | None = None) -> Tensor:
        self.apply_pending()
        idx, aug = split_meta(index)
        blocks = self.blocks(model)
        with self._call(generator, x.device) as gen:
            write = self.writes_state(idx)
            if write:
                self.store = ensure_store(self.store, self.num_samples, x, aug, float(self.omega_std),
                                          self.generator(x.device), init="normal", dtype=torch.float16)
            omega = self._omega(x, idx, aug, gen)
        self._ensure_alphas(len(blocks), x.device)
        a = self.alphas.to(x.dtype)
        d0 = (a[0] * omega).clamp(-self.eps, self.eps)
        x0 = torch.clamp(x + d0, 0, 1).detach().requires_grad_(True)
        zeros: list[Tensor] = []
        with block_perturbations(blocks, [None] * len(blocks), zeros, str(self.variant)):
            loss = F.cross_entropy(model(x0), y, reduction="sum")
        grads = torch.autograd.grad(loss, [x0, *zeros])
        sign_x = grads[0].sign()
        d1 = (d0 + a[1] * sign_x).clamp(-self.eps, self.eps)
        delta = (torch.clamp(x + d1, 0, 1) - x).detach()
        if generator is None:
            self._first = {"x": x, "omega": omega, "sign_x": sign_x,
                           "sign_blocks": [g.sign().detach() for g in grads[1:]],
                           "idx": idx if write else None, "aug": aug}
        return delta

    # ---------------------------------------------------------------- round 2
    def loss(self, model: nn.Module, x: Tensor, y: Tensor, delta: Tensor) -> Tensor:
        first, self._first = self._first, None
        blocks = self.blocks(model)
        if first is None or first["x"] is not x or len(first["sign_blocks"]) != len(blocks):
            return F.cross_entropy(model(x + delta), y)     # not our perturbation: plain loss
        alphas = self.alphas.detach().clone().requires_grad_(True)
        a = alphas.to(x.dtype)
        omega = first["omega"].detach().requires_grad_(self.variant == "paper")
        d0 = (a[0] * omega).clamp(-self.eps, self.eps)
        d1 = (d0 + a[1] * first["sign_x"]).clamp(-self.eps, self.eps)
        x_adv = torch.clamp(x + d1, 0, 1)
        x_adv.retain_grad()
        noise = [a[2 + i] * s for i, s in enumerate(first["sign_blocks"])]
        with block_perturbations(blocks, noise, None, str(self.variant)):
            loss = F.cross_entropy(model(x_adv), y)
        self._pending = {**first, "alphas": alphas, "omega_t": omega, "x_adv": x_adv}
        return loss

    def apply_pending(self) -> bool:
        """The updates of omega and the step sizes from the last backward (Alg. 1 lines 8-9)."""
        p, self._pending = self._pending, None
        if p is None or p["alphas"].grad is None:
            return False
        grad = p["alphas"].grad.detach().float()           # dL/d alpha
        old = self.alphas.detach().clone()
        if p["idx"] is not None and self.store is not None:
            if self.variant == "code":
                mu_w = float(old[1]) / (float(old[0]) + 1e-7)
                direction = p["x_adv"].grad
            else:
                mu_w = float(old[1]) / float(old[0]) if float(old[0]) > 0 else 0.0
                direction = p["omega_t"].grad
            if direction is not None and mu_w > 0:
                omega = (p["omega"].float() + mu_w * direction.float().sign()).clamp(-1, 1)
                self.store.write(p["idx"], p["aug"], omega)
        mu = float(self.alpha_lr) * float(self.alpha_lr_scale)
        if self.variant == "code":
            self._sgd("ascent", mu, float(self.momentum), 2 * float(self.l2), -grad)
            group = self._main_group
            if group is not None:
                self._sgd("main", float(group["lr"]), float(group.get("momentum", 0.0)),
                          float(group.get("weight_decay", 0.0)), torch.zeros_like(grad))
        else:
            self.alphas = (old + mu * (grad - 2 * float(self.l2) * old)).clamp_min(0.0)
        self._last_ascent = {"grad_alpha_init": float(grad[0]), "grad_alpha_input": float(grad[1])}
        return True

    def _sgd(self, key: str, lr: float, momentum: float, weight_decay: float, grad: Tensor) -> None:
        """One ``torch.optim.SGD`` step of the step sizes (the reference's own optimizers)."""
        if momentum == 0 and weight_decay == 0 and not grad.any():
            return
        opt = self._opts.get(key)
        if opt is None:
            opt = torch.optim.SGD([self.alphas], lr=lr, momentum=momentum, weight_decay=weight_decay)
            self._opts[key] = opt
        opt.param_groups[0]["lr"] = lr
        self.alphas.grad = grad.to(self.alphas.device)
        opt.step()
        self.alphas.grad = None

    def train_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
                   index: Any = None) -> Tensor:
        group = optimizer.param_groups[0]
        base = optimizer.defaults.get("lr") or group["lr"]
        self.alpha_lr_scale = float(group["lr"]) / float(base) if base else 1.0
        self._main_group = group
        delta = self.perturb(model, x, y, index)
        loss = self.loss(model, x, y, delta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        self.apply_pending()
        return loss.detach()

    def state(self) -> dict[str, StateValue]:
        out: dict[str, StateValue] = {"alpha_init": self.alpha_init, "alpha_input": self.alpha_input,
                                      "n_blocks": float(len(self.alpha_blocks))}
        for i, a in enumerate(self.alpha_blocks):
            out[f"alpha_block_{i + 1}"] = a
        if self.alpha_blocks:
            out["alpha_blocks"] = np.asarray(self.alpha_blocks, dtype=np.float64)
        out.update(self._last_ascent)
        return out
