"""Unit tests of codiag.methods: the shared contract, then one defining property per method.

Models are tiny and defined here, so the tests run in seconds and do not depend
on codiag.models.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from codiag.errors import UsageError
from codiag.methods import METHODS, get_method
from codiag.methods.sample_store import SampleStore, crop, uncrop_into
from codiag.methods.zerograd import zero_lower_quantile
from codiag.tensors import input_grad

EPS = 0.1
DESIGN_METHODS = {"fgsm", "fgsm_rs", "fgsm_reduced", "n_fgsm", "zerograd", "zerograd_rollback", "multigrad",
                  "gradalign", "grad_penalty", "cure", "apart", "apart_simple", "atta", "atas", "pgd",
                  "pgd2", "pgd10", "free", "grad_clip"}


class Block(nn.Module):
    """A residual block with an identity shortcut (what APART hooks into)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(torch.relu(x))


class TinyResNet(nn.Module):
    def __init__(self, bn: bool = True) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.blocks = nn.ModuleList([Block(4), Block(4)])
        self.norm = nn.BatchNorm2d(4) if bn else nn.Identity()
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for b in self.blocks:
            h = b(h)
        return self.fc(torch.relu(self.norm(h)).flatten(1))


def tiny_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def batch(n: int = 16, seed: int = 0, interior: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    if interior:  # keep x +- 3 eps inside [0, 1], so no image clamp interferes
        x = 0.35 + 0.3 * x
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y, torch.arange(n)


@dataclass(frozen=True)
class Aug:
    """Stand-in for codiag.data.AugParams (top, left, flip, pad)."""
    top: torch.Tensor
    left: torch.Tensor
    flip: torch.Tensor
    pad: int


@dataclass(frozen=True)
class Meta:
    """Stand-in for codiag.data.SampleMeta."""
    index: torch.Tensor
    aug: Aug | None


def make(name: str, **hp):
    return get_method(name, EPS, seed=3, num_samples=64, **hp)


# ---------------------------------------------------------------------------- registry
def test_registry_has_the_design_method_list():
    assert DESIGN_METHODS <= set(METHODS)
    for name, cls in METHODS.items():
        assert cls.name == name
        assert cls.__doc__ and cls.__module__.startswith("codiag.methods")
        # each module's docstring names its paper (and the algorithm or section)
        import sys
        assert len(sys.modules[cls.__module__].__doc__ or "") > 100, name


def test_get_method_errors_are_usage_errors():
    with pytest.raises(UsageError, match="unknown method"):
        get_method("fgsm_magic", EPS)
    with pytest.raises(UsageError, match="no option"):
        get_method("zerograd", EPS, quantile=0.3)
    assert get_method("FGSM-RS", EPS).name == "fgsm_rs"


@pytest.mark.parametrize("name", sorted(DESIGN_METHODS))
def test_contract(name):
    torch.manual_seed(0)
    model = TinyResNet()
    x, y, idx = batch()
    method = make(name)
    params_before = [p.detach().clone() for p in model.parameters()]
    rng_before = torch.random.get_rng_state()

    delta = method.perturb(model, x, y, idx)
    assert delta.shape == x.shape and not delta.requires_grad
    assert all(p.grad is None for p in model.parameters()), "perturb must not write param.grad"
    assert ((x + delta) >= 0).all() and ((x + delta) <= 1 + 1e-6).all()
    if name != "n_fgsm":
        assert delta.abs().max() <= EPS + 1e-6
    loss = method.loss(model, x, y, delta)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.requires_grad

    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    out = method.train_step(model, opt, x, y, idx)
    assert out.dim() == 0 and torch.isfinite(out) and not out.requires_grad
    assert any(not torch.equal(a, b) for a, b in zip(params_before, model.parameters()))
    assert torch.equal(rng_before, torch.random.get_rng_state()), "methods must not touch the global RNG"
    assert all(p.requires_grad for p in model.parameters()) and model.training

    state = method.state()
    assert isinstance(state, dict)
    for k, v in state.items():
        assert isinstance(v, (float, np.ndarray)), (k, type(v))


@pytest.mark.parametrize("name", sorted(DESIGN_METHODS))
def test_seed_is_honoured_and_probe_calls_are_pure(name):
    x, y, idx = batch()

    def run(seed):
        torch.manual_seed(0)
        model = TinyResNet()
        method = get_method(name, EPS, seed=seed, num_samples=64)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        method.train_step(model, opt, x, y, idx)
        return model, method

    m1, a = run(1)
    m2, b = run(1)
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))

    # a probe call (own generator) between steps changes nothing of the next training step
    a.perturb(m1, x, y, idx, generator=torch.Generator().manual_seed(99))
    a.start(m1, x, y, idx, generator=torch.Generator().manual_seed(99))
    d1 = a.perturb(m1, x, y, idx)
    d2 = b.perturb(m2, x, y, idx)
    assert torch.equal(d1, d2)


# ---------------------------------------------------------------------------- FGSM family
def test_fgsm_variants_steps():
    model = tiny_cnn()
    x, y, _ = batch(interior=True)
    g = input_grad(model, x, y, precision="autocast")
    assert torch.allclose(make("fgsm").perturb(model, x, y), EPS * g.sign())
    assert torch.allclose(make("fgsm_reduced").perturb(model, x, y), 7 / 8 * EPS * g.sign())
    rs = make("fgsm_rs")
    start = rs.start(model, x, y, generator=torch.Generator().manual_seed(0))
    d = rs.perturb(model, x, y, generator=torch.Generator().manual_seed(0))
    g_start = input_grad(model, x + start, y, precision="autocast")
    assert torch.allclose(d, (start + 1.25 * EPS * g_start.sign()).clamp(-EPS, EPS))


def test_n_fgsm_can_exceed_eps_and_is_not_projected():
    model = tiny_cnn()
    x, y, _ = batch(interior=True)
    m = make("n_fgsm")
    eta = m.start(model, x, y, generator=torch.Generator().manual_seed(0))
    d = m.perturb(model, x, y, generator=torch.Generator().manual_seed(0))
    assert eta.abs().max() > 1.5 * EPS                      # noise from U[-2 eps, 2 eps]
    assert d.abs().max() > EPS * 1.5                        # no projection onto the eps ball
    assert torch.allclose((d - eta).abs(), torch.full_like(d, EPS), atol=1e-6)   # one step of eps


def test_pgd_variants():
    assert make("pgd10").alpha == pytest.approx(0.2) and not make("pgd10").random_start
    assert make("pgd").random_start
    p2 = make("pgd2")
    assert p2.steps == 2 and p2.alpha == pytest.approx(0.5) and not p2.random_start
    model = tiny_cnn()
    x, y, _ = batch(interior=True)
    assert torch.equal(p2.perturb(model, x, y), p2.perturb(model, x, y))   # no randomness
    d = make("pgd10").perturb(model, x, y)

    def loss(dd):
        return F.cross_entropy(model(x + dd), y).item()

    assert loss(d) > loss(make("fgsm_rs").perturb(model, x, y))


# ---------------------------------------------------------------------------- ZeroGrad
def test_zero_lower_quantile_is_exact_with_ties():
    g = torch.randn(5, 1, 10, 10)
    g[0, 0, :3] = 0.0                      # 30 exact ties at zero
    g[1] = g[1].round()                    # integer values: many ties at the threshold
    for q in (0.0, 0.1, 0.35, 0.5, 0.97, 1.0):
        out, zeroed = zero_lower_quantile(g, q)
        k = round(q * 100)
        z, mag = zeroed.flatten(1), g.flatten(1).abs()
        assert (z.sum(1) == k).all()                                   # exactly the q share, per sample
        assert (out.flatten(1)[z] == 0).all()
        assert torch.equal(out.flatten(1)[~z], g.flatten(1)[~z])       # the rest untouched
        if 0 < k < 100:
            for r in range(5):
                assert mag[r][z[r]].max() <= mag[r][~z[r]].min()        # the smallest ones go


def test_zerograd_zeroes_exactly_q_share_per_sample():
    model = tiny_cnn()
    x, y, _ = batch(interior=True)
    m = make("zerograd")
    start = m.start(model, x, y, generator=torch.Generator().manual_seed(5))
    d = m.perturb(model, x, y, generator=torch.Generator().manual_seed(5))
    stayed = (d == start).flatten(1).sum(1)       # zeroed-gradient coordinates keep the random start
    moved_to_corner = (d.abs() - EPS).abs().lt(1e-6).flatten(1).sum(1)
    k = round(0.35 * 64)
    assert (stayed == k).all() and (moved_to_corner == 64 - k).all()
    assert m.state()["zeroed_share"] == 0.0        # a probe's call (own generator) leaves training's state
    m.perturb(model, x, y)
    assert m.state()["zeroed_share"] == pytest.approx(k / 64)


# ---------------------------------------------------------------------------- MultiGrad
def test_multigrad_keeps_only_sign_agreeing_coordinates():
    model = tiny_cnn()
    x, y, _ = batch(interior=True)
    m = make("multigrad")
    d = m.perturb(model, x, y, generator=torch.Generator().manual_seed(7))
    # rebuild the three starts from the same generator stream
    g = torch.Generator().manual_seed(7)
    starts = (torch.rand((3, *x.shape), generator=g) * 2 - 1) * EPS
    grads = torch.stack([input_grad(model, x + s, y, precision="autocast") for s in starts])
    agree = (grads.sign() == grads[0].sign()).all(0) & (grads[0] != 0)
    assert 0 < agree.float().mean() < 1                       # the test is not trivial
    assert torch.equal(d != 0, agree)
    assert torch.allclose(d[agree], EPS * grads[0].sign()[agree])


def test_multigrad_random_start_variant_keeps_the_first_start_where_signs_disagree():
    model = tiny_cnn()
    x, y, _ = batch(interior=True)
    m = make("multigrad", random_start=True)
    start = m.start(model, x, y, generator=torch.Generator().manual_seed(7))
    d = m.perturb(model, x, y, generator=torch.Generator().manual_seed(7))
    plain = make("multigrad").perturb(model, x, y, generator=torch.Generator().manual_seed(7))
    disagree = plain == 0
    assert torch.allclose(d[disagree], start[disagree], atol=1e-6)
    assert torch.allclose(d[~disagree], (start + plain)[~disagree].clamp(-EPS, EPS), atol=1e-6)


def test_multigrad_batched_equals_sequential_without_batchnorm():
    model = tiny_cnn()
    x, y, _ = batch()
    a = make("multigrad", batched=True).perturb(model, x, y, generator=torch.Generator().manual_seed(1))
    b = make("multigrad", batched=False).perturb(model, x, y, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------- ZeroGrad roll-back
class FakeMonitor:
    def __init__(self) -> None:
        self.co_detected = False


def test_zerograd_rollback_restores_checkpoint_and_raises_q():
    torch.manual_seed(0)
    model = tiny_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y, _ = batch()
    m = make("zerograd_rollback")
    mon = FakeMonitor()
    assert m.q == 0.25
    m.train_step(model, opt, x, y)
    assert m.on_epoch_end(0, model, opt, mon) is False
    saved = [p.detach().clone() for p in model.parameters()]
    m.train_step(model, opt, x, y)
    assert not all(torch.equal(a, b) for a, b in zip(saved, model.parameters()))
    mon.co_detected = True
    assert m.on_epoch_end(1, model, opt, mon) is True
    assert all(torch.equal(a, b) for a, b in zip(saved, model.parameters()))
    assert m.q == 0.45 and m.resume_epoch == 1 and m.last_rollback["q_to"] == 0.45
    # a sticky alarm does not roll back again; a re-armed and re-raised one does
    assert m.on_epoch_end(2, model, opt, mon) is False
    mon.co_detected = False
    m.on_epoch_end(3, model, opt, mon)
    mon.co_detected = True
    assert m.on_epoch_end(4, model, opt, mon) is True and m.rollbacks == 2


# ---------------------------------------------------------------------------- gradient regularisers
@pytest.mark.parametrize("name", ["gradalign", "grad_penalty", "cure"])
def test_regularisers_have_a_gradient_through_the_input_gradients(name):
    torch.manual_seed(0)
    model = tiny_cnn()
    x, y, _ = batch()
    m = make(name, lam=1.0)
    delta = m.perturb(model, x, y)
    total = m.loss(model, x, y, delta)
    ce = F.cross_entropy(model(x + delta), y)
    params = list(model.parameters())
    g_total = torch.autograd.grad(total, params)
    g_ce = torch.autograd.grad(ce, params)
    # the regulariser contributes parameter gradients -- only possible through double backprop
    assert any((a - b).abs().max() > 1e-7 for a, b in zip(g_total, g_ce))
    # the conv kernel only reaches the regulariser through the input gradient's graph
    assert (g_total[0] - g_ce[0]).abs().sum() > 0


def test_gradalign_lambda_schedule():
    assert get_method("gradalign", 8 / 255).lam == pytest.approx(0.2)
    assert get_method("gradalign", 16 / 255).lam == pytest.approx(2.0)
    assert get_method("gradalign", 4 / 255).lam == pytest.approx(0.0632, abs=1e-3)
    assert get_method("gradalign", 0.2, lam=0.5).lam == 0.5


# ---------------------------------------------------------------------------- per-sample state
def test_sample_store_is_one_byte_per_dimension_and_follows_the_augmentation():
    g = torch.Generator().manual_seed(0)
    store = SampleStore(10, (1, 8, 8), pad=2, scale=EPS, device=torch.device("cpu"), generator=g)
    assert store.data.dtype == torch.int8 and store.nbytes == 10 * 1 * 12 * 12
    idx = torch.tensor([2, 5])
    aug = Aug(top=torch.tensor([0, 3]), left=torch.tensor([1, 4]), flip=torch.tensor([True, False]), pad=2)
    values = (torch.rand(2, 1, 8, 8, generator=g) * 2 - 1) * EPS
    store.write(idx, aug, values)
    assert torch.allclose(store.read(idx, aug), values, atol=EPS / 127)
    # another crop of the same sample sees the same pixels, shifted
    aug2 = Aug(top=torch.tensor([1, 3]), left=torch.tensor([1, 4]), flip=torch.tensor([True, True]), pad=2)
    again = store.read(idx, aug2)
    assert torch.allclose(again[0, :, :-1], values[0, :, 1:], atol=EPS / 127)   # one row down
    assert torch.allclose(again[1], values[1].flip(-1), atol=EPS / 127)         # flipped
    # crop / uncrop are inverse on the covered pixels
    frame = torch.zeros(2, 1, 12, 12)
    assert torch.equal(crop(uncrop_into(frame, aug, values), aug, (8, 8)), values)


def test_atta_resumes_from_the_stored_perturbation_of_the_same_index():
    model = tiny_cnn()
    x, y, _ = batch(8)
    m = make("atta")
    idx = torch.tensor([10, 11, 12, 13, 14, 15, 16, 17])
    d1 = m.perturb(model, x, y, idx)
    # sample 13 comes back alone, in another batch: its start is its own stored perturbation
    start = m.start(model, x[3:4], y[3:4], torch.tensor([13]), generator=torch.Generator())
    assert torch.allclose(start, d1[3:4], atol=EPS / 127 + 1e-7)
    other = m.start(model, x[3:4], y[3:4], torch.tensor([40]), generator=torch.Generator())
    assert not torch.allclose(other, d1[3:4], atol=EPS / 10)
    # and the next step starts there: d2 = proj(d1 + step * sign(grad at x + d1))
    d2 = m.perturb(model, x[3:4], y[3:4], torch.tensor([13]))
    g = input_grad(model, x[3:4] + start, y[3:4], precision="autocast")
    expect = ((start + 0.5 * EPS * g.sign()).clamp(-EPS, EPS) + x[3:4]).clamp(0, 1) - x[3:4]
    assert torch.allclose(d2, expect, atol=1e-6)


def test_atta_with_sample_meta_and_augmentation():
    model = tiny_cnn()
    x, y, _ = batch(2)
    m = make("atta")
    aug = Aug(top=torch.tensor([0, 2]), left=torch.tensor([2, 0]), flip=torch.tensor([False, True]), pad=2)
    d1 = m.perturb(model, x, y, Meta(torch.tensor([1, 2]), aug))
    assert m.store.pad == 2
    start = m.start(model, x, y, Meta(torch.tensor([1, 2]), aug), generator=torch.Generator())
    assert torch.allclose(start, d1, atol=EPS / 127 + 1e-7)


def test_atas_step_sizes_are_inversely_ordered_with_the_moving_average():
    model = tiny_cnn()
    x, y, idx = batch(16)
    start = make("atas").start(model, x, y, idx, generator=torch.Generator())
    g0 = input_grad(model, x + start, y, precision="autocast")
    c = float((0.5 ** 0.5 * g0.flatten(1).norm(dim=1)).median()) / 128   # put the norms where c bites
    # the reference's constants (16/255, [4, 14]/255) scaled to this test's eps, as a setting would
    m = make("atas", warmup_epochs=0, c=c, gamma_c=2 * EPS, min_step=0.5 * EPS, max_step=1.75 * EPS)
    m.perturb(model, x, y, idx)                       # first update: v = (1 - beta) ||g||^2
    v = m.v[idx]
    steps = m._last_step
    assert v.unique().numel() == 16 and (v > 0).all()
    inside = (steps > 0.5 * EPS + 1e-9) & (steps < 1.75 * EPS - 1e-9)
    assert inside.sum() >= 8                          # the ordering test is not all clamps
    order_v = torch.argsort(v[inside])
    assert torch.equal(torch.argsort(-steps[inside]), order_v)
    assert torch.allclose(steps, (2 * EPS / (1 + v.sqrt() / (c * 128))).clamp(0.5 * EPS, 1.75 * EPS))
    # moving average with beta 0.5 on the next visit
    g = input_grad(model, x + m.start(model, x, y, idx, generator=torch.Generator()), y, precision="autocast")
    m.perturb(model, x, y, idx)
    assert torch.allclose(m.v[idx], 0.5 * v + 0.5 * g.flatten(1).norm(dim=1) ** 2, rtol=1e-4)
    assert isinstance(m.state()["step_size"], np.ndarray)


def test_atas_warmup_and_reset_schedule():
    model = tiny_cnn()
    x, y, idx = batch(16)
    m = make("atas", epochs=30)
    m.on_epoch_start(0)
    m.perturb(model, x, y, idx)
    assert m.v is None                                 # warm-up: constant step eps, v untouched
    before = m.store.data.clone()
    for e in range(1, 10):
        m.on_epoch_start(e)
    assert not torch.equal(before, m.store.data)       # reset at the start of the 10th epoch
    m2 = make("atas", epochs=10)
    m2.perturb(model, x, y, idx)
    kept = m2.store.data.clone()
    for e in range(1, 10):
        m2.on_epoch_start(e)
    assert torch.equal(kept, m2.store.data)            # ... but never in the last epoch


def test_atas_infers_epochs_in_a_user_loop():
    model = tiny_cnn()
    x, y, _ = batch(16)
    m = get_method("atas", EPS, num_samples=16, warmup_epochs=1)
    m.perturb(model, x, y, torch.arange(16))
    assert m.epoch == 0 and m.v is None
    m.perturb(model, x, y, torch.arange(16))
    assert m.epoch == 1 and m.v is not None


# ---------------------------------------------------------------------------- APART
def _apart_setup(name="apart", **hp):
    torch.manual_seed(0)
    model = TinyResNet(bn=False)
    x, y, idx = batch(16)
    m = make(name, **{"l2": 0.0, "alpha_lr": 1e-3, "init_step": EPS, "input_step": 0.5 * EPS, **hp})
    return model, x, y, idx, m


def test_apart_step_sizes_move_by_gradient_ascent():
    from codiag.methods.apart import block_perturbations
    model, x, y, idx, m = _apart_setup(variant="paper", block_step=0.01)
    delta = m.perturb(model, x, y, idx)
    first = m._first
    d0 = (m.alpha_init * first["omega"]).clamp(-EPS, EPS)

    def loss_at(a_input, a_blocks):
        x_adv = (x + (d0 + a_input * first["sign_x"]).clamp(-EPS, EPS)).clamp(0, 1)
        ds = [a * s for a, s in zip(a_blocks, first["sign_blocks"])]
        with block_perturbations(list(model.blocks), ds, None, "paper"):
            return F.cross_entropy(model(x_adv), y).item()

    a_input, blocks0 = m.alpha_input, list(m.alpha_blocks)
    h = 1e-4
    fd_input = (loss_at(a_input + h, blocks0) - loss_at(a_input - h, blocks0)) / (2 * h)
    fd_block = (loss_at(a_input, [blocks0[0] + h, blocks0[1]])
                - loss_at(a_input, [blocks0[0] - h, blocks0[1]])) / (2 * h)
    m.alpha_lr_scale = 1.0
    m.loss(model, x, y, delta).backward()
    assert m.apply_pending()
    assert abs(fd_input) > 1e-3 and abs(fd_block) > 1e-4
    # Alg. 1 line 9 with lambda 0: alpha <- alpha + mu * dL/d alpha
    assert (m.alpha_input - a_input) / 1e-3 == pytest.approx(fd_input, rel=0.05)
    assert (m.alpha_blocks[0] - blocks0[0]) / 1e-3 == pytest.approx(fd_block, rel=0.05)


@pytest.mark.parametrize("variant", ["code", "paper"])
def test_apart_l2_control_and_omega_update(variant):
    model, x, y, idx, m = _apart_setup(name="apart_simple", variant=variant, input_step=EPS)
    m.l2 = 100.0                                 # the L2 control dominates: step sizes shrink
    a0 = m.alpha_input
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    assert m.store is None
    m.train_step(model, opt, x, y, idx)
    assert 0 < m.alpha_input < a0
    stored = m.store.data[idx].clone()
    m.train_step(model, opt, x, y, idx)
    assert not torch.equal(stored, m.store.data[idx])           # omega_x moved by ascent
    assert m.store.data.dtype == torch.float16
    assert m.state()["n_blocks"] == 0.0


def test_apart_without_blocks_is_apart_simple():
    model = tiny_cnn()
    x, y, idx = batch()
    m = make("apart")
    m.train_step(model, torch.optim.SGD(model.parameters(), lr=0.01), x, y, idx)
    assert m.alpha_blocks == [] and m.state()["n_blocks"] == 0.0


def test_apart_noise_placement_of_each_variant():
    from codiag.methods.apart import block_perturbations
    from codiag.models import PreActBlock
    blk = Block(4)                               # no ``branch``: the paper's form in both variants
    h = torch.randn(2, 4, 8, 8)
    d = torch.randn(2, 4, 8, 8)
    for variant in ("paper", "code"):
        with block_perturbations([blk], [d], None, variant):
            out = blk(h)
        assert torch.allclose(out, h + blk.conv(torch.relu(h + d)), atol=1e-6)
    pre = PreActBlock(4, 4).eval()
    with block_perturbations([pre], [d], None, "code"):   # after BN-ReLU, residual branch only
        out = pre(h)
    branch = pre.conv2(F.relu(pre.bn2(pre.conv1(F.relu(pre.bn1(h)) + d))))
    assert torch.allclose(out, branch + h, atol=1e-5)


# ---------------------------------------------------------------------------- Free, clipping
def test_free_replays_each_minibatch_m_times_with_one_backward_each():
    model = tiny_cnn()
    x, y, _ = batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    steps = []
    opt.register_step_post_hook(lambda *a: steps.append(1))
    m = make("free", m=4)
    m.train_step(model, opt, x, y)
    assert len(steps) == 4
    assert m._delta.abs().max() <= EPS + 1e-7 and m._delta.abs().max() > 0


def test_grad_clip_bounds_the_update():
    model = tiny_cnn()
    x, y, _ = batch()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    m = make("grad_clip", clip=0.01)
    m.train_step(model, opt, x, y)
    step = torch.cat([(a - p.detach()).flatten() for a, p in zip(before, model.parameters())])
    assert step.norm() <= 0.01 + 1e-6
    assert m.state()["grad_norm_before_clip"] > 0.01
    assert make("grad_clip").step == 2.0


def test_gradalign_batched_double_backprop_equals_sequential_without_batchnorm():
    import copy
    torch.manual_seed(0)
    model = tiny_cnn()
    x, y, _ = batch(interior=True)
    results = []
    for batched in (True, False):
        m_ = copy.deepcopy(model)
        opt = torch.optim.SGD(m_.parameters(), lr=0.1)
        method = make("gradalign", lam=2.0, batched=batched)
        loss = method.train_step(m_, opt, x, y)
        results.append((loss, [p.detach().clone() for p in m_.parameters()], method.state()["train_cos"]))
    (l1, p1, c1), (l2, p2, c2) = results
    assert torch.allclose(l1, l2, atol=1e-6) and c1 == pytest.approx(c2, abs=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(p1, p2))


def test_gradalign_cosine_survives_tiny_gradients():
    from codiag.methods.gradalign import cosine_per_sample
    g = torch.randn(3, 1, 4, 4)
    g2 = (g * 1e-17).requires_grad_(True)          # confident samples: tiny input gradients
    cos, valid = cosine_per_sample(g * 1e-17, g2)
    assert valid.all() and torch.allclose(cos, torch.ones(3), atol=1e-5)
    cos.sum().backward()
    assert torch.isfinite(g2.grad).all()
    zero = torch.zeros(1, 1, 4, 4, requires_grad=True)
    cos, valid = cosine_per_sample(torch.ones(1, 1, 4, 4), zero)
    cos.sum().backward()
    assert not valid.any() and torch.equal(zero.grad, torch.zeros_like(zero))
