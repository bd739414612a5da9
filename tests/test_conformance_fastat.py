"""Conformance of the FastAT Benchmark's methods and SORA with their official training steps.

The same contract as ``tests/test_conformance.py`` (whose harness is loaded here by path, as
``benchmarks/method_cost.py`` does): each ``test_<method>_matches_reference`` holds our own
transcription of the reference training step, written from reading it (repository, file and
lines cited above it; where the repository's licence does not allow reuse, the transcription
follows its logic in our own words), runs it and codiag's ``train_step`` on twin copies of the
same tiny model, optimizer and batches, with the reference's noise drawn from a copy of the
method's generator, and compares perturbations, losses, parameters and BatchNorm buffers.
Several steps are run where the method carries state from step to step, and each test asserts
that the state it certifies is live (not at a value where a missing term would pass).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F

from codiag.methods import get_method


def _harness() -> ModuleType:
    name = "codiag_conformance"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parent / "test_conformance.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


H = _harness()
EPS = 8 / 255
clamp, uniform, make_batch, twins = H.clamp, H.uniform, H.make_batch, H.twins
generator_copy, ours_step, assert_same_step, assert_close = H.generator_copy, H.ours_step, H.assert_same_step, \
    H.assert_close


# ---------------------------------------------------------------------------------------------- SORA
def ref_sora_step(model, opt, X, y, eps, state, g, max_alpha=2.0, theta=0.05):
    """SecondOrderAT/SORA (CC-BY-NC; its logic, our words): ``src/training/train.py`` L54-58 (the
    coefficient starts at 0.99, theta 0.05), L86-93 (before each attack after the first, the batch
    coefficient mean_i <sign(g_i), b_i> / ||g_i||_1 from the previous batch's attack gradient ``g``
    and training gradient ``b`` w.r.t. delta, clipped to [-1, 1], enters an EMA), L113-119 and
    L136-138 (delta requires grad in the training pass; its gradient is ``b``);
    ``src/attacks/sora.py`` (the "Second Order Theory Sign" attack: alpha = min(1, 0.02 / (1 - c))
    * max_alpha (1 at c = 1), eta ~ U[-eps, eps] into the image, g = grad of the mean CE at X + eta,
    delta = eta + alpha * U[0,1] * sign(g) element-wise, into the image only);
    ``attack_params.py`` (max_alpha 2 eps). Pixel space (no normalisation)."""
    if "g" in state:
        gp, b = state["g"].flatten(1), state["b"].flatten(1)
        lc = ((torch.sign(gp) * b).sum(1) / gp.abs().sum(1).clamp_min(1e-12)).mean().item()
        state["coef"] = (1 - theta) * state["coef"] + theta * max(-1, min(1, lc))
    c = state["coef"]
    alpha = (1 if c == 1 else min(1, 0.02 / (1 - c))) * max_alpha * eps
    eta = clamp(uniform(X.shape, eps, g), -X, 1 - X).requires_grad_(True)
    grad = torch.autograd.grad(F.cross_entropy(model(X + eta), y), eta)[0].detach()
    u = torch.rand(grad.shape, generator=g)
    delta = clamp(eta.detach() + alpha * u * torch.sign(grad), -X, 1 - X).detach()
    opt.zero_grad()
    delta.requires_grad = True
    loss = F.cross_entropy(model(X + delta), y)
    loss.backward()
    opt.step()
    state["g"], state["b"], state["alpha"] = grad, delta.grad.detach(), alpha
    return delta.detach(), loss.detach()


def test_sora_matches_reference():
    ref, ref_opt, ours, our_opt = twins()
    method = get_method("sora", EPS)
    g = generator_copy(method)
    state = {"coef": 0.99}
    for step in range(3):
        x, y = make_batch(seed=step)
        expected = ref_sora_step(ref, ref_opt, x, y, EPS, state, g)
        assert_same_step(expected, ours_step(method, ours, our_opt, x, y), ref, ours)
        # the coefficient the next attack uses, and the step size this one used
        assert abs(float(method.coef) - ((1 - 0.05) * state["coef"] + 0.05 * _batch_coef(state))) < 1e-6
        assert abs(method.state()["alpha"] - state["alpha"] / EPS) < 1e-5   # fp32 beside float64
    # the adaptive step is live: by the third step alpha is below its cap (a run at the cap would
    # pass with the coefficient's update removed)
    assert state["alpha"] < 2 * EPS * 0.999
    cos = F.cosine_similarity(state["g"].flatten(1), state["b"].flatten(1), dim=1).mean().item()
    assert abs(method.state()["pert_align"] - cos) < 1e-6


def _batch_coef(state) -> float:
    gp, b = state["g"].flatten(1), state["b"].flatten(1)
    return max(-1.0, min(1.0, ((torch.sign(gp) * b).sum(1) / gp.abs().sum(1)).mean().item()))


def test_sora_probe_calls_leave_its_state_alone():
    ref, _, model, opt = twins()
    method = get_method("sora", EPS)
    x, y = make_batch()
    method.train_step(model, opt, x, y)
    before = (float(method.coef), method.generator("cpu").get_state().clone())
    method.perturb(model, x, y, generator=torch.Generator().manual_seed(5))
    assert float(method.coef) == before[0]
    assert torch.equal(method.generator("cpu").get_state(), before[1])


# ---------------------------------------------------------------------------------------------- NuAT
def ref_nuat_step(model, opt, data, target, eps, bits, counter, nuc_reg, b_val=0.5):
    """val-iisc/NuAT (MIT) ``CIFAR10/NuAT_cifar10.py``: ``NucAttack`` (one step of Feps = eps on
    CE + alt * Nuc_reg * ||out - rout||_nuc / batch, alt = counter % 2) and the loop's step (clean
    forward in train mode, Bernoulli start of B_val = b_val * eps into [0, 1], the attack in eval mode,
    delta clamped to [-eps, eps] and the image, then CE at the clean batch + Nuc_reg *
    ||out - adv_out||_nuc / batch, backward, step)."""
    out = model(data)
    adv = torch.clamp(data + b_val * eps * torch.sign(0.5 - bits), 0.0, 1.0)
    model.eval()
    img = adv.clone().requires_grad_(True)
    rout = model(img)
    cost = F.cross_entropy(rout, target)
    if counter % 2:
        cost = cost + nuc_reg * torch.norm(out - rout, "nuc") / len(target)
    (g,) = torch.autograd.grad(cost, img)
    img = torch.clamp(img.detach() + eps * torch.sign(g), 0, 1)
    delta = torch.clamp(img - data, -eps, eps)
    adv = torch.clamp(data + delta, 0.0, 1.0)
    model.train()
    opt.zero_grad()
    adv_out, out = model(adv), model(data)
    cost = F.cross_entropy(out, target) + nuc_reg * torch.norm(out - adv_out, "nuc") / len(target)
    cost.backward()
    opt.step()
    return cost.detach()


def test_nuat_matches_reference():
    # no BatchNorm over several steps: the reference's second clean pass only moves running statistics
    x, y, _ = H.batch()
    model, ref = H.net(bn=False), H.net(bn=False)
    method = get_method("nuat", H.EPS_NEW, seed=H.SEED, epochs=10)     # ramp over 9 epochs
    opt, ref_opt = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(ref.parameters(), lr=0.1)
    g = H.replay()
    for epoch, counters in ((0, (0, 1)), (3, (0, 1, 2))):
        method.on_epoch_start(epoch)
        nuc_reg = 4.5 * epoch / 9          # the reference ramps over 90 of 100 epochs; 9 of 10 here
        for counter in counters:
            loss = method.train_step(model, opt, x, y)
            expected = ref_nuat_step(ref, ref_opt, x, y, H.EPS_NEW, torch.rand(x.shape, generator=g), counter,
                                     nuc_reg)
            assert_close("loss", expected, loss)
            H.check_close_weights(model, ref)
    assert method.state()["lam"] == 1.5 and method.state()["nuclear_gap"] > 0    # the term is live


def test_nuat_first_step_with_batchnorm_matches_reference():
    x, y, _ = H.batch()
    model, ref = H.net(), H.net()
    method = get_method("nuat", H.EPS_NEW, seed=H.SEED)       # no epochs: lam 4.5 from the start
    method.on_epoch_start(0)
    method.train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y)
    ref_nuat_step(ref, torch.optim.SGD(ref.parameters(), lr=0.1), x, y, H.EPS_NEW,
                  torch.rand(x.shape, generator=H.replay()), 0, 4.5)
    H.check_close_weights(model, ref)


# ------------------------------------------------------------------- FGSM-MEP and ConvergeSmooth
def soft_targets(y, factor, classes=10):
    """The released codes' ``_label_smoothing``: ``factor`` on the true class, the rest spread evenly."""
    one_hot = torch.eye(classes)[y]
    return one_hot * factor + (one_hot - 1.0) * ((factor - 1.0) / (classes - 1))


def soft_ce(logits, targets):
    """The released codes' ``LabelSmoothLoss``: ``mean_i sum_k -t_ik log softmax(logits)_ik``."""
    return (-targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def ref_stride(loss, normal, cs, gamma=0.03, ratio=1.0, w2=1.0):
    """ConvergeSmooth's convergence-stride constraint (Mengnan-Zhao-Happy/ConvergeSmooth, no licence: its
    logic in our words; the same lines in the FastAT Benchmark's ``fast_at/fgsm_mep_cs.py``): in an
    active epoch, when |normal - pre_loss| exceeds min(max(gamma / ratio, beta_loss), gamma), add
    ``w2 * normal`` if the normal loss rose and subtract it if it fell; the epoch's normal losses,
    weighted by the batch size, make the next ``pre_loss`` (``beta_loss`` is its change)."""
    if cs["active"]:
        gmax = torch.tensor(gamma)
        if torch.abs(normal - cs["pre"]) > min(max(gmax / ratio, cs["beta"]), gmax):
            loss = loss + w2 * normal if normal - cs["pre"] > 0 else loss - w2 * normal
            cs["fired"] += 1
    cs["sum"] += normal.item() * cs["batch"]
    cs["n"] += cs["batch"]
    return loss


def ref_close_epoch(cs):
    mean = torch.tensor(cs["sum"] / cs["n"])
    cs["beta"], cs["pre"], cs["sum"], cs["n"] = mean - cs["pre"], mean, 0.0, 0


def ref_mep_step(model, opt, X, y, eps, all_delta, all_mom, idx, lam, cs=None, factor=0.6, decay=0.3):
    """jiaxiaojunQAQ/FGSM-PGI's FGSM-MEP as the ConvergeSmooth code runs it (``FGSM_MEP_CS.py``, the
    training loop; the FastAT Benchmark's ``fast_at/fgsm_pgi.py`` and ``fgsm_mep_cs.py``), logic in our
    words: the gradient of the label-smoothed loss at X + prior, momentum g / ||g||_1 (whole batch) +
    decay * momentum, the next prior one step of eps along sign(momentum) and the training perturbation
    one step along sign(g), both clamped to the eps ball and the image; loss = smoothed CE at X + delta
    + lam * MSE between the outputs at X + delta and X + prior (``--reg-single``), plus, for -CS, the
    convergence stride on the smoothed CE of the benign batch."""
    t = soft_targets(y, factor)
    delta, mom = all_delta[idx].clone().requires_grad_(True), all_mom[idx].clone()
    ori_output = model(X + delta)
    (g,) = torch.autograd.grad(soft_ce(ori_output, t), delta, retain_graph=True)
    mom = g / torch.norm(g, p=1) + mom * decay
    nxt = clamp(clamp(delta.detach() + eps * torch.sign(mom), -eps, eps), -X, 1 - X)
    d = clamp(clamp(delta.detach() + eps * torch.sign(g), -eps, eps), -X, 1 - X)
    output = model(X + d)
    loss = soft_ce(output, t) + lam * F.mse_loss(output, ori_output)
    if cs is not None:
        loss = ref_stride(loss, soft_ce(model(X), t), cs)
    opt.zero_grad()
    loss.backward()
    opt.step()
    all_mom[idx], all_delta[idx] = mom, nxt
    return d, loss.detach()


def _run_mep(name, lam, epochs, with_cs):
    x, y, _ = H.batch(32)
    model, ref = H.net(bn=False), H.net(bn=False)
    method = get_method(name, H.EPS_NEW, seed=H.SEED, num_samples=32, epochs=epochs)
    opt, ref_opt = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(ref.parameters(), lr=0.1)
    g = generator_copy(method)
    all_delta = H.EPS_NEW * torch.sign(uniform(x.shape, H.EPS_NEW, g))     # random corners
    all_mom = torch.zeros_like(x)
    cs = {"pre": 0, "beta": 0, "sum": 0.0, "n": 0, "fired": 0, "batch": 16, "active": False}
    for epoch in range(4):
        method.on_epoch_start(epoch)
        if epoch and with_cs:
            ref_close_epoch(cs)
        cs["active"] = 1 < epoch < epochs - 1
        for part in (torch.arange(0, 16), torch.arange(16, 32)):
            xb, yb = x[part], y[part]
            expected = ref_mep_step(ref, ref_opt, xb, yb, H.EPS_NEW, all_delta, all_mom, part, lam,
                                    cs if with_cs else None)
            assert_same_step(expected, ours_step(method, model, opt, xb, yb, H.Meta(part)), ref, model)
        # the stored priors and momenta are the reference's
        assert_close("priors", all_delta, method.store.read(torch.arange(32), None))
        assert_close("momenta", all_mom, method.momentum.read(torch.arange(32), None))
    return method, cs


def test_fgsm_mep_matches_reference():
    method, _ = _run_mep("fgsm_mep", 10.0, 10, with_cs=False)
    assert method.state()["output_mse"] > 0          # the regulariser is live


def test_fgsm_mep_cs_matches_reference():
    method, cs = _run_mep("fgsm_mep_cs", 0.0, 6, with_cs=True)
    assert cs["fired"] > 0                           # the constraint acted in the steps compared


def ref_rs_cs_step(model, opt, X, y, eps, g, cs, factor=0.6, gamma=0.03):
    """ConvergeSmooth ``FGSM_RS_CS.py`` ``train`` (logic in our words; the FastAT Benchmark's
    ``fast_at/fgsm_rs_cs.py``): start X + U[-eps, eps] clamped to the image, one step of eps along the
    sign of the plain CE's gradient there, clamped to the image only (no eps ball); loss = smoothed CE at
    the adversarial input + the convergence stride on the smoothed CE at the start."""
    t = soft_targets(y, factor)
    data = torch.clamp(X + uniform(X.shape, eps, g), 0, 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(data), y), data)
    data_adv = torch.clamp(data.detach() + eps * torch.sign(grad), 0, 1)
    loss = ref_stride(soft_ce(model(data_adv), t), soft_ce(model(data.detach()), t), cs, gamma=gamma)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return data_adv - X, loss.detach()


def test_fgsm_rs_cs_matches_reference():
    x, y, _ = H.batch(32, seed=1)
    x = x.clone()
    x[:, :, 0, :] = 0.0                               # the image clamp acts on a row
    model, ref = H.net(bn=False), H.net(bn=False)
    # gamma 0.005: this tiny model's loss moves less between epochs than a ResNet's (default 0.03)
    method = get_method("fgsm_rs_cs", H.EPS_NEW, seed=H.SEED, epochs=6, gamma=0.005)
    opt, ref_opt = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(ref.parameters(), lr=0.1)
    g = generator_copy(method)
    cs = {"pre": 0, "beta": 0, "sum": 0.0, "n": 0, "fired": 0, "batch": 16, "active": False}
    for epoch in range(4):
        method.on_epoch_start(epoch)
        if epoch:
            ref_close_epoch(cs)
        cs["active"] = 1 < epoch < 5
        for part in (slice(0, 16), slice(16, 32)):
            expected = ref_rs_cs_step(ref, ref_opt, x[part], y[part], H.EPS_NEW, g, cs, gamma=0.005)
            assert_same_step(expected, ours_step(method, model, opt, x[part], y[part]), ref, model)
    assert cs["fired"] > 0
    assert abs(method.state()["cs_prev_loss"] - float(cs["pre"])) < 1e-6


# ------------------------------------------------------------------------------ FGSM-UAP, FGSM-CUAP
def ref_uap_step(model, opt, images, labels, eps, uaps, momentum, rows, uap_eps, lam=10.0, decay=0.3, base=None):
    """fzjcdt/FastAT_Benchmark ``fast_at/fgsm_uap.py`` and ``fgsm_cuap.py`` (no licence: their logic in our
    words): the start is the universal perturbation of the row (the only one, or the label's), clipped to
    the eps ball and the image; one step of eps along the sign of the CE's gradient there, clipped again;
    CE at the adversarial input + lam * MSE of the two outputs; then the row's momentum takes the mean
    over its samples of g / ||g||_1 (whole batch) plus 0.3 times itself, and the perturbation a signed
    step of uap_eps along it, clipped to uap_eps. ``base``: the point the perturbation is added to (the
    images; FGSM-FUAP's random start)."""
    delta = clamp((images if base is None else base) + uaps[rows] - images, -eps, eps)
    adv = torch.clamp(images + delta, 0, 1).detach().requires_grad_(True)
    ori_output = model(adv)
    (g,) = torch.autograd.grad(F.cross_entropy(ori_output, labels), adv, retain_graph=True)
    delta = clamp(adv.detach() + eps * torch.sign(g) - images, -eps, eps)
    adv = torch.clamp(images + delta, 0, 1).detach()
    output = model(adv)
    loss = F.cross_entropy(output, labels) + lam * F.mse_loss(output, ori_output)
    opt.zero_grad()
    loss.backward()
    opt.step()
    cur = g / torch.norm(g, p=1)
    for r in set(rows.tolist()):
        momentum[r] = cur[rows == r].mean(dim=0) + momentum[r] * decay
        uaps[r] = clamp(uaps[r] + uap_eps * torch.sign(momentum[r]), -uap_eps, uap_eps)
    return adv - images, loss.detach()


@pytest.mark.parametrize("name", ["fgsm_uap", "fgsm_cuap"])
def test_fgsm_uap_matches_reference(name):
    ref, ref_opt, ours, our_opt = twins()
    method = get_method(name, EPS)
    uap_eps = 1.25 * EPS                                     # 10/255 at 8/255
    rows_of = (lambda y: y) if name == "fgsm_cuap" else (lambda y: torch.zeros_like(y))
    shape = (10 if name == "fgsm_cuap" else 1, 3, 8, 8)
    uaps = uap_eps * torch.sign(uniform(torch.Size(shape), uap_eps, generator_copy(method)))
    momentum = torch.zeros(shape)
    for step in range(3):
        x, y = make_batch(n=16, seed=step)
        expected = ref_uap_step(ref, ref_opt, x, y, EPS, uaps, momentum, rows_of(y), uap_eps)
        assert_same_step(expected, ours_step(method, ours, our_opt, x, y), ref, ours)
        assert_close("universal perturbations", uaps, method.uap)
        assert_close("momenta", momentum, method.uap_momentum)
    # the perturbations moved from their first draw
    assert not torch.equal(uaps, uap_eps * torch.sign(uniform(torch.Size(shape), uap_eps, generator_copy(
        get_method(name, EPS)))))
    assert method.state()["output_mse"] > 0


# ------------------------------------------------------------------------------------------ FGSM-FUAP
def tiny_features(model, x):
    """TinyBN's forward up to its linear layer: the benchmark's ``feature_layer=4`` (the pooled last stage
    of its FeatureResNet18, which is the input of its linear layer)."""
    h = F.relu(model.bn1(model.conv1(x)))
    return F.relu(model.bn2(model.conv2(h))).flatten(1)


def ref_fuap_step(model, opt, images, labels, eps, uaps, momentum, head, g, uap_eps, lam=10.0, decay=0.3):
    """fzjcdt/FastAT_Benchmark ``fast_at/fgsm_fuap.py`` ``train`` and ``FeatureLayer`` (no licence: their logic
    in our words): a random start U[-eps, eps] into the image; the network's penultimate features there,
    without gradient, in train mode; the head's cluster scores W1 f + b1 (``uap_linear``, 50 clusters) pick
    each sample's universal perturbation (argmax) before the head takes one Adam step (lr 0.001) on
    CE(W2 relu(scores) + b2, labels); the start plus that perturbation, into the eps ball and the image;
    one step of eps along the sign of the CE's gradient there, into the eps ball and the image; CE + lam *
    MSE of the two outputs; then each cluster's momentum takes the mean over its samples of g / ||g||_1
    (whole batch) plus 0.3 times itself, and its perturbation a signed step of uap_eps, clipped to uap_eps.
    The head is built at the first step (after the first random start) with nn.Linear's initial
    distribution, drawn from ``g``."""
    adv = torch.clamp(images + uniform(images.shape, eps, g), 0, 1)
    with torch.no_grad():
        feature = tiny_features(model, adv)
    if not head:
        k, d, c = uaps.shape[0], feature.shape[1], 10
        head["w1"], head["b1"] = uniform((k, d), d ** -0.5, g), uniform((k,), d ** -0.5, g)
        head["w2"], head["b2"] = uniform((c, k), k ** -0.5, g), uniform((c,), k ** -0.5, g)
        params = [head[n].requires_grad_(True) for n in ("w1", "b1", "w2", "b2")]
        head["opt"] = torch.optim.Adam(params, lr=0.001)
    scores = F.linear(feature, head["w1"], head["b1"])
    out = F.linear(F.relu(scores), head["w2"], head["b2"])
    rows = scores.max(dim=1)[1]
    head["opt"].zero_grad()
    F.cross_entropy(out, labels).backward()
    head["opt"].step()
    # from here FGSM-UAP's step, the clusters' perturbations added to the random start
    delta, loss = ref_uap_step(model, opt, images, labels, eps, uaps, momentum, rows, uap_eps, lam, decay, base=adv)
    return delta, loss, rows


def test_fgsm_fuap_matches_reference():
    ref, ref_opt, ours, our_opt = twins()          # TinyBN: the features forward moves BatchNorm statistics too
    method = get_method("fgsm_fuap", EPS)
    uap_eps, shape = 1.25 * EPS, (50, 3, 8, 8)
    g = generator_copy(method)
    uaps = uap_eps * torch.sign(uniform(torch.Size(shape), uap_eps, g))
    first = uaps.clone()
    momentum, head = torch.zeros(shape), {}
    used = set()
    for step in range(3):
        x, y = make_batch(n=16, seed=step)
        *expected, rows = ref_fuap_step(ref, ref_opt, x, y, EPS, uaps, momentum, head, g, uap_eps)
        assert_same_step(tuple(expected), ours_step(method, ours, our_opt, x, y), ref, ours)
        assert_close("universal perturbations", uaps, method.uap)
        assert_close("momenta", momentum, method.uap_momentum)
        for n in ("w1", "b1", "w2", "b2"):
            assert_close(f"head {n}", head[n], getattr(method, f"head_{n}"))
        assert method.state()["clusters_used"] == len(set(rows.tolist()))
        used |= set(rows.tolist())
    # several clusters took samples, and their perturbations moved from the first draw
    assert len(used) > 1 and not torch.equal(uaps, first) and method.state()["output_mse"] > 0


def test_fgsm_fuap_probe_calls_leave_its_state_alone_and_features_come_from_a_named_module():
    from codiag.errors import UsageError

    _, _, model, opt = twins()
    x, y = make_batch(n=16)
    method = get_method("fgsm_fuap", EPS)
    method.train_step(model, opt, x, y)
    before = [t.clone() for t in (method.uap, method.uap_momentum, method.head_w1, method.head_b2,
                                  method.generator("cpu").get_state())]
    method.perturb(model, x, y, generator=torch.Generator().manual_seed(5))
    method.start(model, x, y, generator=torch.Generator().manual_seed(5))
    after = (method.uap, method.uap_momentum, method.head_w1, method.head_b2, method.generator("cpu").get_state())
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    # naming the linear layer is the default; another module's input is another feature space
    named = get_method("fgsm_fuap", EPS, feature_module="fc")
    start = named.start(model, x, y, generator=torch.Generator().manual_seed(5))
    assert torch.equal(start, get_method("fgsm_fuap", EPS).start(model, x, y, generator=torch.Generator(
        ).manual_seed(5)))
    with pytest.raises(UsageError, match="no module named 'head'"):
        get_method("fgsm_fuap", EPS, feature_module="head").train_step(model, opt, x, y)
    with pytest.raises(UsageError, match="no nn.Linear; name the module"):
        get_method("fgsm_fuap", EPS).train_step(torch.nn.Sequential(torch.nn.Conv2d(3, 10, 8), torch.nn.Flatten()),
                                                opt, x, y)


@pytest.mark.slow
def test_fgsm_fuap_trains_an_epoch_under_the_protocol_and_reports_its_cost(tmp_path):
    """A real short training (cnn4, Fashion-MNIST, label smoothing 0.4 on every cross entropy, the
    head's too): the features come from cnn4's linear layer, and run.json counts FGSM-UAP's passes plus
    the features forward."""
    from codiag.runs import load_run
    from codiag.trainer import train

    train(dict(out=str(tmp_path / "run"), method="fgsm_fuap", epochs=1, train_limit=256, batch_size=64,
               label_smoothing=0.4, probes=["method_state"], probe_n=32, eval_n=32, eval_steps=3,
               eval_restarts=1, progress=False, checkpoint=False))
    run = load_run(tmp_path / "run")
    assert run.meta["status"] == "finished"
    assert run.meta["cost"] == {"grad_evals_per_step": 3.0, "forwards_per_step": 3.0}
    assert run.scalar("method_state", "clusters_used")["value"].iloc[-1] >= 1


# ------------------------------------------------------------------------------------------- LIET
def ref_random_smoothed_ce(logits, target, ls, g):
    """The benchmark's ``CustomCrossEntropyLoss`` (logic in our words): 1 - ls on the label, ls split over
    the other classes in proportions ``rand * ls`` normalised, drawn at every call."""
    smooth = torch.zeros_like(logits).scatter_(1, target.unsqueeze(1), 1.0) * (1 - ls)
    rand = torch.rand(smooth.shape, generator=g) * ls
    rand = rand.masked_fill(smooth.bool(), 0)
    smooth = smooth + rand / rand.sum(dim=1, keepdim=True) * ls
    return (-smooth * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def ref_liet_step(model, opt, images, labels, eps, g, counter, cur_lambda, state, ls=0.6, li_update=2):
    """fzjcdt/FastAT_Benchmark ``fast_at/liet.py`` (no licence: its logic in our words): every li_update
    batches, in eval mode, LI = eps * sign of the loss gradient at grey (0.5) images labelled 0..C-1; the
    start is LI[label] with a Bernoulli share U[0.1, 0.5] of its elements replaced by U[-r, r] noise
    (r = 2 eps above 8/255, else eps), subtracted from the images with probability 1/2, else added, into
    [0, 1]; one step of eps along the sign of the loss gradient there; projected to the eps ball (unless
    eps > 8/255) and the image; loss at the adversarial input + cur_lambda * JS(softmax outputs)."""
    wide = eps > 8 / 255
    if counter % li_update == 0:
        model.eval()
        grey = torch.full((10, *images.shape[1:]), 0.5).requires_grad_(True)
        (gr,) = torch.autograd.grad(ref_random_smoothed_ce(model(grey), torch.arange(10), ls, g), grey)
        state["LI"] = eps * torch.sign(gr)
        model.train()
    delta = state["LI"][labels].clone()
    bern = torch.rand(images.shape, generator=g)
    noise = uniform(images.shape, 2 * eps if wide else eps, g)
    ratio = torch.rand(1, generator=g).item() * (0.5 - 0.1) + 0.1
    delta[bern < ratio] = noise[bern < ratio]
    if torch.rand(1, generator=g) < 0.5:
        adv = torch.clamp(images - delta, 0, 1).requires_grad_(True)
    else:
        adv = torch.clamp(images + delta, 0, 1).requires_grad_(True)
    ori_output = model(adv)
    (grad,) = torch.autograd.grad(ref_random_smoothed_ce(ori_output, labels, ls, g), adv, retain_graph=True)
    adv = adv.detach() + eps * torch.sign(grad)
    if wide:
        adv = torch.clamp(adv, 0, 1)
    else:
        adv = torch.clamp(images + torch.clamp(adv - images, -eps, eps), 0, 1)
    output = model(adv)
    p, q = F.softmax(ori_output, dim=1), F.softmax(output, dim=1)
    m = torch.clamp((p + q) / 2.0, 0, 1).log()
    js = (F.kl_div(m, p, reduction="batchmean") + F.kl_div(m, q, reduction="batchmean")) / 2
    loss = ref_random_smoothed_ce(output, labels, ls, g) + cur_lambda * js
    opt.zero_grad()
    loss.backward()
    opt.step()
    return adv - images, loss.detach()


@pytest.mark.parametrize("eps", [8 / 255, 16 / 255])
def test_liet_matches_reference(eps):
    ref, ref_opt, ours, our_opt = twins()
    method = get_method("liet", eps, epochs=10, li_every=2)
    g = generator_copy(method)
    state: dict = {}
    method.on_epoch_start(0)
    for step in range(3):                 # label information at steps 0 and 2
        x, y = make_batch(n=16, seed=step)
        expected = ref_liet_step(ref, ref_opt, x, y, eps, g, step, 100 * 1 / 10, state)
        assert_same_step(expected, ours_step(method, ours, our_opt, x, y), ref, ours)
        assert_close("label information", state["LI"], method.li)
    assert method.state()["js"] > 0 and method.state()["lam"] == 10.0


# ------------------------------------------------------------------------------------- the roster
def test_fastat_roster_names_codiag_methods_with_valid_options():
    from codiag.fastat import FASTAT_ROSTER
    from codiag.methods import METHODS, check_method

    assert len({e.benchmark for e in FASTAT_ROSTER}) == len(FASTAT_ROSTER) == 23    # 22 configs + SORA
    assert all(e.codiag is not None for e in FASTAT_ROSTER)                         # every one in codiag
    for e in FASTAT_ROSTER:
        if e.codiag is not None:
            assert e.codiag in METHODS, e
            check_method(e.codiag, e.hparams)       # raises UsageError on an unknown option or value


@pytest.mark.slow
def test_every_roster_method_trains_one_short_epoch_with_its_benchmark_options(tmp_path):
    """Each of the benchmark's methods (with the options its CIFAR-10 config sets) and SORA trains one
    short epoch in codiag's trainer under the protocol (label smoothing, weight averaging, a held-out
    split and the best checkpoint): run.json finished, finite accuracies, a cost counted on the model."""
    from codiag.fastat import FASTAT_ROSTER
    from codiag.runs import load_run
    from codiag.trainer import train

    seen, threads = set(), torch.get_num_threads()
    torch.set_num_threads(1)          # tiny batches: more threads only add overhead
    try:
        for e in FASTAT_ROSTER:
            if (e.codiag, tuple(sorted(e.hparams.items()))) in seen:
                continue
            seen.add((e.codiag, tuple(sorted(e.hparams.items()))))
            out = tmp_path / e.benchmark
            train(dict(out=str(out), method=e.codiag, method_args=dict(e.hparams), epochs=1, train_limit=96,
                       batch_size=32, label_smoothing=0.4, weight_averaging=0.9, val_split=32, select="best",
                       probes=["robust_acc"], probe_n=16, eval_n=16, eval_steps=2, eval_restarts=1,
                       progress=False, checkpoint=False))
            meta = load_run(out).meta
            assert meta["status"] == "finished", e.benchmark
            assert 0 <= meta["final"]["pgd_acc"] <= 1, e.benchmark
            assert 0 <= meta["final"]["averaged"]["pgd_acc"] <= 1, e.benchmark
            assert meta["cost"]["grad_evals_per_step"] >= 1, e.benchmark
    finally:
        torch.set_num_threads(threads)
    assert len(seen) == 22          # 21 configurations (pgd_at and pgd_at_wa train alike) and SORA


# ------------------------------------------------------------------------------------------- SSAT
def ref_ssat_step(model, opt, images, labels, eps, alpha, g, c=3):
    """fzjcdt/FastAT_Benchmark ``fast_at/ssat.py`` (no licence: its logic in our words): FGSM-RS (uniform
    start into the image, step alpha, eps ball and image); a sample misclassified at its start trains on
    the clean image; for the others the checkpoints images + k * pert / c, k = 1..c-1, are classified in
    eval mode and the first misclassified one replaces the full step; CE at the result, backward, step."""
    adv = torch.clamp(images + uniform(images.shape, eps, g), 0, 1).requires_grad_(True)
    output = model(adv)
    (grad,) = torch.autograd.grad(F.cross_entropy(output, labels), adv)
    adv = torch.clamp(images + torch.clamp(adv.detach() + alpha * grad.sign() - images, -eps, eps), 0, 1)
    pert = adv - images
    correct = output.argmax(1) == labels
    adv[~correct] = images[~correct]
    model.eval()
    with torch.no_grad():
        todo = correct.clone()
        for k in range(1, c):
            xk = images + k * pert / c
            hit = todo & (model(xk).argmax(1) != labels)
            adv[hit] = xk[hit]
            todo &= ~hit
    model.train()
    loss = F.cross_entropy(model(adv), labels)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return adv - images, loss.detach(), int(correct.sum()), int((correct & ~todo).sum())


def test_ssat_matches_reference():
    ref, ref_opt, ours, our_opt = twins()
    method = get_method("ssat", EPS)
    g = generator_copy(method)
    checkpoints = 0
    for step in range(3):
        x, y = make_batch(n=64, seed=step)
        *expected, n_correct, n_checkpoint = ref_ssat_step(ref, ref_opt, x, y, EPS, 10 / 255, g)
        assert_same_step(tuple(expected), ours_step(method, ours, our_opt, x, y), ref, ours)
        assert method.state()["clean_share"] == pytest.approx(1 - n_correct / 64)
        checkpoints += n_checkpoint
    assert checkpoints > 0          # some samples trained on a checkpoint, some on the clean image
    assert method.state()["clean_share"] > 0


# ---------------------------------------------------------------------------------------- FGSM-PCO
def ref_pco_step(model, opt, X, y, eps, all_delta, idx, beta=1.5, lam=10.0, factor=0.6):
    """fzjcdt/FastAT_Benchmark ``fast_at/fgsm_pco.py`` (no licence: its logic in our words): the gradient
    of the smoothed loss at X + prior; the FGSM perturbation one step of eps from the prior, into the
    eps ball and the image (also the next prior); the confidence gap c = 1 - p_y at the prior (with its
    graph); training input c (X + prior) + (1 - c)(X + beta * delta); loss = smoothed CE there +
    lam * |MSE(f(X + delta), f(X + prior)) - MSE(f(X + delta), f(X_new))|."""
    t = soft_targets(y, factor)
    prior = all_delta[idx].clone()
    xg = X.clone().requires_grad_(True)
    ori_output = model(xg + prior)
    conf = (torch.eye(10)[y] * torch.softmax(ori_output, dim=1)).max(dim=1, keepdim=True).values
    conf = torch.clamp((1 - conf).unsqueeze(2).unsqueeze(3), 0, 1)
    (g,) = torch.autograd.grad(soft_ce(ori_output, t), xg, retain_graph=True)
    d = clamp(clamp(prior + eps * torch.sign(g), -eps, eps), -X, 1 - X)
    x_new = conf * (X + prior) + (1 - conf) * (X + beta * d)
    output, fgsm_output = model(x_new), model(X + d)
    loss = soft_ce(output, t) + lam * torch.abs(F.mse_loss(fgsm_output, ori_output) - F.mse_loss(fgsm_output, output))
    opt.zero_grad()
    loss.backward()
    opt.step()
    all_delta[idx] = d.detach()
    return d, loss.detach()


def test_fgsm_pco_matches_reference():
    x, y, _ = H.batch(32)
    model, ref = H.net(), H.net()            # with BatchNorm: the same passes in the same order
    method = get_method("fgsm_pco", H.EPS_NEW, seed=H.SEED, num_samples=32, epochs=4)
    opt, ref_opt = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(ref.parameters(), lr=0.1)
    all_delta = H.EPS_NEW * torch.sign(uniform(x.shape, H.EPS_NEW, generator_copy(method)))
    for epoch in range(2):
        method.on_epoch_start(epoch)
        for part in (torch.arange(0, 16), torch.arange(16, 32)):
            expected = ref_pco_step(ref, ref_opt, x[part], y[part], H.EPS_NEW, all_delta, part)
            assert_same_step(expected, ours_step(method, model, opt, x[part], y[part], H.Meta(part)), ref, model)
        assert_close("priors", all_delta, method.store.read(torch.arange(32), None))
    assert 0 < method.state()["confidence_gap"] < 1 and method.state()["output_mse"] > 0
