"""The alarm catches a collapse inside the first epochs, where no PGD peak is ever seen.

Fashion-MNIST, a user's 2-conv CNN (16/32 filters, max-pool, 100-unit FC), FGSM from
zero at eps 0.3, Adam 3e-3, batch 128, monitored at the default cadence (per epoch,
plus the light events of the first epoch). The PGD accuracy never rises above about
0.15: the peak-based rules of the detector cannot fire, and per-epoch probing alone
saw nothing. The signature rule (PGD accuracy near zero, FGSM accuracy far above it
and rising from its own lowest value) must fire at the first event of epoch 2 (inside
the first epoch a run not yet robust shows it too), and the
same loop at eps 0.05 (robust, no collapse) must not raise any alarm.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from codiag.detector import CODetector, detect_co, detect_warning
from codiag.monitoring import monitor
from codiag.probes.robust_acc import RobustAcc
from codiag.reports.base import curve
from codiag.runs import load_run


def case_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10))


@pytest.fixture(scope="module")
def data():
    from codiag.data import load_dataset

    tr = load_dataset("fashion_mnist", train=True, limit=3072)
    te = load_dataset("fashion_mnist", train=False, limit=256)
    return tr.images.float() / 255, tr.labels, (te.images.float() / 255, te.labels)


def fgsm_loop(tmp_path, data, eps: float, epochs: int):
    x, y, test = data
    torch.manual_seed(0)
    model = case_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def fgsm(model, xb, yb):
        d = torch.zeros_like(xb, requires_grad=True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xb + d), yb), d)
        return (eps * g.sign()).detach()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with monitor(model, opt, tmp_path / f"eps{eps}", eps=eps, probe_data=test, attack=fgsm,
                     probes="robust_acc,grad_align", probe_n=128) as mon:
            g = torch.Generator().manual_seed(0)
            for _ in range(epochs):
                perm = torch.randperm(len(x), generator=g)
                for i in range(0, len(x), 128):
                    xb, yb = x[perm[i:i + 128]], y[perm[i:i + 128]]
                    loss = F.cross_entropy(model((xb + fgsm(model, xb, yb)).clamp(0, 1)), yb)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                mon.epoch_end()
    finally:
        torch.set_num_threads(threads)
    return mon, load_run(tmp_path / f"eps{eps}")


def test_a_collapse_without_a_pgd_peak_raises_the_alarm(tmp_path, data):
    mon, run = fgsm_loop(tmp_path, data, eps=0.3, epochs=3)
    pgd = run.scalar("robust_acc", "pgd_acc")
    assert pgd["value"].max() < 0.3                      # no robust plateau to fall from
    assert mon.co_detected, "the collapse went unnoticed"
    alarm = mon.co_alarm
    # at the first event of epoch 2: the end of epoch 1 showed the signature already (and inside a later
    # epoch would have fired), but a run that is only not yet robust shows it there too (tests/test_warning.py)
    assert (alarm["step"], alarm["epoch"]) == (48, 2) and alarm["values"]["pgd_acc"] <= 0.1
    before = run.metrics[run.metrics["step"] < alarm["step"]]
    assert detect_co(before) is None
    last = before[(before["step"] == before["step"].max()) & (before["probe"] == "robust_acc")]
    acc = dict(zip(last["key"], last["value"]))
    assert acc["pgd_acc"] <= CODetector.sig_pgd and acc["fgsm_acc"] - acc["pgd_acc"] >= CODetector.sig_gap
    # the replay of the warning agrees with the monitor
    assert mon.co_warning == detect_warning(run.metrics)
    assert [(w["step"], w["epoch"]) for w in run.events_of("warning")] == (
        [] if mon.co_warning is None else [(mon.co_warning["step"], mon.co_warning["epoch"])])
    assert alarm["values"]["fgsm_acc"] - alarm["values"]["pgd_acc"] >= CODetector.sig_gap
    # light events inside the first epoch (24 steps) ran at steps 8 and 16
    assert set(pgd["step"]) == {0, 8, 16, 24, 48, 72}
    assert detect_co(run.metrics)["step"] == alarm["step"]   # the report names the same event
    # the first epoch's length is recorded, so the reports place the light events inside epoch 1
    assert run.meta["steps_per_epoch"] == 24
    assert curve(run, RobustAcc.pgd_acc)["x"].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1, 2, 3])


def test_the_same_loop_at_small_eps_raises_no_alarm(tmp_path, data):
    mon, run = fgsm_loop(tmp_path, data, eps=0.05, epochs=2)
    assert not mon.co_detected and run.events_of("co_alarm") == []
    assert run.scalar("robust_acc", "pgd_acc")["value"].iloc[-1] > 0.3
