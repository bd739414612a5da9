"""FGSM-FUAP, FGSM from a feature-level universal adversarial perturbation (Pan, Li & Yao, "Adversarial
Initialization with Universal Adversarial Perturbation: A New Approach to Fast Adversarial Training",
AAAI 2024, the FGSM-UAP family). Written from the paper and the logic of the FastAT Benchmark's code by
the same authors (fzjcdt/FastAT_Benchmark ``fast_at/fgsm_fuap.py``, ``configs/cifar10/fgsm_fuap.yaml``;
no licence: nothing taken from it).

FGSM-UAP (``fgsm_uap.py``) with ``clusters`` universal perturbations instead of one: a small head on
the network's penultimate features assigns each sample to a cluster, and the sample starts from its
cluster's perturbation. Per step, with ``phi(x)`` the penultimate features (no gradient):

    r       = Proj_[0,1](x + U[-eps, eps]) - x                  (a random start)
    h       = W1 phi(x + r) + b1                                (the head's cluster scores)
    k_i     = argmax_j h_ij                                     (the sample's cluster)
    head    <- one Adam step (lr ``head_lr``) on CE(W2 relu(h) + b2, y)
    start   = Proj_eps(r + u[k])                                (into [0, 1])

then FGSM-UAP's step: one signed step of ``step * eps`` from ``start``, CE + ``lam`` * output MSE,
and each cluster's momentum and perturbation updated from the mean over its samples of the
batch-L1-normalised gradient (FGSM-CUAP's rule with clusters for classes). The cluster of a
sample is chosen with the head *before* its Adam step, as in the benchmark's code.

**The penultimate features** are the input of the model's classifier layer, read by a forward
pre-hook held for one forward pass: by default the model's last ``nn.Linear`` (in registration
order: ``linear`` of codiag's ResNets, ``fc2`` of ``small_cnn``, ``fc`` of torchvision's ResNets),
else the module named by ``feature_module`` (``-m feature_module=head.fc``). A model without
either fails at its first step with one line. The benchmark reads ResNet-18's pooled last stage,
which is exactly the input of its linear layer.

The head (``clusters`` x features, then classes x ``clusters``) and its Adam state are method state
(checkpointed, resumed); it is built at the first step, once the feature size is known, with
``nn.Linear``'s initial distribution (U[-1/sqrt(fan_in), 1/sqrt(fan_in)] for weights and biases)
drawn from the method's generator after the corners of ``u`` and the first random start. The head
runs in fp32 outside autocast. Its cross entropy is ``F.cross_entropy``, so ``--label-smoothing``
smooths it as the benchmark's one criterion does.

Probe calls (``generator=``) read ``u`` and the head and change neither; before the first training
step they start at random corners of radius ``uap_radius * eps`` around the random start.

Defaults (the benchmark's CIFAR-10 config): FGSM-UAP's ``step = 1``, ``lam = 10``, ``decay = 0.3``,
``uap_radius = 1.25`` (``uap_eps`` 10/255 at 8/255), ``clusters = 50`` (``uap_num``), ``head_lr =
0.001`` (its Adam).

Cost: FGSM-UAP's passes plus one forward pass without gradient (the features) and the head's tiny
step: 3 forwards and 3 gradient evaluations per step with ``lam > 0`` (``run.json`` ``cost``).

Measured training-step time over FGSM's (``benchmarks/method_cost.py``, CPU, median of interleaved rounds):
``fgsm_fuap`` 2.09 on cnn4 (batch 128), 1.76 on PreAct ResNet-18 (batch 32).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError
from ..tensors import clamp_to_image
from .base import StateValue, register, uniform_like
from .checks import POSITIVE, Integer, Optional, Text
from .fgsm_uap import FGSMUAP


@register
class FGSMFUAP(FGSMUAP):
    """FGSM-FUAP: FGSM-UAP with one universal perturbation per cluster of a learned feature head."""

    name = "fgsm_fuap"
    defaults: dict[str, Any] = {"clusters": 50, "head_lr": 0.001, "feature_module": None}
    checks = {"clusters": Integer(1), "head_lr": POSITIVE, "feature_module": Optional(Text())}
    #: one row of ``u`` per cluster: the rows passed to ``_update`` are the clusters' indices
    per_class = True

    def __init__(self, eps: float, **hparams: Any) -> None:
        super().__init__(eps, **hparams)
        # the head, as plain tensors (a checkpoint holds tensors and torch.optim optimizers over them)
        self.head_w1: Tensor | None = None      # (clusters, features)
        self.head_b1: Tensor | None = None
        self.head_w2: Tensor | None = None      # (classes, clusters)
        self.head_b2: Tensor | None = None
        self.head_opt: torch.optim.Optimizer | None = None
        self._clusters_used: float | None = None

    # ------------------------------------------------------------------ the penultimate features
    def _feature_layer(self, model: nn.Module) -> tuple[str, nn.Module]:
        if self.feature_module is not None:
            found = dict(model.named_modules()).get(self.feature_module)
            if found is None:
                raise UsageError(f"method 'fgsm_fuap': the model has no module named {self.feature_module!r} "
                                 "(feature_module: the module whose input is the penultimate features)")
            return self.feature_module, found
        linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise UsageError("method 'fgsm_fuap' needs the network's penultimate features: the model has no "
                             "nn.Linear; name the module whose input they are with -m feature_module=NAME")
        return linears[-1]

    def _features(self, model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
        """(the penultimate features at ``x``, flattened, fp32; the logits), without gradient."""
        name, layer = self._feature_layer(model)
        seen: list[Tensor] = []
        with _input_of(layer, seen), torch.no_grad():
            logits = model(x)
        if not seen or not isinstance(seen[0], Tensor):
            raise UsageError(f"method 'fgsm_fuap': module {name!r} took no tensor input in the model's forward "
                             "pass (feature_module: the module whose input is the penultimate features)")
        return seen[0].detach().flatten(1).float(), logits

    # ------------------------------------------------------------------ the head
    def _build_head(self, features: int, classes: int, device: torch.device, gen: torch.Generator) -> None:
        """``nn.Linear``'s initial distribution, from the method's generator."""
        def draw(shape: tuple[int, ...], fan_in: int) -> Tensor:
            return uniform_like(torch.empty(shape, device=device), 1.0 / math.sqrt(fan_in), gen)

        k = int(self.clusters)
        self.head_w1, self.head_b1 = draw((k, features), features), draw((k,), features)
        self.head_w2, self.head_b2 = draw((classes, k), k), draw((classes,), k)
        self.head_opt = torch.optim.Adam(self._head(), lr=float(self.head_lr))

    def _head(self) -> list[Tensor]:
        return [self.head_w1, self.head_b1, self.head_w2, self.head_b2]   # type: ignore[list-item]

    def _clusters(self, feats: Tensor, y: Tensor, train: bool) -> Tensor:
        """Each sample's cluster by the head as it is; a training call then takes the head's Adam step."""
        dev = feats.device.type
        with torch.autocast(dev, enabled=False), torch.enable_grad() if train else torch.no_grad():
            params = [p.requires_grad_(train) for p in self._head()]
            scores = F.linear(feats, params[0], params[1])
            rows = scores.detach().argmax(dim=1)
            if train:
                out = F.linear(F.relu(scores), params[2], params[3])
                self.head_opt.zero_grad(set_to_none=True)
                F.cross_entropy(out, y).backward()
                self.head_opt.step()
        return rows

    # ------------------------------------------------------------------ the start
    def _corners(self, shape: torch.Size, device: torch.device, gen: torch.Generator) -> Tensor:
        u = torch.rand(shape, generator=gen, device=device)
        return torch.where(u < 0.5, -self.uap_eps, self.uap_eps)

    def _begin(self, model: nn.Module, x: Tensor, y: Tensor, gen: torch.Generator, train: bool
               ) -> tuple[Tensor, Tensor | None]:
        """(the start, the samples' clusters; None before the first training step)."""
        r = clamp_to_image(x, uniform_like(x, self.eps, gen))
        if self.uap is None or (self.head_w1 is None and not train):
            u = self._corners(x.shape, x.device, gen)      # a probe before training: fresh corners
            return clamp_to_image(x, (r + u.to(x.dtype)).clamp(-self.eps, self.eps)), None
        feats, logits = self._features(model, x + r)
        if self.head_w1 is None:
            self._build_head(feats.shape[1], logits.shape[1], x.device, gen)
        rows = self._clusters(feats, y, train)
        if train:
            self._clusters_used = float(rows.unique().numel())
        u = self.uap.to(x.device)[rows].to(x.dtype)
        return clamp_to_image(x, (r + u).clamp(-self.eps, self.eps)), rows

    def start(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
              generator: torch.Generator | None = None) -> Tensor:
        with self._call(generator, x.device) as gen:
            return self._begin(model, x, y, gen, train=False)[0]

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Any = None,
                generator: torch.Generator | None = None) -> Tensor:
        with self._call(generator, x.device) as gen:
            pure = self._pure
            if not pure and self.uap is None:
                self._ensure(x, int(self.clusters), gen)
            start, rows = self._begin(model, x, y, gen, train=not pure)
        return self._fgsm_from(model, x, y, start, rows, pure)

    def state(self) -> dict[str, StateValue]:
        out = super().state()
        if self._clusters_used is not None:
            out["clusters_used"] = self._clusters_used
        return out


@contextlib.contextmanager
def _input_of(layer: nn.Module, seen: list[Tensor]) -> Iterator[None]:
    """Record the first positional input of ``layer`` while the block runs; the hook is removed after."""
    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and not seen:
            seen.append(args[0])

    handle = layer.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()
