"""Side-effect freedom (docs/CONVENTIONS.md, a hard rule): monitoring must not change training by one bit.

A model with BatchNorm and dropout is trained for several steps from a
shuffling DataLoader (which draws from the global RNG) with a perturbation
that itself draws from the global RNG (and, in one case, switches the model
between eval and train mode and runs a BatchNorm-updating forward itself), once with every probe at every step
and once without the monitor, from the same seed. Every parameter, buffer
(BatchNorm running statistics and counters), optimizer state and the global
RNG state must be bit-identical afterwards. The monitored run also keeps the best checkpoint
(``keep_best``: a CPU copy of the weights and a file at each new best), which must not change
training either.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from codiag.methods import get_method
from codiag.monitoring import monitor

EPS = 0.1


def make_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3),
                         nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Dropout(0.2), nn.Linear(4 * 8 * 8, 3))


def global_rng_fgsm_rs(model, x, y, index=None):
    """A user's own FGSM-RS that draws its random start from the *global* RNG (no generator argument)."""
    delta = (torch.rand_like(x) * 2 - 1) * EPS
    delta.requires_grad_(True)
    loss = F.cross_entropy(model((x + delta).clamp(0, 1)), y)
    (g,) = torch.autograd.grad(loss, delta)
    return (delta + 1.25 * EPS * g.sign()).clamp(-EPS, EPS).detach()


def mode_toggling_fgsm_rs(model, x, y, index=None):
    """A user's attack that switches modes itself: eval for the gradient, then a train-mode forward
    (BatchNorm statistics move, dropout draws), and leaves the model in train mode."""
    model.eval()
    delta = global_rng_fgsm_rs(model, x, y, index)
    model.train()
    with torch.no_grad():
        model((x + delta).clamp(0, 1))
    return delta


def train(monitored: bool, attack_kind: str, tmp_path) -> tuple[nn.Module, torch.optim.Optimizer, torch.Tensor]:
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(96, 1, 8, 8, generator=g), torch.randint(0, 3, (96,), generator=g)
    data = TensorDataset(x, y)
    loader = DataLoader(data, batch_size=16, shuffle=True)     # draws from the global RNG per epoch
    test = DataLoader(TensorDataset(x.flip(0), y.flip(0)), batch_size=32, shuffle=True)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    method = get_method("fgsm_rs", EPS, seed=0) if attack_kind == "method" else None
    attack = (method.perturb if method is not None else
              mode_toggling_fgsm_rs if attack_kind == "mode_toggling" else global_rng_fgsm_rs)
    reference = make_model().eval()   # built in both runs: its init draws from the global RNG

    def loop(mon=None) -> None:
        for _ in range(2):
            model.train()
            for xb, yb in loader:
                delta = attack(model, xb, yb, None)
                loss = F.cross_entropy(model((xb + delta).clamp(0, 1)), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
            if mon is not None:
                mon.epoch_end()

    if monitored:
        with monitor(model, opt, tmp_path / f"run-{attack_kind}", eps=EPS, probe_data=test,
                     train_data=loader, attack=attack, method=method, every=1, probes="all",
                     probe_n=24, train_probe_n=40, reference_model=reference,
                     step_update_norms=True, strict=True, keep_best=True) as mon:
            loop(mon)
        assert mon.n_events == 1 + 12   # step 0, then after each of the 12 steps
        assert mon.best is not None and (tmp_path / f"run-{attack_kind}" / "checkpoints" / "best.pt").exists()
    else:
        loop()
    return model, opt, torch.get_rng_state()


@pytest.mark.filterwarnings("ignore:codiag.monitor. attack:RuntimeWarning")
@pytest.mark.parametrize("attack_kind", ["global_rng", "method", "mode_toggling"])
def test_monitored_training_is_bit_identical_to_unmonitored(tmp_path, attack_kind):
    m0, o0, rng0 = train(False, attack_kind, tmp_path)
    m1, o1, rng1 = train(True, attack_kind, tmp_path)
    assert torch.equal(rng0, rng1), "the monitor consumed the global RNG"
    s0, s1 = m0.state_dict(), m1.state_dict()
    assert list(s0) == list(s1)
    for k in s0:   # parameters and buffers (BN running mean/var, num_batches_tracked)
        assert torch.equal(s0[k], s1[k]), f"{k} differs"
    assert m1.training and all(m.training for m in m1.modules())   # modes restored
    assert all(p.requires_grad for p in m1.parameters())
    for st0, st1 in zip(o0.state.values(), o1.state.values()):
        for k in st0:
            assert torch.equal(torch.as_tensor(st0[k]), torch.as_tensor(st1[k]))
