"""Each probe against an independent computation on a tiny model (no training, CPU, seconds).

The probes are run through a hand-built ProbeContext (as the monitor builds
it), and every expected value is recomputed here from its definition in
docs/PROBES.md / the cited paper with plain per-sample autograd loops.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from codiag import attacks
from codiag.probes import DEFAULT_PROBES, PROBES, resolve_probes
from codiag.probes.base import ProbeContext, ProbeSet
from codiag.tensors import eval_mode, input_grad

EPS = 0.1


def tiny_cnn(seed: int = 0, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, classes))


def data(n: int = 12, seed: int = 1, lo: float = 0.0, hi: float = 1.0, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(n, 1, 6, 6, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return ProbeSet(x=x, y=y, index=torch.arange(n), source="test")


def run_probe(name: str, model: nn.Module, ps: ProbeSet, state=None, train=None, **ctx_kw):
    """Run one probe at one event, as the monitor does (eval mode); return (scalars, arrays, ctx)."""
    ctx = ProbeContext(model, EPS, step=ctx_kw.pop("step", 0), epoch=0, probe_set=ps, train_set=train,
                       state=state if state is not None else {}, **ctx_kw)
    probe = resolve_probes([name])[0]
    with eval_mode(model), torch.enable_grad():
        probe.run(ctx)
    scalars = {k: float(v) for p, k, v in ctx.rows.scalars}
    arrays = {n: (a.cpu().numpy() if torch.is_tensor(a) else np.asarray(a)) for n, a in ctx.rows.arrays}
    return scalars, arrays, ctx


def per_sample_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """grad_x of each sample's own CE, one autograd call per sample (independent of the probes)."""
    out = []
    for i in range(len(x)):
        xi = x[i:i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xi), y[i:i + 1]), xi)
        out.append(g[0])
    return torch.stack(out)


def test_registry_holds_every_probe_of_the_design_table():
    table = {"grad_align", "fgsm_pgd_cos", "robust_acc", "weight_update", "perturbation_delta",
             "strength_gap", "instance_grad_norm", "linear_approx", "sign_agreement",
             "perturbation_norm", "loss_surface", "filters", "method_state", "local_linearity",
             "abnormal_examples", "pert_align", "grad_concentration"}
    assert set(PROBES) == table
    assert "loss_surface" not in DEFAULT_PROBES and "robust_acc" in DEFAULT_PROBES
    assert [p.name for p in resolve_probes("all")] == list(PROBES)
    from codiag.errors import UsageError
    with pytest.raises(UsageError, match="unknown probe"):
        resolve_probes("grad_align,nope")


def test_grad_align_of_a_linear_binary_model_is_one():
    # Two-class linear model: grad_x CE = (p1 - [y=1]) (w1 - w0): one direction, sign fixed by y.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 2))
    s, _, _ = run_probe("grad_align", model, data(classes=2))
    assert s["mean"] == pytest.approx(1.0, abs=1e-6)
    assert s["n_zero_grad"] == 0 and s["n"] == 12


def test_grad_align_matches_per_sample_cosines_and_counts_zero_gradients():
    model = tiny_cnn()
    ps = data()
    s, _, ctx = run_probe("grad_align", model, ps)
    # the same eta the probe drew (the event generator is re-seeded per purpose)
    u = torch.rand(ps.x.shape, generator=ctx.generator("grad_align.eta"))
    x_eta = (ps.x + (2 * u - 1) * EPS).clamp(0, 1)
    g1, g2 = per_sample_grads(model, ps.x, ps.y), per_sample_grads(model, x_eta, ps.y)
    expected = F.cosine_similarity(g1.flatten(1), g2.flatten(1), dim=1).mean()
    assert s["mean"] == pytest.approx(float(expected), abs=1e-5)
    assert s["mean"] < 0.9999  # a ReLU net is not linear: the test can tell

    # A model whose input gradient is exactly zero (dead ReLU on [0,1] inputs): undefined, counted.
    dead = nn.Sequential(nn.Flatten(), nn.Linear(36, 36), nn.ReLU(), nn.Linear(36, 3))
    with torch.no_grad():
        dead[1].weight.zero_()
        dead[1].bias.fill_(-1.0)
    s, _, _ = run_probe("grad_align", dead, ps)
    assert s["n_zero_grad"] == 12 and math.isnan(s["mean"])


def test_fgsm_pgd_cos_is_one_when_pgd_is_one_full_step_from_zero():
    model, ps = tiny_cnn(), data()
    s, _, ctx = run_probe("fgsm_pgd_cos", model, ps, pgd_steps=1, pgd_alpha=EPS, pgd_random_start=False)
    assert s["mean"] == pytest.approx(1.0, abs=1e-6) and s["n_zero"] == 0
    # the shared FGSM perturbation is codiag.attacks.fgsm
    with eval_mode(model):
        ref = attacks.fgsm(model, ps.x, ps.y, EPS)
    torch.testing.assert_close(ctx.fgsm_delta, ref)
    # with the default probe PGD (10 steps of eps/4, random start) the cosine is below 1
    s, _, ctx = run_probe("fgsm_pgd_cos", model, ps)
    cos = F.cosine_similarity(ctx.fgsm_delta.flatten(1), ctx.pgd_delta.flatten(1), dim=1).mean()
    assert s["mean"] == pytest.approx(float(cos), abs=1e-6) and s["mean"] < 0.999


def test_robust_acc_matches_direct_evaluation():
    model, ps = tiny_cnn(), data(n=32)
    s, _, ctx = run_probe("robust_acc", model, ps)
    with torch.no_grad():
        for label, delta in (("clean", 0), ("fgsm", ctx.fgsm_delta), ("pgd", ctx.pgd_delta)):
            logits = model(ps.x + delta)
            assert s[f"{label}_acc"] == pytest.approx(float((logits.argmax(1) == ps.y).float().mean()))
            assert s[f"{label}_loss"] == pytest.approx(float(F.cross_entropy(logits, ps.y)), rel=1e-5)
    assert s["pgd_loss"] >= s["clean_loss"]
    assert float(ctx.pgd_delta.abs().max()) <= EPS + 1e-6
    assert 0 <= float((ps.x + ctx.pgd_delta).min()) and float((ps.x + ctx.pgd_delta).max()) <= 1


def test_weight_update_equals_hand_computed_mse_per_tensor_and_kernel():
    model, ps = tiny_cnn(), data()
    state: dict = {}
    s0, a0, _ = run_probe("weight_update", model, ps, state=state)
    assert s0 == {} and a0 == {}  # first event: nothing to compare with
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
        model[0].weight[2].add_(0.5)  # one kernel jumps, as in ZeroGrad Fig. 1
    s1, a1, _ = run_probe("weight_update", model, ps, state=state, step=5)
    total_sq, total_n = 0.0, 0
    for name, p in model.named_parameters():
        d = (p.detach() - before[name]).double()
        assert s1[f"mse/{name}"] == pytest.approx(float((d ** 2).mean()), rel=1e-5)
        assert s1[f"l2/{name}"] == pytest.approx(float(d.norm()), rel=1e-5)
        total_sq += float((d ** 2).sum())
        total_n += d.numel()
    assert s1["mse_all"] == pytest.approx(total_sq / total_n, rel=1e-5)
    assert s1["l2_all"] == pytest.approx(math.sqrt(total_sq), rel=1e-5)
    kernel = a1["weight_update.kernel_mse.0"]
    d = (model[0].weight.detach() - before["0.weight"])
    np.testing.assert_allclose(kernel, [float((d[k] ** 2).mean()) for k in range(4)], rtol=1e-5)
    assert kernel.argmax() == 2


def test_instance_grad_norm_equals_per_sample_autograd_norms():
    model = tiny_cnn()
    train = data(n=20, seed=3)
    s, a, _ = run_probe("instance_grad_norm", model, data(), train=train)
    expected = per_sample_grads(model, train.x, train.y).flatten(1).norm(dim=1)
    np.testing.assert_allclose(a["instance_grad_norm"], expected.numpy(), rtol=1e-5, atol=1e-7)
    e = expected.double()
    assert s["mean"] == pytest.approx(float(e.mean()), rel=1e-5)
    assert s["max"] == pytest.approx(float(e.max()), rel=1e-5)
    assert s["median"] == pytest.approx(float(e.sort().values[(len(e) + 1) // 2 - 1]), rel=1e-5)
    assert s["long_tail_ratio"] == pytest.approx(float((e ** 2).mean() / e.mean() ** 2), rel=1e-5)
    assert s["long_tail_ratio"] >= 1.0


def test_instance_grad_norm_uses_the_methods_starting_point():
    class Start:  # a method exposing its start (e.g. FGSM-RS's uniform noise), a pure call
        def start(self, model, x, y, index, generator=None):
            return torch.full_like(x, 0.05)

    model, train = tiny_cnn(), data(n=8, seed=3, lo=0.1, hi=0.9)
    _, a, _ = run_probe("instance_grad_norm", model, data(), train=train, method=Start())
    expected = per_sample_grads(model, train.x + 0.05, train.y).flatten(1).norm(dim=1)
    np.testing.assert_allclose(a["instance_grad_norm"], expected.numpy(), rtol=1e-5)


def pgd_attack(model, x, y, index=None, generator=None):
    """The probe PGD itself, as a method's perturbation."""
    return attacks.pgd(model, x, y, EPS, steps=10, generator=generator)


def test_strength_gap_and_sign_disagreement_are_zero_when_the_method_is_pgd():
    model, ps = tiny_cnn(), data(n=16)
    s, _, ctx = run_probe("strength_gap", model, ps, attack=pgd_attack)
    assert s["gap"] == 0.0 and s["loss_method"] == s["loss_pgd"]
    assert s["acc_method"] == pytest.approx(float(ctx.at_pgd[1].float().mean()))
    s, _, _ = run_probe("sign_agreement", model, ps, attack=pgd_attack)
    assert s["disagree"] == 0.0
    # default attack (FGSM): G = L(FGSM) - L(PGD), checked against a direct computation
    s, _, ctx = run_probe("strength_gap", model, ps)
    with torch.no_grad():
        lf = F.cross_entropy(model(ps.x + ctx.fgsm_delta), ps.y)
        lp = F.cross_entropy(model(ps.x + ctx.pgd_delta), ps.y)
    assert s["gap"] == pytest.approx(float(lf - lp), abs=1e-6) and s["gap"] != 0
    with torch.no_grad():    # the training attack's accuracy: here FGSM's
        fgsm_acc = (model(ps.x + ctx.fgsm_delta).argmax(1) == ps.y).float().mean()
    assert s["acc_method"] == pytest.approx(float(fgsm_acc))


def test_strength_gap_transfer_accuracy_on_a_reference_model():
    model, ps = tiny_cnn(), data(n=16)
    ref = tiny_cnn(seed=5)
    ref.train()
    s, _, ctx = run_probe("strength_gap", model, ps, reference_model=ref)
    with torch.no_grad():
        acc = (ref(ps.x + ctx.method_delta).argmax(1) == ps.y).float().mean()
    assert s["transfer_acc"] == pytest.approx(float(acc))
    assert 0.0 <= s["transfer_acc_random"] <= 1.0
    assert ref.training  # its mode is restored


def test_sign_agreement_counts_nonzero_coordinates_of_different_sign():
    model, ps = tiny_cnn(), data(n=16)

    def half_zero(model, x, y, index=None, generator=None):  # ZeroGrad-like: zeroed coordinates
        d = EPS * input_grad(model, x, y, precision="fp32").sign()
        d[..., :3] = 0
        return d

    s, _, ctx = run_probe("sign_agreement", model, ps, attack=half_zero)
    m, p = ctx.method_delta, ctx.pgd_delta
    expected = sum(int(mi != 0 and np.sign(mi) != np.sign(pi))
                   for mi, pi in zip(m.flatten().tolist(), p.flatten().tolist())) / m.numel()
    assert s["disagree"] == pytest.approx(expected) and 0 < s["disagree"] < 1


def test_perturbation_delta_is_zero_for_an_unchanged_model_and_the_mse_otherwise():
    model, ps = tiny_cnn(), data(n=16)

    def fgsm_rs(model, x, y, index=None, generator=None):  # random start from the given generator
        start = (torch.rand(x.shape, generator=generator) * 2 - 1) * EPS
        g = input_grad(model, (x + start).clamp(0, 1), y, precision="fp32")
        return (start + 1.25 * EPS * g.sign()).clamp(-EPS, EPS)

    state: dict = {}
    run_probe("perturbation_delta", model, ps, state=state, attack=fgsm_rs)
    first = state["perturbation_delta"]["prev"].clone()
    s, _, _ = run_probe("perturbation_delta", model, ps, state=state, attack=fgsm_rs)
    assert s["mse"] == 0.0  # same random start at every event: only the model can move it
    with torch.no_grad():
        model[3].weight.mul_(-1)
    s, _, _ = run_probe("perturbation_delta", model, ps, state=state, attack=fgsm_rs)
    now = state["perturbation_delta"]["prev"]
    assert s["mse"] == pytest.approx(float((now - first).pow(2).mean()), rel=1e-6) and s["mse"] > 0


def test_perturbation_norm_of_an_unclamped_fgsm_perturbation():
    model, ps = tiny_cnn(), data(n=8, lo=0.2, hi=0.8)  # away from the box: no clamping
    s, a, _ = run_probe("perturbation_norm", model, ps)
    d = 36
    assert s["linf_mean"] == pytest.approx(EPS)
    assert s["l1_mean"] == pytest.approx(EPS * d, rel=1e-5)
    assert s["l2_mean"] == pytest.approx(EPS * math.sqrt(d), rel=1e-5)
    assert s["abs_mean"] == pytest.approx(EPS, rel=1e-5)
    np.testing.assert_allclose(a["perturbation_norm.l2"], EPS * math.sqrt(d), rtol=1e-5)


def test_linear_approx_matches_its_definition():
    model, ps = tiny_cnn(), data(n=10)
    s, _, ctx = run_probe("linear_approx", model, ps)
    assert s["err/k=0"] == 0.0 and s["l2/k=0"] == 0.0
    g = per_sample_grads(model, ps.x, ps.y)
    delta = ((ps.x + EPS * g.sign()).clamp(0, 1) - ps.x)
    with torch.no_grad():
        l0 = F.cross_entropy(model(ps.x), ps.y, reduction="none")
        l1 = F.cross_entropy(model(ps.x + delta), ps.y, reduction="none")
    err = (l1 - l0 - (delta * g).flatten(1).sum(1)).abs().mean()
    assert s["err/k=1"] == pytest.approx(float(err), rel=1e-4, abs=1e-7)
    assert s["l2/k=1"] == pytest.approx(float(delta.flatten(1).norm(dim=1).mean()), rel=1e-5)
    assert s["l2/k=0.25"] < s["l2/k=0.5"] < s["l2/k=1"]  # fixed Linf, growing L2


def test_loss_surface_centre_is_the_clean_loss_of_each_gradient_norm_subset():
    model = tiny_cnn()
    train = data(n=40, seed=4)
    _, a, ctx = run_probe("loss_surface", model, data(), train=train)
    assert a["loss_surface.low"].shape == (9, 9) and a["loss_surface.high"].shape == (9, 9)
    np.testing.assert_allclose(a["loss_surface.axes"], np.linspace(-EPS, EPS, 9), atol=1e-7)
    norms = per_sample_grads(model, train.x, train.y).flatten(1).norm(dim=1)
    order = norms.argsort()
    with torch.no_grad():
        for label, idx in (("low", order[:4]), ("high", order[-4:])):
            centre = F.cross_entropy(model(train.x[idx]), train.y[idx])
            assert a[f"loss_surface.{label}"][4, 4] == pytest.approx(float(centre), rel=1e-5)


def test_filters_and_method_state():
    model = tiny_cnn()
    _, a, _ = run_probe("filters", model, data())
    np.testing.assert_array_equal(a["filters.weight"], model[0].weight.detach().numpy())
    np.testing.assert_allclose(a["filters.norms"], model[0].weight.detach().flatten(1).norm(dim=1).numpy())

    class M:
        def state(self):
            return {"q": 0.35, "alpha": torch.tensor(0.5), "step_sizes": np.arange(4.0)}

    s, a, _ = run_probe("method_state", model, data(), method=M())
    assert s == {"q": 0.35, "alpha": 0.5}
    np.testing.assert_array_equal(a["method_state.step_sizes"], np.arange(4.0))
    s, a, _ = run_probe("method_state", model, data())  # no method: nothing written
    assert s == {} and a == {}


def test_shared_results_are_computed_once_per_event(monkeypatch):
    calls = {"pgd": 0}
    real = attacks.pgd

    def counting(*args, **kw):
        calls["pgd"] += 1
        return real(*args, **kw)

    monkeypatch.setattr(attacks, "pgd", counting)
    model, ps = tiny_cnn(), data()
    ctx = ProbeContext(model, EPS, 0, 0, ps)
    with eval_mode(model), torch.enable_grad():
        for probe in resolve_probes("all"):
            probe.run(ctx)
    assert calls["pgd"] == 1


def test_pert_align_matches_its_definition_and_is_one_for_a_linear_model():
    model, ps = tiny_cnn(), data()
    s, _, ctx = run_probe("pert_align", model, ps)
    u = torch.rand(ps.x.shape, generator=ctx.generator("pert_align.eta"))
    eta = (ps.x + (2 * u - 1) * EPS).clamp(0, 1) - ps.x
    g_start = per_sample_grads(model, ps.x + eta, ps.y)
    delta = ((ps.x + (eta + 1.25 * EPS * g_start.sign()).clamp(-EPS, EPS)).clamp(0, 1)) - ps.x
    g_adv = per_sample_grads(model, ps.x + delta, ps.y)
    expected = F.cosine_similarity(g_start.flatten(1), g_adv.flatten(1), dim=1).mean()
    assert s["mean"] == pytest.approx(float(expected), abs=1e-5)
    assert s["mean"] < 0.9999 and s["n_zero_grad"] == 0
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(36, 2))
    assert run_probe("pert_align", linear, data(classes=2))[0]["mean"] == pytest.approx(1.0, abs=1e-6)


def test_grad_concentration_of_a_linear_model_is_that_of_its_weight_difference():
    # two classes, linear: grad_x CE = (p1 - [y=1]) (w1 - w0), so the measures are those of w1 - w0
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 2))
    w = (model[1].weight[1] - model[1].weight[0]).detach().abs().numpy().astype(np.float64)
    s, _, _ = run_probe("grad_concentration", model, data(classes=2))
    d = w.size
    p = w / w.sum()
    assert s["participation"] == pytest.approx((w.sum() / np.sqrt((w ** 2).sum())) ** 2 / d, rel=1e-4)
    assert s["entropy_gap"] == pytest.approx(math.log(d) + float((p * np.log(p)).sum()), abs=1e-4)
    # all of the gradient in one coordinate: PR = 1 (1/d after normalising), gap log d
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[1, 7] = 3.0
    s, _, _ = run_probe("grad_concentration", model, data(classes=2))
    assert s["participation"] == pytest.approx(1 / d, rel=1e-5)
    assert s["entropy_gap"] == pytest.approx(math.log(d), abs=1e-5)
    assert s["n_zero_grad"] == 0
