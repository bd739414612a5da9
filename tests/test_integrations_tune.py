"""codiag's Ray Tune reporter and Stopper with real Ray Tune on the CPU, on Fashion-MNIST.

Two trials of the same FGSM loop (a small CNN, Adam 3e-3): at eps 0.3 it collapses
and the Stopper ends that trial at the alarm's event; at eps 0.05 it stays robust and
runs all its epochs. Every probe event reached Tune as one result with the values the
run directory holds.
"""
from __future__ import annotations

import sys

import pytest

pytest.importorskip("ray.tune", reason="ray[tune] is not installed (pip install codiag[tune])")
import ray  # noqa: E402
from ray import tune  # noqa: E402

from codiag.integrations import tune as codiag_tune  # noqa: E402
from codiag.runs import load_run  # noqa: E402

EPOCHS = 3


def trainable(config):
    import torch
    import torch.nn.functional as F
    from torch import nn

    import codiag

    torch.set_num_threads(1)
    tr = codiag.load_dataset("fashion_mnist", train=True, limit=1024)
    te = codiag.load_dataset("fashion_mnist", train=False, limit=128)
    x, y = tr.images.float() / 255, tr.labels
    eps = config["eps"]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(16 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def fgsm(model, xb, yb):
        d = torch.zeros_like(xb, requires_grad=True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xb + d), yb), d)
        return (eps * g.sign()).detach()

    with codiag.monitor(model, opt, config["run_dir"], eps=eps, probe_data=(te.images.float() / 255, te.labels),
                        attack=fgsm, probes="robust_acc,grad_align", probe_n=128,
                        on_event=codiag_tune.report) as mon:
        g = torch.Generator().manual_seed(0)
        for _ in range(EPOCHS):
            perm = torch.randperm(len(x), generator=g)
            for i in range(0, len(x), 64):
                xb, yb = x[perm[i:i + 64]], y[perm[i:i + 64]]
                loss = F.cross_entropy(model((xb + fgsm(model, xb, yb)).clamp(0, 1)), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
            mon.epoch_end()


@pytest.mark.slow
def test_the_stopper_ends_the_collapsing_trial_at_the_alarm_and_only_that_one(tmp_path):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # tests/ is not importable in the workers
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        space = {"eps": tune.grid_search([0.3, 0.05]),
                 "run_dir": tune.sample_from(lambda config: str(tmp_path / f"eps{config['eps']}"))}
        results = tune.Tuner(trainable, param_space=space, run_config=tune.RunConfig(
            storage_path=str(tmp_path / "tune"), stop=codiag_tune.Stopper(), verbose=0)).fit()
    finally:
        ray.shutdown()
    assert not results.errors
    by_eps = {r.config["eps"]: r for r in results}
    collapsing, robust = by_eps[0.3], by_eps[0.05]

    co_run = load_run(tmp_path / "eps0.3")
    [alarm] = co_run.events_of("co_alarm")
    assert collapsing.metrics["codiag/co_alarm"] == 1.0
    assert collapsing.metrics["codiag/step"] == alarm["step"] < EPOCHS * 16   # stopped at the alarm
    history = collapsing.metrics_dataframe
    pgd = co_run.scalar("robust_acc", "pgd_acc")
    assert history["codiag/step"].tolist() == pgd["step"].tolist()        # one result per probe event
    assert history["codiag/robust_acc/pgd_acc"].tolist() == pytest.approx(pgd["value"].tolist())
    assert co_run.meta["status"] == "finished"     # the trial's loop ended there, and the run was closed

    robust_run = load_run(tmp_path / "eps0.05")
    assert robust_run.events_of("co_alarm") == [] and robust_run.meta["status"] == "finished"
    assert robust.metrics["codiag/co_alarm"] == 0.0 and robust.metrics["codiag/epoch"] == EPOCHS
    assert robust.metrics_dataframe["codiag/step"].iloc[-1] == EPOCHS * 16   # ran all its epochs
