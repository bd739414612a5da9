"""APART, adaptive adversarial training ("Perturbation Deterioration: The Other Side of
Catastrophic Overfitting", ICLR 2022 submission, Algorithm 1, Sec. 4 and 5.1).

Notation of Alg. 1 (``eps`` the radius, ``omega_x`` a learned per-sample
initialisation in [-1, 1]^d, ``alpha = (alpha_w, alpha_1, alpha_2..n)`` learned
step sizes):

1. first round (``perturb``): ``delta_1 <- alpha_w * omega_x``; one forward and
   backward at ``x + delta_1`` gives the input gradient and the gradients at the
   input of every residual block; ``delta_1 <- clip(delta_1 + alpha_1 sign(g_x), -eps, eps)``
   and ``delta_i <- alpha_i sign(g_i)`` for the blocks;
2. second round (``loss``/``train_step``): the training loss with ``delta_1`` at
   the input and ``delta_i`` inside each block. Its single backward yields the
   descent step for ``theta`` and, first-order (FOMAML-style, the signs are
   treated as constants), the ascent steps
   ``omega_x <- clip(omega_x + mu_w sign(dL/d omega_x), -1, 1)`` and
   ``alpha <- alpha + mu_a (dL/d alpha - lambda d||alpha||^2/d alpha)``.

Defaults (Sec. 5.1, CIFAR): ``mu_a`` peaks at ``5e-8`` and follows the cyclic
schedule of the model's learning rate (we scale it by ``lr_now / lr_initial`` of
the optimizer), ``lambda = 200``, ``mu_w = alpha_1 / alpha_w`` (so an
``omega`` update moves ``delta_1`` as much as line 4 does). The paper gives no
initial step sizes; ours: ``alpha_w = eps`` with ``omega`` drawn from
U[-1, 1] (so step 0 is FGSM-RS's start), ``alpha_1 = 1.25 eps`` (FGSM-RS),
block step sizes ``eps / 4`` (Fig. 3 shows values of that order).

Layer-wise perturbations use hooks on ``model.blocks`` (the residual models of
``codiag.models`` expose them). The paper perturbs the residual branch,
``x_i + CNN_i(x_i + delta_i)``; a forward pre-hook adds ``delta_i`` to the block
input and, for blocks whose output has the input's shape (identity shortcut),
a forward hook subtracts it again, which is exactly the paper's form; for the
few down-sampling blocks (projection shortcut) the shortcut sees the
perturbation too (ours). A model without ``blocks`` gets APART-Simple.

Per-sample state: ``omega_x`` in the padded frame, int8 (one byte per input
dimension), following the augmentation (``sample_store.py``).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Method, StateValue, clamp_to_image, register, uniform_like
from .sample_store import SampleStore, ensure_store, split_meta


@contextlib.contextmanager
def block_perturbations(blocks: list[nn.Module], deltas: list[Tensor | None],
                        created: list[Tensor] | None = None, branch_only: bool = True) -> Iterator[None]:
    """Add ``deltas[i]`` to the input of ``blocks[i]`` during the forward passes inside the block.

    A ``None`` delta becomes a zero tensor of the activation's shape that requires
    grad (appended to ``created``), so a backward yields the block-input gradient.
    """
    handles = []
    for i, block in enumerate(blocks):
        def pre(module: nn.Module, args: tuple, i: int = i) -> tuple:
            inp = args[0]
            d = deltas[i]
            if d is None:
                d = torch.zeros_like(inp, requires_grad=True)
                if created is not None:
                    created.append(d)
            module._apart_delta = d
            return (inp + d.to(inp.dtype), *args[1:])

        def post(module: nn.Module, args: tuple, out: Tensor) -> Tensor:
            d = getattr(module, "_apart_delta", None)
            module._apart_delta = None
            if branch_only and d is not None and isinstance(out, Tensor) and out.shape == d.shape:
                return out - d.to(out.dtype)     # identity shortcut: x + F(x + d) exactly
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
    """APART: learned per-sample init omega, learned step sizes (input + one per residual block),
    ascent with mu_a = 5e-8 (cyclic), lambda = 200, first-order."""

    name = "apart"
    lr_peak = 0.5
    defaults: dict[str, Any] = {"init_step": 1.0, "input_step": 1.25, "block_step": 0.25,
                                "alpha_lr": 5e-8, "l2": 200.0, "layerwise": True, "branch_only": True}

    def __init__(self, eps: float, **hparams: Any) -> None:
        super().__init__(eps, **hparams)
        self.alpha_init = float(self.init_step) * self.eps      # alpha_w
        self.alpha_input = float(self.input_step) * self.eps    # alpha_1
        self.alpha_blocks: list[float] = []                     # alpha_2..n, sized on first use
        self.store: SampleStore | None = None
        self.alpha_lr_scale = 1.0          # the trainer's schedule shape; train_step sets it
        self._pending: dict[str, Any] | None = None
        self._first: dict[str, Any] | None = None
        self._last_ascent: dict[str, float] = {}

    # ---------------------------------------------------------------- helpers
    def blocks(self, model: nn.Module) -> list[nn.Module]:
        if not self.layerwise:
            return []
        blocks = getattr(model, "blocks", None)
        return list(blocks) if blocks is not None else []

    def _omega(self, x: Tensor, idx: Tensor | None, aug: Any, gen: torch.Generator) -> Tensor:
        if idx is not None and self.store is not None:
            return self.store.read(idx, aug, x.dtype)
        return uniform_like(x, 1.0, gen)  # no sample identity: U[-1, 1], the store's initial distribution

    def start(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
              generator: torch.Generator | None = None) -> Tensor:
        """``alpha_w * omega_x`` (Alg. 1 line 3), read only."""
        idx, aug = split_meta(index)
        with self._call(generator, x.device) as gen:
            return clamp_to_image(x, self.alpha_init * self._omega(x, idx, aug, gen))

    # ---------------------------------------------------------------- round 1
    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
                generator: torch.Generator | None = None) -> Tensor:
        self.apply_pending()
        idx, aug = split_meta(index)
        blocks = self.blocks(model)
        with self._call(generator, x.device) as gen:
            write = self.writes_state(idx)
            if write:
                self.store = ensure_store(self.store, self.num_samples, x, aug, 1.0, self.generator(x.device))
            omega = self._omega(x, idx, aug, gen)
        if len(self.alpha_blocks) != len(blocks):
            self.alpha_blocks = [float(self.block_step) * self.eps] * len(blocks)
        start = clamp_to_image(x, self.alpha_init * omega)
        x_in = (x + start).detach().requires_grad_(True)
        zeros: list[Tensor] = []
        with block_perturbations(blocks, [None] * len(blocks), zeros, bool(self.branch_only)):
            loss = F.cross_entropy(model(x_in), y, reduction="sum")
        grads = torch.autograd.grad(loss, [x_in, *zeros])
        g_x, g_blocks = grads[0], grads[1:]
        raw = start + self.alpha_input * g_x.sign()
        delta = clamp_to_image(x, raw.clamp(-self.eps, self.eps)).detach()
        if generator is None:
            # the derivative of delta_1 w.r.t. alpha_w, alpha_1 and omega is zero where a clip is active
            free = (raw.abs() < self.eps) & ((x + raw) > 0) & ((x + raw) < 1)
            self._first = {"x": x, "delta": delta, "omega": omega, "sign_x": g_x.sign(), "free": free,
                           "sign_blocks": [g.sign().detach() for g in g_blocks],
                           "idx": idx if write else None, "aug": aug}
        return delta

    # ---------------------------------------------------------------- round 2
    def loss(self, model: nn.Module, x: Tensor, y: Tensor, delta: Tensor) -> Tensor:
        first, self._first = self._first, None
        blocks = self.blocks(model)
        if first is None or first["x"] is not x or len(first["sign_blocks"]) != len(blocks):
            return F.cross_entropy(model(x + delta), y)     # not our perturbation: plain loss
        d1 = delta.detach().requires_grad_(True)
        d_blocks = [(a * s).requires_grad_(True) for a, s in zip(self.alpha_blocks, first["sign_blocks"])]
        with block_perturbations(blocks, list(d_blocks), None, bool(self.branch_only)):
            loss = F.cross_entropy(model(x + d1), y)
        self._pending = {**first, "d1": d1, "d_blocks": d_blocks}
        return loss

    def apply_pending(self) -> bool:
        """First-order ascent on omega and the step sizes from the last backward (Alg. 1 lines 8-9)."""
        p, self._pending = self._pending, None
        if p is None or p["d1"].grad is None:
            return False
        g1 = p["d1"].grad.detach().float() * p["free"]
        mu = float(self.alpha_lr) * float(self.alpha_lr_scale)
        lam = float(self.l2)
        grad_init = float((g1 * p["omega"].float()).sum())          # dL/d alpha_w
        grad_input = float((g1 * p["sign_x"].float()).sum())        # dL/d alpha_1
        # step sizes stay >= 0 (ours): a negative step would turn the attack into descent
        self.alpha_init = max(0.0, self.alpha_init + mu * (grad_init - 2 * lam * self.alpha_init))
        self.alpha_input = max(0.0, self.alpha_input + mu * (grad_input - 2 * lam * self.alpha_input))
        for i, (d, s) in enumerate(zip(p["d_blocks"], p["sign_blocks"])):
            g = 0.0 if d.grad is None else float((d.grad.float() * s.float()).sum())
            self.alpha_blocks[i] = max(0.0, self.alpha_blocks[i] + mu * (g - 2 * lam * self.alpha_blocks[i]))
        self._last_ascent = {"grad_alpha_init": grad_init, "grad_alpha_input": grad_input}
        if p["idx"] is not None and self.store is not None and self.alpha_init > 0:
            mu_w = self.alpha_input / self.alpha_init        # Sec. 5.1: mu_w = alpha_1 / alpha_w
            omega = (p["omega"].float() + mu_w * g1.sign()).clamp(-1, 1)
            self.store.write(p["idx"], p["aug"], omega)
        return True

    def train_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
                   index: Any = None) -> Tensor:
        group = optimizer.param_groups[0]
        base = optimizer.defaults.get("lr") or group["lr"]
        self.alpha_lr_scale = float(group["lr"]) / float(base) if base else 1.0
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
