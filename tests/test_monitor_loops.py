"""codiag.monitor around hand-written loops in common styles: no silent failure, no broken promise.

Each test trains a short real loop on a seeded Fashion-MNIST slice, written the way
users write it (their own model, loader, attack), in one of the styles that used to
switch monitoring off without an error: tuple or dict model outputs, an attack that
calls ``model.train()`` / ``model.eval()`` itself, standardized inputs, an attack with
an ``eps=`` default, ``epoch_end()`` inside ``torch.inference_mode()``, ``every=N``
without ``epoch_end()``, a class-sorted test set, no ``config=``, and a
``torch.compile``d model.
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from codiag.errors import UsageError
from codiag.monitoring import monitor
from codiag.runs import load_run

EPS = 0.1
MEAN, STD = 0.2860, 0.3530   # Fashion-MNIST's pixel mean and standard deviation


@pytest.fixture(scope="module")
def fmnist():
    """(x_train, y_train, x_test, y_test): 768 training and 256 test images in [0, 1], seeded order."""
    from codiag.data import load_dataset

    tr = load_dataset("fashion_mnist", train=True, limit=768)
    te = load_dataset("fashion_mnist", train=False, limit=256)
    return tr.images.float() / 255, tr.labels, te.images.float() / 255, te.labels


class Net(nn.Module):
    """A user's CNN; ``style`` picks what forward returns: logits, (logits, features) or {"logits": ...}."""

    def __init__(self, style: str = "tensor", bn: bool = False) -> None:
        super().__init__()
        self.style = style
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(8 * 14 * 14, 10)

    def forward(self, x):
        feats = self.drop(F.max_pool2d(F.relu(self.bn(self.conv(x))), 2).flatten(1))
        logits = self.fc(feats)
        if self.style == "tuple":
            return logits, feats
        if self.style == "dict":
            return {"logits": logits, "features": feats}
        return logits


def logits_of(out):
    return out["logits"] if isinstance(out, dict) else out[0] if isinstance(out, tuple) else out


def user_fgsm(model, x, y, eps=EPS):
    """The common user FGSM, with eps as a default argument (codiag must not fill it)."""
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(logits_of(model(x)), y), x)
    return (eps * g.sign()).detach()


def train_loop(model, opt, loader, attack, epochs: int, mon=None, space=lambda d: d, epoch_end=True):
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            delta = attack(model, x, y)
            loss = F.cross_entropy(logits_of(model(x + space(delta))), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if mon is not None and epoch_end:
            mon.epoch_end()


def make(fmnist, style="tensor", bn=False, n=256, seed=0):
    x, y, xt, yt = fmnist
    torch.manual_seed(seed)
    model = Net(style, bn)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = DataLoader(TensorDataset(x[:n], y[:n]), batch_size=64, shuffle=True)
    return model, opt, loader, (xt, yt)


def independent_acc(model_fn, x, y, eps=None) -> tuple[float, float]:
    """(clean accuracy, FGSM-from-zero accuracy) computed here, without codiag."""
    with torch.no_grad():
        clean = (model_fn(x).argmax(1) == y).float().mean().item()
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model_fn(xg), y, reduction="sum"), xg)
    with torch.no_grad():
        adv = (x + eps * g.sign()).clamp(0, 1)
        fgsm = (model_fn(adv).argmax(1) == y).float().mean().item()
    return clean, fgsm


def last(run, probe, key) -> float:
    return float(run.scalar(probe, key)["value"].iloc[-1])


# -- tuple / dict outputs ---------------------------------------------------------------------
@pytest.mark.parametrize("style", ["tuple", "dict"])
def test_tuple_and_dict_outputs_are_probed_through_output_fn(tmp_path, fmnist, style):
    model, opt, loader, test = make(fmnist, style)
    with monitor(model, opt, tmp_path / "r", eps=EPS, probe_data=test, attack=user_fgsm,
                 probes="robust_acc,grad_align,strength_gap", output_fn=logits_of, probe_n=128) as mon:
        train_loop(model, opt, loader, user_fgsm, 2, mon)
    run = load_run(tmp_path / "r")
    assert run.events_of("probe_error") == [] and run.status == "finished"
    assert len(run.scalar("robust_acc", "pgd_acc")) >= 3 and len(run.scalar("grad_align", "mean")) >= 3
    model.eval()
    clean, fgsm = independent_acc(lambda v: logits_of(model(v)), test[0][:128], test[1][:128], EPS)
    assert last(run, "robust_acc", "clean_acc") == pytest.approx(clean, abs=1e-6)
    assert last(run, "robust_acc", "fgsm_acc") == pytest.approx(fgsm, abs=1e-6)


def test_a_non_tensor_output_without_output_fn_is_refused_at_step_0(tmp_path, fmnist):
    model, opt, _, test = make(fmnist, "tuple")
    with pytest.raises(UsageError, match="output_fn") as err:
        with monitor(model, opt, tmp_path / "r", eps=EPS, probe_data=test, probe_n=32):
            pass
    assert "\n" not in str(err.value)
    assert load_run(tmp_path / "r").status == "failed"


# -- attacks that switch modes themselves --------------------------------------------------------
def mode_switching_fgsm(model, x, y):
    """A user's attack that calls model.eval() for the gradient and model.train() after it."""
    model.eval()
    delta = user_fgsm(model, x, y)
    model.train()
    return delta


def test_an_attack_that_switches_modes_leaves_training_bit_identical(tmp_path, fmnist):
    def run(monitored: bool):
        model, opt, loader, test = make(fmnist, bn=True)
        if not monitored:
            train_loop(model, opt, loader, mode_switching_fgsm, 2)
            return model
        with pytest.warns(RuntimeWarning, match="mode") as record:
            with monitor(model, opt, tmp_path / "r", eps=EPS, probe_data=test, attack=mode_switching_fgsm,
                         every=2, probes="all", probe_n=32, train_data=loader, train_probe_n=32) as mon:
                train_loop(model, opt, loader, mode_switching_fgsm, 2, mon)
        assert sum("changed the model's train/eval mode" in str(w.message) for w in record) == 1
        return model

    plain, monitored = run(False), run(True)
    for (k, a), (_, b) in zip(plain.state_dict().items(), monitored.state_dict().items()):
        assert torch.equal(a, b), f"{k} differs"
    assert load_run(tmp_path / "r").events_of("probe_error") == []


# -- standardized inputs ---------------------------------------------------------------------------
def test_standardized_loaders_record_the_true_accuracies(tmp_path, fmnist):
    model, opt, loader, (xt, yt) = make(fmnist)
    std_loader = DataLoader(TensorDataset((loader.dataset.tensors[0] - MEAN) / STD, loader.dataset.tensors[1]),
                            batch_size=64, shuffle=True)
    std_test = ((xt - MEAN) / STD, yt)
    eps_std = EPS / STD   # the user's attack works in the standardized space

    def std_fgsm(model, x, y):
        return user_fgsm(model, x, y, eps_std)

    with pytest.raises(UsageError, match=r"normalization=\(mean, std\)"):
        monitor(model, opt, tmp_path / "refused", eps=EPS, probe_data=std_test, probe_n=64).start()
    with monitor(model, opt, tmp_path / "r", eps=EPS, probe_data=std_test, attack=std_fgsm,
                 probes="robust_acc,strength_gap,perturbation_norm", normalization=(MEAN, STD),
                 probe_n=128) as mon:
        train_loop(model, opt, std_loader, std_fgsm, 2, mon)
    run = load_run(tmp_path / "r")
    assert run.events_of("probe_error") == []
    model.eval()
    clean, fgsm = independent_acc(lambda v: model((v - MEAN) / STD), xt[:128], yt[:128], EPS)
    assert clean > 0.5
    assert last(run, "robust_acc", "clean_acc") == pytest.approx(clean, abs=1e-6)
    assert last(run, "robust_acc", "fgsm_acc") == pytest.approx(fgsm, abs=1e-6)
    # the user's delta came back in pixels: its L-inf norm is eps (up to the [0, 1] clamp)
    linf = run.scalar("perturbation_norm", "linf_mean")["value"] if "linf_mean" in set(
        run.metrics.loc[run.metrics["probe"] == "perturbation_norm", "key"]) else None
    if linf is not None:
        assert float(linf.iloc[-1]) <= EPS + 1e-5


# -- the attack protocol -------------------------------------------------------------------------
def test_attack_protocol_passes_index_and_generator_only_as_named_keywords(tmp_path, fmnist):
    seen = []

    def with_generator(model, x, y, *, generator):
        seen.append(type(generator).__name__)
        return user_fgsm(model, x, y)

    model, opt, loader, test = make(fmnist)
    for name, attack in (("eps_default", user_fgsm), ("generator", with_generator)):
        with monitor(model, opt, tmp_path / name, eps=EPS, probe_data=test, attack=attack,
                     probes="robust_acc,strength_gap,perturbation_delta,sign_agreement,perturbation_norm",
                     probe_n=64) as mon:
            train_loop(model, opt, loader, user_fgsm, 1, mon)
        run = load_run(tmp_path / name)
        assert run.events_of("probe_error") == [], name
        # the method's perturbation is eps from zero: FGSM's, so the strength gap equals FGSM's loss gap
        assert len(run.scalar("strength_gap", "gap")) == 2
    assert seen and set(seen) == {"Generator"}


# -- inference mode ---------------------------------------------------------------------------
@pytest.mark.parametrize("context", ["inference_mode", "no_grad"])
def test_epoch_end_inside_inference_mode_or_no_grad_records_every_probe(tmp_path, fmnist, context):
    model, opt, loader, test = make(fmnist)
    ctx = torch.inference_mode if context == "inference_mode" else torch.no_grad
    with monitor(model, opt, tmp_path / "r", eps=EPS, probe_data=test, attack=user_fgsm,
                 probes="robust_acc,grad_align,fgsm_pgd_cos", probe_n=64) as mon:
        for _ in range(2):
            train_loop(model, opt, loader, user_fgsm, 1)
            with ctx():   # the user's validation block
                model.eval()
                _ = model(test[0][:64]).argmax(1)
                mon.epoch_end()
    run = load_run(tmp_path / "r")
    assert run.events_of("probe_error") == []
    assert run.scalar("grad_align", "mean")["step"].tolist() == [0, 4, 8]


# -- cadence without epoch_end, sorted test sets, runs without config ----------------------------------
def test_every_n_without_epoch_end_warns_once(tmp_path, fmnist):
    model, opt, loader, test = make(fmnist)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with monitor(model, opt, tmp_path / "r", eps=EPS, probe_data=test, probes="robust_acc",
                     every=3, probe_n=32) as mon:
            train_loop(model, opt, loader, user_fgsm, 2, mon, epoch_end=False)
    hits = [w for w in record if "epoch_end" in str(w.message)]
    assert len(hits) == 1


def test_a_class_sorted_test_set_warns_and_balanced_selection_covers_every_class(tmp_path, fmnist):
    model, opt, _, (xt, yt) = make(fmnist)
    order = torch.argsort(yt, stable=True)
    sorted_test = TensorDataset(xt[order], yt[order])
    with pytest.warns(UserWarning, match="probe_select='balanced'"):
        with monitor(model, opt, tmp_path / "first", eps=EPS, probe_data=sorted_test, probes="robust_acc",
                     probe_n=64):
            pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with monitor(model, opt, tmp_path / "balanced", eps=EPS, probe_data=DataLoader(sorted_test),
                     probes="robust_acc", probe_n=64, probe_select="balanced") as mon:
            labels = mon.probe_set.y
    counts = torch.bincount(labels, minlength=10)
    assert (counts >= 6).all() and counts.sum() == 64
    again = load_run(tmp_path / "balanced").config["monitor"]["probe_set"]["indices"]
    assert again == sorted(again) and len(set(again)) == 64


def test_a_run_without_config_reports_like_a_trainer_run(tmp_path, fmnist):
    from codiag.reports.build import build

    model, opt, loader, test = make(fmnist)
    calls = {"n": 0}

    def flaky(model, x, y):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("attack broke after step 0")
        return user_fgsm(model, x, y)

    with monitor(model, opt, tmp_path / "r", eps=EPS, probe_data=test, attack=flaky,
                 probes="robust_acc,strength_gap", probe_n=32) as mon:
        with pytest.warns(RuntimeWarning, match="strength_gap"):
            train_loop(model, opt, loader, user_fgsm, 2, mon)
        mon.log("train", {"loss": float("nan")})
    run = load_run(tmp_path / "r")
    assert run.config["eps"] == EPS and run.config["model"] == "Net" and run.config["dataset"] == "tensors"
    assert run.config["method"] == "test_a_run_without_config_reports_like_a_trainer_run.<locals>.flaky"
    assert run.meta["probe_errors"] == {"strength_gap": 2}
    page = build([tmp_path / "r"], tmp_path / "report", figures=[], analytic=False).page.read_text()
    assert "?" not in page.split("<h2")[2][:200] and "eps nan" not in page and "eps 0.1" in page
    assert "trainer's final evaluation" not in page
    assert "strength_gap failed 2 times" in page and "diverged at step 8" in page


# -- torch.compile ---------------------------------------------------------------------------------
def test_compiled_models_are_probed_through_the_original_module(tmp_path, fmnist):
    from torch._dynamo.utils import counters

    model, opt, loader, test = make(fmnist)
    compiled = torch.compile(model, backend="eager")
    train_loop(compiled, opt, loader, user_fgsm, 1)   # compiled once, in train mode, before monitoring
    frames = dict(counters["frames"])
    with monitor(compiled, opt, tmp_path / "r", eps=EPS, probe_data=test, attack=user_fgsm,
                 probes="robust_acc,weight_update,strength_gap", probe_n=32, every=2) as mon:
        train_loop(compiled, opt, loader, user_fgsm, 1, mon)   # events at steps 0, 2 and 4, in eval mode
    assert mon.n_events == 3
    assert dict(counters["frames"]) == frames, "probe events recompiled the model"
    keys = set(load_run(tmp_path / "r").metrics["key"])
    assert "mse/conv.weight" in keys
    assert not any("_orig_mod" in k for k in keys)


# -- loss_fn and the light events of the first epoch -----------------------------------------------
def test_loss_fn_is_the_loss_the_probes_measure(tmp_path, fmnist):
    model, opt, loader, test = make(fmnist)

    def doubled(logits, y):
        return 2 * F.cross_entropy(logits, y, reduction="none")

    for name, extra in (("ce", {}), ("doubled", {"loss_fn": doubled})):
        torch.manual_seed(0)
        fresh = Net()
        with monitor(fresh, torch.optim.SGD(fresh.parameters(), lr=0.0), tmp_path / name, eps=EPS,
                     probe_data=test, probes="robust_acc,grad_align", probe_n=64, **extra):
            pass
    ce, doubled_run = load_run(tmp_path / "ce"), load_run(tmp_path / "doubled")
    assert last(doubled_run, "robust_acc", "clean_loss") == pytest.approx(2 * last(ce, "robust_acc", "clean_loss"))
    # FGSM follows the sign of the loss gradient: doubling the loss changes nothing there
    assert last(doubled_run, "robust_acc", "fgsm_acc") == last(ce, "robust_acc", "fgsm_acc")


def test_light_events_sample_the_first_epoch_then_stop(tmp_path, fmnist):
    model, opt, loader, test = make(fmnist, n=768)        # 12 steps per epoch
    with monitor(model, opt, tmp_path / "r", eps=EPS, probe_data=test, train_data=loader,
                 probes="robust_acc,grad_align,weight_update", probe_n=192) as mon:
        train_loop(model, opt, loader, user_fgsm, 2, mon)
    run = load_run(tmp_path / "r")
    n = run.scalar("event", "probe_n").set_index("step")["value"]
    assert n.to_dict() == {0: 192, 8: 128, 12: 192, 24: 192}   # light event at 8 only, on 128 points
    assert set(run.scalar("weight_update", "mse_all")["step"]) == {12, 24}   # full events only
