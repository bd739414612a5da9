"""The CO signals of the newer methods: the ``local_linearity`` probe (ELLE), the
``abnormal_examples`` probe and per-step tally (AAER), and ELLE-A's rule as an online
detector. Each value is checked against a direct computation."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from codiag.detector import AnyDetector, CODetector, ELLEADetector, make_detector
from codiag.errors import UsageError
from codiag.methods import get_method
from codiag.methods.elle import triplets
from codiag.monitoring import eval_mode
from codiag.probes import resolve_probes
from codiag.probes.base import ProbeContext, ProbeSet
from codiag.trainer import TrainConfig

EPS = 0.1


class Sin(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(100 * x)


def bumpy_net() -> nn.Module:
    """A model whose loss is far from linear in an eps-ball: abnormal examples are common."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), Sin(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def probe_set(n: int = 24, seed: int = 1) -> ProbeSet:
    g = torch.Generator().manual_seed(seed)
    x = 0.2 + 0.6 * torch.rand(n, 1, 8, 8, generator=g)
    return ProbeSet(x=x, y=torch.randint(0, 10, (n,), generator=g), index=None, source="test")


def run_probe(name: str, model: nn.Module, ps: ProbeSet, state=None, **kw) -> tuple[dict, ProbeContext]:
    ctx = ProbeContext(model, EPS, step=0, epoch=0, probe_set=ps, state=state if state is not None else {}, **kw)
    with eval_mode(model), torch.enable_grad():
        resolve_probes([name])[0].run(ctx)
    return {k: float(v) for _, k, v in ctx.rows.scalars}, ctx


def test_local_linearity_is_elles_triplet_error_on_the_probe_set():
    model, ps = bumpy_net(), probe_set()
    s, ctx = run_probe("local_linearity", model, ps)
    points, alpha = triplets(ps.x, EPS, ctx.generator("local_linearity"))
    assert ((points >= 0) & (points <= 1)).all()
    with torch.no_grad():
        losses = F.cross_entropy(model(points), ps.y.repeat(3), reduction="none")
    b = len(ps.y)
    err = losses[2 * b:] - (1 - alpha) * losses[:b] - alpha * losses[b:2 * b]
    assert s["mse"] == pytest.approx(float(err.pow(2).mean()), rel=1e-5) and s["mse"] > 0
    assert s["abs"] == pytest.approx(float(err.abs().mean()), rel=1e-5)
    again, _ = run_probe("local_linearity", model, ps)      # same triplets at every event
    assert again == s


def test_abnormal_examples_on_the_probe_set_and_from_the_training_tally():
    model, ps = bumpy_net(), probe_set(64)
    method = get_method("aaer", EPS, seed=0)
    attack = method.perturb
    s, ctx = run_probe("abnormal_examples", model, ps, attack=lambda m, x, y, i, g: attack(m, x, y, i, generator=g),
                       method=method)
    start = method.start(model, ps.x, ps.y, None, generator=ctx.generator("start"))
    delta = method.perturb(model, ps.x, ps.y, None, generator=ctx.generator("start"))
    with torch.no_grad():
        before = F.cross_entropy(model(ps.x + start), ps.y, reduction="none")
        after = F.cross_entropy(model(ps.x + delta), ps.y, reduction="none")
    expected = (after < before).float()
    assert 0 < expected.mean() < 1
    assert s["share"] == pytest.approx(float(expected.mean())) and s["count"] == float(expected.sum())
    assert "train_share" not in s                              # no training step yet

    # per training step: the method's own counts, summed between two events
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    state: dict = {}
    shares = []
    for i in range(5):
        batch = probe_set(32, seed=10 + i)
        method.train_step(model, opt, batch.x, batch.y)
        shares.append(method.state()["abnormal_share"])
        if i == 1:
            s1, _ = run_probe("abnormal_examples", model, ps, state=state, method=method)
    s2, _ = run_probe("abnormal_examples", model, ps, state=state, method=method)
    assert s1["train_steps"] == 2 and s1["train_share"] == pytest.approx(sum(shares[:2]) / 2)
    assert s2["train_steps"] == 3 and s2["train_share"] == pytest.approx(sum(shares[2:]) / 3)
    assert 0 < sum(shares) < 5


def test_method_start_is_the_start_of_its_perturbation():
    # the abnormal_examples probe compares the loss at start() with the loss at perturb()
    model, ps = bumpy_net(), probe_set()
    for name in ("aaer", "gat", "fgsm_pgi", "elle"):
        method = get_method(name, EPS, seed=0, num_samples=100)
        start = method.start(model, ps.x, ps.y, None, generator=torch.Generator().manual_seed(3))
        delta = method.perturb(model, ps.x, ps.y, None, generator=torch.Generator().manual_seed(3))
        moved = (delta - start).abs()
        assert moved.max() <= (1.25 + 1) * EPS + 1e-6, name
        if name != "elle":          # ELLE's FGSM starts at the clean input
            assert start.abs().max() > 0, name
        assert moved.max() > 0.5 * EPS, name


def test_elle_a_detector_fires_on_an_outlier_of_the_local_linearity_error():
    det = ELLEADetector()
    series = [1e-3, 1.2e-3, 0.9e-3, 1.1e-3, 1.0e-3, 2e-2, 5e-2]
    alarms = [det.update(i * 10, i, {"lin_err": v}) for i, v in enumerate(series)]
    assert [a is not None for a in alarms] == [False] * 5 + [True, False]   # fires once
    assert det.alarm["rule"] == "elle_a" and det.alarm["step"] == 50
    # three earlier values at least: a jump at the third event is no alarm
    assert ELLEADetector().update(0, 0, {"lin_err": 1.0}) is None
    quiet = ELLEADetector()
    assert all(quiet.update(i, i, {"lin_err": v}) is None for i, v in enumerate([1, 5, 50]))
    det.reset()
    assert det.alarm is None and det.values == []


def test_detector_choices():
    assert isinstance(make_detector(True), CODetector) and make_detector(False) is None
    assert isinstance(make_detector("elle_a"), ELLEADetector)
    both = make_detector("both")
    assert isinstance(both, AnyDetector)
    for i, v in enumerate([1e-3, 1e-3, 1.1e-3, 0.9e-3]):
        assert both.update(i, i, {"lin_err": v, "pgd_acc": 0.4, "fgsm_acc": 0.45}) is None
    alarm = both.update(4, 4, {"lin_err": 1.0, "pgd_acc": 0.4, "fgsm_acc": 0.45})
    assert alarm is not None and alarm["rule"] == "elle_a"
    assert both.settings()["detectors"][0]["rule"] == "codiag"
    with pytest.raises(UsageError, match="unknown detector"):
        make_detector("elle")


def test_trainer_takes_the_detector_by_name():
    assert TrainConfig.from_dict({"detector": "elle_a"}).detector == "elle_a"
    with pytest.raises(UsageError, match="unknown detector"):
        TrainConfig.from_dict({"detector": "elle"})
