"""codiag.attacks: PGD against torchattacks, projections, side-effect freedom, seeds, AutoAttack.

A tiny CNN is trained for a few seconds on Fashion-MNIST (the embedded Debian
files) so that the attack comparisons run on a model with non-trivial robustness.
"""
from __future__ import annotations

import copy
import gzip
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from codiag import attacks
from codiag.tensors import input_grad

FMNIST = Path("/usr/share/datasets/fashion-mnist")
EPS = 0.05  # the trained model keeps about 45% PGD accuracy here: a comparison with room both ways


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    """(x_train, y_train, x_test, y_test) from the Fashion-MNIST test file, inputs in [0, 1]."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    if not (FMNIST / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST (Debian package dataset-fashion-mnist) is not installed")
    tmp = tmp_path_factory.mktemp("fmnist")
    for part in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        with gzip.open(FMNIST / f"t10k-{part}.gz") as src, open(tmp / part, "wb") as dst:
            shutil.copyfileobj(src, dst)
    x = read_image_file(str(tmp / "images-idx3-ubyte")).unsqueeze(1).float() / 255
    y = read_label_file(str(tmp / "labels-idx1-ubyte"))
    return x[:2000], y[:2000], x[5000:5400], y[5000:5400]


def small_cnn(seed: int = 0) -> nn.Sequential:
    with torch.random.fork_rng():  # seeded weights without moving the session's global RNG
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(16 * 7 * 7, 10),
        )


@pytest.fixture(scope="module")
def trained(fmnist):
    """A small CNN after 2 epochs of Adam on 2000 images (about 75% clean, 45% PGD at EPS)."""
    x, y, _, _ = fmnist
    model = small_cnn()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(2):
        for i in range(0, len(x), 100):
            loss = F.cross_entropy(model(x[i:i + 100]), y[i:i + 100])
            opt.zero_grad()
            loss.backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture
def fmnist_test(fmnist):
    return fmnist[2], fmnist[3]


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def per_sample(model, x, y):
    with torch.no_grad():
        logits = model(x)
    return F.cross_entropy(logits, y, reduction="none"), logits.argmax(1) != y


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# PGD and FGSM
# ---------------------------------------------------------------------------------------------
def test_pgd_agrees_with_torchattacks_pgd(trained, fmnist_test):
    import torchattacks

    x, y = fmnist_test
    alpha, steps = EPS / 4, 10
    ours = x + attacks.pgd(trained, x, y, EPS, alpha=alpha, steps=steps, random_start=False)
    theirs = torchattacks.PGD(trained, eps=EPS, alpha=alpha, steps=steps, random_start=False)(x, y)
    clean, acc_ours, acc_theirs = (accuracy(trained, t, y) for t in (x, ours, theirs))
    assert 0.2 < acc_ours < clean - 0.1  # the attack does something, and not everything
    assert abs(acc_ours - acc_theirs) <= 0.01
    # same trajectory up to float rounding (alpha steps in delta vs. in image space)
    assert (ours - theirs).abs().max() < 1e-5


@pytest.mark.parametrize("attack", ["pgd", "fgsm"])
def test_delta_stays_in_the_eps_ball_and_the_image_box(trained, fmnist_test, attack):
    x, y = fmnist_test
    x = torch.cat([x[:64], 1 - x[64:128]])  # many pixels at 0 and at 1: both box faces active
    if attack == "pgd":
        delta = attacks.pgd(trained, x, y[:128], EPS, alpha=EPS, steps=5, restarts=2, generator=gen(1))
    else:
        delta = attacks.fgsm(trained, x, y[:128], EPS, step=1.25 * EPS, random_start=True, generator=gen(1))
    adv = x + delta
    assert delta.dtype == torch.float32
    assert delta.abs().max() <= EPS + 1e-7
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    # both constraints bind somewhere, so the assertions above are not vacuous
    assert ((delta.abs() - EPS).abs() < 1e-6).float().mean() > 0.3
    assert ((x == 0) & (delta == 0)).any() and ((x == 1) & (delta == 0)).any()


def test_fgsm_default_is_one_step_of_eps_from_zero(trained, fmnist_test):
    x, y = fmnist_test
    x, y = x[:32], y[:32]
    grad = input_grad(trained, x, y, precision="fp32")
    expected = torch.clamp(x + EPS * grad.sign(), 0, 1) - x
    torch.testing.assert_close(attacks.fgsm(trained, x, y, EPS), expected, rtol=0, atol=0)


def test_pgd_is_at_least_as_strong_as_fgsm(trained, fmnist_test):
    x, y = fmnist_test
    loss_f, wrong_f = per_sample(trained, x + attacks.fgsm(trained, x, y, EPS), y)
    loss_p, wrong_p = per_sample(trained, x + attacks.pgd(trained, x, y, EPS, steps=10), y)
    assert wrong_f.float().mean() > 1 - accuracy(trained, x, y)  # FGSM itself does something
    assert wrong_p.float().mean() >= wrong_f.float().mean()
    assert loss_p.mean() >= loss_f.mean()


def test_restarts_keep_every_break_and_never_lower_the_loss(trained, fmnist_test):
    x, y = fmnist_test
    kw = dict(steps=1)  # a weak attack, so that the random starts matter
    # restarts draw their starts one after another from the generator, so five
    # single-restart runs on one generator are exactly the five restarts
    g = gen(3)
    singles = [per_sample(trained, x + attacks.pgd(trained, x, y, EPS, generator=g, **kw), y)
               for _ in range(5)]
    loss_5, wrong_5 = per_sample(trained, x + attacks.pgd(trained, x, y, EPS, restarts=5,
                                                           generator=gen(3), **kw), y)
    loss_1, wrong_1 = singles[0]
    union = torch.stack([w for _, w in singles]).any(0)
    assert torch.equal(wrong_5, union)  # broken if any restart breaks it
    assert wrong_5.sum() >= wrong_1.sum() + 2  # restarts matter here, so the test can fail
    same = wrong_5 == wrong_1
    assert (loss_5[same] >= loss_1[same]).all()
    best_unbroken = torch.stack([loss for loss, _ in singles]).max(0).values
    torch.testing.assert_close(loss_5[~wrong_5], best_unbroken[~wrong_5])


class StepLoss(nn.Module):
    """A flat-gradient toy model of v = x[:, 0], true class 0, so PGD stays at its random start.

    v <= 0.5: misclassified (class 1 wins) with a constant loss of about 0.74;
    v > 0.5: correct, with a loss that grows with v and is always above 0.87.
    A broken restart thus has a *lower* loss than any unbroken one.
    """

    def forward(self, x):
        v = x.detach()[:, :1]
        wrong = torch.cat([torch.ones_like(v), torch.full_like(v, 1.1), torch.full_like(v, -10.0)], 1)
        right = torch.cat([torch.ones_like(v), 0.4 + 0.5 * v, 0.4 + 0.5 * v], 1)
        return torch.where(v <= 0.5, wrong, right) + 0 * x.sum(1, keepdim=True)


def test_restarts_prefer_a_break_then_the_highest_loss():
    model, eps = StepLoss(), 0.5
    x, y = torch.full((200, 1), 0.5), torch.zeros(200, dtype=torch.long)
    g = gen(11)
    starts = torch.stack([attacks.pgd(model, x, y, eps, generator=g) for _ in range(3)])
    v = x[:, 0] + starts[..., 0]  # (restart, sample); the gradient is 0, so delta = start
    broken = (v <= 0.5).any(0)
    first_break = (v <= 0.5).float().argmax(0)  # ties in loss keep the earlier restart
    kept = torch.where(broken, first_break, v.argmax(0))
    expected = starts[kept, torch.arange(200)]
    delta = attacks.pgd(model, x, y, eps, restarts=3, generator=gen(11))
    assert (~broken).sum() > 5 and (broken & (v[0] > 0.5)).any()  # all cases occur
    assert torch.equal(delta, expected)


def test_early_stop_freezes_misclassified_points(trained, fmnist_test):
    x, y = fmnist_test
    kw = dict(steps=10, random_start=False)
    full = attacks.pgd(trained, x, y, EPS, **kw)
    stopped = attacks.pgd(trained, x, y, EPS, early_stop=True, **kw)
    wrong_clean = per_sample(trained, x, y)[1]
    assert wrong_clean.any()
    assert (stopped[wrong_clean] == 0).all() and (full[wrong_clean] != 0).any()
    # a point that ends correct was never frozen, so its trajectory is the plain one
    ok = ~per_sample(trained, x + stopped, y)[1]
    assert ok.any() and torch.equal(stopped[ok], full[ok])
    assert not torch.equal(stopped, full)


def test_seeds_reproduce_exactly(trained, fmnist_test):
    x, y = fmnist_test
    x, y = x[:64], y[:64]
    a = attacks.pgd(trained, x, y, EPS, restarts=2, generator=gen(7))
    b = attacks.pgd(trained, x, y, EPS, restarts=2, generator=gen(7))
    c = attacks.pgd(trained, x, y, EPS, restarts=2, generator=gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # no generator: a fresh one seeded 0, every call
    torch.testing.assert_close(attacks.pgd(trained, x, y, EPS),
                               attacks.pgd(trained, x, y, EPS, generator=gen(0)), rtol=0, atol=0)
    f = attacks.fgsm(trained, x, y, EPS, random_start=True)
    assert torch.equal(f, attacks.fgsm(trained, x, y, EPS, random_start=True, generator=gen(0)))
    kw = dict(n=64, pgd_steps=2, restarts=2)
    assert attacks.evaluate(trained, (x, y), EPS, **kw) == attacks.evaluate(trained, (x, y), EPS, **kw)
    assert attacks.evaluate(trained, (x, y), EPS, **kw) != attacks.evaluate(trained, (x, y), EPS, seed=1, **kw)


def test_autocast_does_not_leak_into_attacks(trained, fmnist_test):
    x, y = fmnist_test
    x, y = x[:64], y[:64]
    plain = {
        "pgd": attacks.pgd(trained, x, y, EPS, steps=5),
        "fgsm": attacks.fgsm(trained, x, y, EPS),
        "grad": input_grad(trained, x, y, precision="fp32"),
        "eval": attacks.evaluate(trained, (x, y), EPS, pgd_steps=3, restarts=1),
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert trained(x).dtype == torch.bfloat16  # autocast is live for this model
        mixed = {
            "pgd": attacks.pgd(trained, x, y, EPS, steps=5),
            "fgsm": attacks.fgsm(trained, x, y, EPS),
            "grad": input_grad(trained, x, y, precision="fp32"),
            "autocast_grad": input_grad(trained, x, y, precision="autocast"),
            "eval": attacks.evaluate(trained, (x, y), EPS, pgd_steps=3, restarts=1),
        }
        assert torch.is_autocast_enabled("cpu")  # and is still live for the caller
    for key in ("pgd", "fgsm", "grad"):
        assert mixed[key].dtype == torch.float32
        assert torch.equal(mixed[key], plain[key]), key
    assert mixed["eval"] == plain["eval"]
    # the training precision follows the caller's autocast: bf16 changes the gradient
    assert not torch.equal(mixed["autocast_grad"], plain["grad"])


def test_attack_loops_never_sync_with_the_host(trained, fmnist_test, monkeypatch):
    x, y = fmnist_test
    x, y = x[:32], y[:32]

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync inside an attack loop")

    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    attacks.pgd(trained, x, y, EPS, steps=3, restarts=2, early_stop=True)
    attacks.fgsm(trained, x, y, EPS, random_start=True)
    monkeypatch.undo()
    with pytest.raises(AssertionError):  # the trap works
        monkeypatch.setattr(torch.Tensor, "item", forbidden)
        x.sum().item()


# ---------------------------------------------------------------------------------------------
# side-effect freedom
# ---------------------------------------------------------------------------------------------
def tiny_bn_model() -> nn.Sequential:
    model = small_cnn(seed=1)
    with torch.no_grad():  # non-trivial running stats, so eval and train modes differ
        model[1].running_mean.fill_(0.3)
        model[1].running_var.fill_(2.0)
    model.train()
    model[4].eval()  # a mixed-mode model: modes must come back module by module
    model[3].weight.requires_grad_(False)
    model[0].weight.grad = torch.full_like(model[0].weight, 0.5)
    return model


def snapshot(model):
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "flags": [p.requires_grad for p in model.parameters()],
        "modes": [m.training for m in model.modules()],
        "rng": torch.get_rng_state(),
    }


def assert_same(before, after):
    assert before["state"].keys() == after["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key
    assert len(before["grads"]) == len(after["grads"])
    for g0, g1 in zip(before["grads"], after["grads"]):
        assert (g0 is None and g1 is None) or (g0 is not None and g1 is not None and torch.equal(g0, g1))
    assert before["flags"] == after["flags"]
    assert before["modes"] == after["modes"]
    assert torch.equal(before["rng"], after["rng"])


RUNS = {
    "fgsm_rs": lambda m, x, y: attacks.fgsm(m, x, y, 0.1, step=0.125, random_start=True),
    "pgd": lambda m, x, y: attacks.pgd(m, x, y, 0.1, steps=3, restarts=2, early_stop=True),
    "evaluate": lambda m, x, y: attacks.evaluate(m, (x, y), 0.1, pgd_steps=2, restarts=2, batch_size=8),
    "autoattack_apgd": lambda m, x, y: attacks.autoattack(m, x, y, 0.1, attacks=("apgd-ce",), steps=3),
    "autoattack_fab": lambda m, x, y: attacks.autoattack(m, x, y, 0.1, attacks=("fab-t",), steps=2),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_attacks_have_no_side_effects(fmnist, name):
    x = fmnist[2][:12]
    model = tiny_bn_model()
    with torch.no_grad():  # labels the model gets right, so every attack has work to do
        y = copy.deepcopy(model).eval()(x).argmax(1)
    x_flag = x.requires_grad
    before = snapshot(model)
    RUNS[name](model, x, y)
    assert_same(before, snapshot(model))
    assert x.requires_grad == x_flag


def test_input_grad_leaves_model_and_inputs_alone(fmnist):
    x, y = fmnist[2][:12], fmnist[3][:12]
    model = tiny_bn_model().eval()
    before = snapshot(model)
    input_grad(model, x, y, precision="fp32")
    assert_same(before, snapshot(model))
    assert not x.requires_grad


def test_attacks_run_in_eval_mode(fmnist):
    x, y = fmnist[2][:32], fmnist[3][:32]
    model = tiny_bn_model()  # in train mode, BatchNorm would use the batch statistics
    reference = copy.deepcopy(model).eval()
    torch.testing.assert_close(attacks.pgd(model, x, y, 0.1, steps=3),
                               attacks.pgd(reference, x, y, 0.1, steps=3), rtol=0, atol=0)
    with torch.no_grad():  # the modes do differ for this model (train mode on a throwaway copy)
        assert not torch.allclose(copy.deepcopy(model).train()(x), reference(x))


# ---------------------------------------------------------------------------------------------
# input_grad
# ---------------------------------------------------------------------------------------------
def test_input_grad_is_the_analytic_cross_entropy_gradient():
    torch.manual_seed(0)
    linear = nn.Linear(20, 5)
    x, y = torch.rand(6, 20), torch.randint(0, 5, (6,))
    onehot = F.one_hot(y, 5).float()
    with torch.no_grad():
        expected = (torch.softmax(linear(x), 1) - onehot) @ linear.weight  # d CE / d x, per sample
    torch.testing.assert_close(input_grad(linear, x, y, precision="fp32"), expected)
    torch.testing.assert_close(input_grad(linear, x, y, reduction="mean", precision="fp32"), expected / 6)
    # sum reduction: a sample's gradient does not depend on its batch
    torch.testing.assert_close(input_grad(linear, x[:1], y[:1], precision="fp32"), expected[:1])
    assert linear.weight.grad is None


def test_input_grad_create_graph_supports_double_backprop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.Softplus(), nn.Linear(16, 5))
    x, y = torch.rand(6, 20), torch.randint(0, 5, (6,))
    grad = input_grad(model, x, y, create_graph=True, precision="fp32")
    assert grad.requires_grad and all(p.grad is None for p in model.parameters())
    grad.pow(2).sum().backward()  # a gradient penalty, as GradAlign's regulariser does
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # an input that already carries a graph keeps it (e.g. learnable perturbation sizes)
    scale = torch.tensor(0.5, requires_grad=True)
    input_grad(model, x * scale, y, create_graph=True, precision="fp32").sum().backward()
    assert scale.grad is not None


# ---------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------
def test_evaluate_matches_a_direct_computation(trained, fmnist_test):
    x, y = fmnist_test
    res = attacks.evaluate(trained, (x, y), EPS, n=100, pgd_steps=4, restarts=2, seed=5)
    x, y = x[:100], y[:100]
    with torch.no_grad():
        logits = trained(x)
    delta = attacks.pgd(trained, x, y, EPS, steps=4, restarts=2, generator=gen(5))
    loss_p, wrong_p = per_sample(trained, x + delta, y)
    loss_f, wrong_f = per_sample(trained, x + attacks.fgsm(trained, x, y, EPS), y)
    assert res["n"] == 100
    assert res["fgsm_acc"] == pytest.approx(1 - wrong_f.float().mean().item())
    assert res["fgsm_loss"] == pytest.approx(loss_f.mean().item(), rel=1e-5)
    assert res["fgsm_acc"] < res["clean_acc"]
    assert res["clean_acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert res["clean_loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert res["pgd_acc"] == pytest.approx(1 - wrong_p.float().mean().item())
    assert res["pgd_loss"] == pytest.approx(loss_p.mean().item(), rel=1e-5)
    assert res["pgd_acc"] < res["clean_acc"]


def test_evaluate_reads_the_first_n_points_of_a_loader(trained, fmnist_test):
    x, y = fmnist_test
    drawn = []

    def loader():  # yields (x, y, meta) and fails if read further than needed
        for i in range(0, len(x), 30):
            drawn.append(i)
            yield x[i:i + 30], y[i:i + 30], {"index": torch.arange(i, i + 30)}

    kw = dict(pgd_steps=2, restarts=1)
    from_loader = attacks.evaluate(trained, loader(), EPS, n=70, **kw)
    assert from_loader == attacks.evaluate(trained, (x[:70], y[:70]), EPS, n=70, **kw)
    assert drawn == [0, 30, 60]
    # fewer points than asked for: all of them, and n says so
    assert attacks.evaluate(trained, (x[:20], y[:20]), EPS, n=50, **kw)["n"] == 20


# ---------------------------------------------------------------------------------------------
# AutoAttack (torchattacks)
# ---------------------------------------------------------------------------------------------
def test_autoattack_runs_and_is_no_better_than_clean(trained, fmnist_test):
    x, y = fmnist_test
    x, y = x[:16], y[:16]
    res = attacks.autoattack(trained, x, y, EPS, attacks=("apgd-ce",), steps=10)
    clean = accuracy(trained, x, y)
    assert res["n"] == 16
    assert res["aa_acc"] < clean  # it attacks, and clean mistakes stay mistakes


def test_autoattack_uses_the_papers_iteration_counts(trained):
    import torchattacks

    runner, names = attacks.build_autoattack(trained, EPS)
    assert isinstance(runner, torchattacks.AutoAttack)
    assert names == ["apgd-ce", "apgd-t", "fab-t", "square"]
    members = runner._autoattack.attacks
    assert [m.steps for m in members if not isinstance(m, torchattacks.Square)] == [100, 100, 100]
    assert [m.n_queries for m in members if isinstance(m, torchattacks.Square)] == [5000]
    runner, names = attacks.build_autoattack(trained, EPS, attacks=("apgd-ce", "square"), steps=7)
    assert isinstance(runner, torchattacks.MultiAttack) and names == ["apgd-ce", "square"]
    assert runner.attacks[0].steps == 7 and runner.attacks[0].loss == "ce"
    runner, _ = attacks.build_autoattack(trained, EPS, version="rand", attacks=("apgd-dlr",))
    assert isinstance(runner, torchattacks.APGD) and runner.loss == "dlr" and runner.eot_iter == 20


# ---------------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------------
BAD = {
    "eps<0": lambda m, x, y: attacks.pgd(m, x, y, -0.1),
    "eps>1": lambda m, x, y: attacks.fgsm(m, x, y, 1.5),
    "eps nan": lambda m, x, y: attacks.pgd(m, x, y, float("nan")),
    "steps=0": lambda m, x, y: attacks.pgd(m, x, y, 0.1, steps=0),
    "restarts=0": lambda m, x, y: attacks.pgd(m, x, y, 0.1, restarts=0),
    "alpha<=0": lambda m, x, y: attacks.pgd(m, x, y, 0.1, alpha=0.0),
    "fgsm step<0": lambda m, x, y: attacks.fgsm(m, x, y, 0.1, step=-1.0),
    "reduction": lambda m, x, y: input_grad(m, x, y, reduction="max", precision="fp32"),
    "precision": lambda m, x, y: input_grad(m, x, y, precision="fp16"),
    "n=0": lambda m, x, y: attacks.evaluate(m, (x, y), 0.1, n=0),
    "eval steps": lambda m, x, y: attacks.evaluate(m, (x, y), 0.1, pgd_steps=0),
    "eval range": lambda m, x, y: attacks.evaluate(m, (x * 255, y), 0.1, pgd_steps=1, restarts=1),
    "eval data": lambda m, x, y: attacks.evaluate(m, 3, 0.1),
    "aa version": lambda m, x, y: attacks.autoattack(m, x, y, 0.1, version="bogus"),
    "aa members": lambda m, x, y: attacks.autoattack(m, x, y, 0.1, attacks=("apgd-dlr",)),
    "aa range": lambda m, x, y: attacks.autoattack(m, x - 1, y, 0.1, attacks=("apgd-ce",)),
    "aa eps": lambda m, x, y: attacks.autoattack(m, x, y, 2.0),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_arguments_raise_a_clear_value_error(fmnist, case):
    model = small_cnn().eval()
    x, y = fmnist[2][:4], fmnist[3][:4]
    with pytest.raises(ValueError, match=r"must|need"):
        BAD[case](model, x, y)
