"""GradAlign's ``skip_spikes``: the fp16 loss-scaling behaviour of the paper's training (a step
whose gradients overflow is skipped) without fp16, as a rule on the gradient norm."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from codiag.errors import UsageError
from codiag.methods import check_method, get_method

EPS = 16 / 255


class Scaled(nn.Module):
    """A small conv net whose logits are multiplied by ``gain`` (raised to make one step spike)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
        self.gain = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain * self.body(x)


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 0.2 + 0.6 * torch.rand(16, 1, 6, 6, generator=g), torch.randint(0, 3, (16,), generator=g)


def test_a_spiking_step_is_skipped_and_leaves_weights_and_optimizer_unchanged():
    model = Scaled()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = get_method("gradalign", EPS, lam=2.0, skip_spikes=5.0, seed=0)
    plain = get_method("gradalign", EPS, lam=2.0, seed=0)
    for step in range(12):
        method.train_step(model, opt, *batch(step))
    assert method.skipped_steps == 0 and len(method.grad_norms) == 12
    before, momentum = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    model.gain = 200.0                                 # this step's parameter gradient is far above 5x the median
    method.train_step(model, opt, *batch(99))
    assert method.skipped_steps == 1 and method.state()["skipped_steps"] == 1.0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(momentum["state"][i]["momentum_buffer"], s["momentum_buffer"])
               for i, s in opt.state_dict()["state"].items())
    # without the option the same step is taken
    twin = copy.deepcopy(model)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9)
    twin_opt.load_state_dict(opt.state_dict())
    plain.train_step(twin, twin_opt, *batch(99))
    assert not all(torch.equal(before[k], v) for k, v in twin.state_dict().items())
    # an ordinary step afterwards is taken, and the rule's state survives a checkpoint
    model.gain = 1.0
    method.train_step(model, opt, *batch(100))
    assert method.skipped_steps == 1
    again = get_method("gradalign", EPS, lam=2.0, skip_spikes=5.0, seed=0)
    again.load_state_dict(method.state_dict())
    assert again.grad_norms == method.grad_norms and again.skipped_steps == 1


def test_skip_spikes_is_checked_and_off_by_default():
    assert get_method("gradalign", EPS).skip_spikes == 0.0
    assert "skipped_steps" not in get_method("gradalign", EPS).state()
    with pytest.raises(UsageError, match="skip_spikes"):
        check_method("gradalign", {"skip_spikes": -1})
    x, y = batch(0)
    assert torch.isfinite(F.cross_entropy(Scaled()(x), y))
