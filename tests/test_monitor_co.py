"""The CO signature, recorded by the monitor on a real short FGSM run (Fashion-MNIST, cnn4).

Short seeded version of the embedded demo (``codiag demo``):
cnn4 on Fashion-MNIST, eps 0.2, FGSM with step eps from zero, Adam on the
one-cycle schedule, batch 128, but 20k images, 8 epochs and a peak lr of
8e-3 instead of 30k, 20 and 3e-3 (the full demo collapses near epoch 10 after
~2350 steps; with the higher peak lr this run collapses at epoch 5, on the
schedule's way down, like the demo). Monitored at epoch cadence with the
default probes. At the collapse the recorded metrics must show together:

* PGD accuracy falls (GradAlign Fig. 4/11) while FGSM accuracy climbs above the clean accuracy;
* gradient alignment falls under 0.3 (GradAlign eq. 5, Fig. 4/11);
* cos(delta_FGSM, delta_PGD) falls (GradAlign Fig. 4/11);
* the weight-update MSE spikes (ZeroGrad Fig. 1);
* the strength gap explodes (APART eq. 2, Fig. 2b);
* the online alarm fires once, at the event ``detect_co`` names.

The perturbation jump of ZeroGrad Fig. 2 does *not* reproduce here: the MSE
between consecutive FGSM (and FGSM-RS) perturbations of a fixed batch stays
flat through the collapse on cnn4/Fashion-MNIST, at epoch and at 40-step
cadence, on test or training points. That check is a strict xfail, so it
reports when the behaviour changes.

The runs are trained once per test session (``co_run`` / ``control_run``,
shared with tests/test_detector.py through the session's base temp dir).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from codiag.detector import detect_co
from codiag.runs import load_run

CO_CONFIG = {"n_train": 20000, "epochs": 8, "lr": 8e-3, "eps": 0.2, "seed": 0}
# Same schedule and lr at half the radius and half the data: robust, no collapse.
CONTROL_CONFIG = {"n_train": 10000, "epochs": 8, "lr": 8e-3, "eps": 0.1, "seed": 0,
                  "probes": "robust_acc,grad_align,fgsm_pgd_cos"}   # what the detector reads


def train_fgsm(run_dir: Path, n_train: int, epochs: int, lr: float, eps: float, seed: int,
               probes: str = "default") -> Path:
    """A user's FGSM loop on Fashion-MNIST with cnn4, monitored at epoch cadence."""
    from codiag.data import load_dataset, make_loader
    from codiag.methods import get_method
    from codiag.models import build_model
    from codiag.monitoring import monitor
    from codiag.schedules import make_schedule

    try:
        train_set = load_dataset("fashion_mnist", train=True, limit=n_train)
        test_set = load_dataset("fashion_mnist", train=False, limit=256)
    except Exception as e:  # the Debian package dataset-fashion-mnist is part of the install
        pytest.fail(f"Fashion-MNIST is not readable: {e}")
    torch.manual_seed(seed)
    loader = make_loader(train_set, 128, shuffle=True, with_index=True, seed=seed)
    model = build_model("cnn4", train_set.spec)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    method = get_method("fgsm", eps, seed=seed)
    lr_at = make_schedule("cyclic", lr, epochs)
    shutil.rmtree(run_dir, ignore_errors=True)
    with monitor(model, opt, run_dir, eps=eps, probe_data=test_set, train_data=train_set,
                 attack=method.perturb, method=method, probes=probes,
                 strict=True) as mon:
        for epoch in range(epochs):
            for i, (x, y, meta) in enumerate(loader):
                for group in opt.param_groups:
                    group["lr"] = lr_at(epoch + (i + 1) / len(loader))
                method.train_step(model, opt, x, y, meta)
            mon.epoch_end()
    return run_dir


def cached_run(base: Path, name: str, config: dict) -> Path:
    """Train once per session: later callers reuse the finished run in the session's temp dir."""
    run_dir = base / name
    if (run_dir / "run.json").exists() and load_run(run_dir).status == "finished":
        return run_dir
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # the suite's budget is one core; also keeps results reproducible
    try:
        return train_fgsm(run_dir, **config)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def co_run(tmp_path_factory) -> Path:
    return cached_run(tmp_path_factory.getbasetemp(), "co_fgsm", CO_CONFIG)


@pytest.fixture(scope="session")
def control_run(tmp_path_factory) -> Path:
    return cached_run(tmp_path_factory.getbasetemp(), "control_fgsm", CONTROL_CONFIG)


def events_table(run_dir: Path) -> pd.DataFrame:
    """One row per full probe event (step), one column per probe/key (the light events of the
    first epoch, on a slice of the probe set and with the alarm's probes only, are left out)."""
    m = load_run(run_dir).metrics
    m = m[m["probe"] != "train"]
    wide = m.pivot_table(index="step", columns=["probe", "key"], values="value", aggfunc="last")
    n = wide[("event", "probe_n")]
    return wide[n == n.max()].sort_index()


def collapse_index(table: pd.DataFrame, run_dir: Path) -> int:
    co = detect_co(load_run(run_dir).metrics)
    assert co is not None, "the seeded FGSM run did not collapse (CO config no longer reproduces)"
    return int(np.flatnonzero(table.index == co["step"])[0])


@pytest.mark.slow
def test_co_signature_appears_together_at_the_collapse(co_run):
    t = events_table(co_run)
    k = collapse_index(t, co_run)
    assert 2 <= k <= len(t) - 2, f"collapse at event {k} of {len(t)}: no room before/after"
    col = lambda probe, key: t[(probe, key)].to_numpy()  # noqa: E731
    pre = slice(1, k)   # events after initialisation and before the collapse
    pgd, fgsm, clean = col("robust_acc", "pgd_acc"), col("robust_acc", "fgsm_acc"), col("robust_acc", "clean_acc")

    # PGD accuracy falls from a real plateau; FGSM accuracy climbs above clean accuracy
    assert pgd[pre].max() >= 0.3 and pgd[k] <= 0.5 * pgd[pre].max() and pgd[k + 1] <= 0.1
    assert fgsm[k + 1] > fgsm[pre].max() and fgsm[k + 1] > clean[k + 1]
    # gradient alignment falls under 0.3 (it starts high: GradAlign Lemma 2)
    align = col("grad_align", "mean")
    assert align[0] > 0.8 and align[pre].min() > 0.3 and align[k] < 0.3
    # cos(delta_FGSM, delta_PGD) falls
    cos = col("fgsm_pgd_cos", "mean")
    assert cos[k + 1] < np.median(cos[pre]) - 0.1
    # weight-update MSE spikes (ZeroGrad Fig. 1); the first value is NaN (no previous event)
    wu = col("weight_update", "mse_all")
    assert np.isnan(wu[0]) and max(wu[k], wu[k + 1]) >= 2 * np.median(wu[pre])
    # the strength gap L(delta_FGSM) - L(delta_PGD) explodes (APART Fig. 2b)
    gap = col("strength_gap", "gap")
    assert (gap[pre] < 0).all() and gap[k + 1] < -1.0
    assert abs(gap[k + 1]) >= 4 * np.median(np.abs(gap[pre]))
    # the per-kernel arrays and the other default probes were recorded at every event
    run = load_run(co_run)
    assert len(run.arrays("weight_update.kernel_mse.conv")) == len(t) - 1
    assert len(run.arrays("instance_grad_norm")) == len(t)
    assert run.arrays("filters.weight")[0].shape == (4, 1, 3, 3)


@pytest.mark.slow
def test_online_alarm_matches_the_offline_collapse(co_run):
    run = load_run(co_run)
    alarms = run.events_of("co_alarm")
    co = detect_co(run.metrics)
    assert len(alarms) == 1 and alarms[0]["step"] == co["step"] and alarms[0]["epoch"] == co["epoch"]
    assert alarms[0]["rule"] in ("pgd_collapse", "grad_align_collapse") and alarms[0]["reason"]


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="ZeroGrad Fig. 2's perturbation jump does not reproduce on "
                                       "cnn4/Fashion-MNIST: the MSE stays flat through the collapse")
def test_perturbation_delta_jumps_at_the_collapse(co_run):
    t = events_table(co_run)
    k = collapse_index(t, co_run)
    pd_ = t[("perturbation_delta", "mse")].to_numpy()
    assert max(pd_[k], pd_[k + 1]) >= 1.5 * np.median(pd_[2:k])


@pytest.mark.slow
def test_detect_co_on_real_runs(co_run, control_run):
    co_dir, control_dir = co_run, control_run
    co_run, control = load_run(co_dir), load_run(control_dir)
    co = detect_co(co_run.metrics)
    assert co is not None and 3 <= co["epoch"] <= 7
    pgd = co_run.scalar("robust_acc", "pgd_acc").set_index("step")["value"]
    before = pgd[pgd.index < co["step"]]
    # the named event is the first one after the collapse: PGD accuracy was intact just before
    assert before.max() >= 0.3 and pgd[co["step"]] <= 0.5 * before.max()
    assert co["values"]["fgsm_acc"] - co["values"]["pgd_acc"] >= 0.2
    # the control (same schedule, eps 0.1) is robust throughout: no alarm, online or offline
    assert detect_co(control.metrics) is None and control.events_of("co_alarm") == []
    # at every full event after step 0 (the first epoch's light events see a barely trained model)
    n = control.scalar("event", "probe_n")
    full_steps = n.loc[n["value"] == n["value"].max(), "step"]
    control_pgd = control.scalar("robust_acc", "pgd_acc").set_index("step")["value"]
    assert control_pgd[control_pgd.index.isin(full_steps)].iloc[1:].min() > 0.3
    # stricter thresholds still find the real collapse; absurd ones find nothing
    assert detect_co(co_run.metrics, drop=0.8)["step"] >= co["step"]
    late = detect_co(co_run.metrics, min_gap=0.99, align_low=-1.0, sig_gap=0.99)   # the looser line, twice
    assert late["rule"] == "pgd_drop_persists" and late["step"] > co["step"]
    assert detect_co(co_run.metrics, min_gap=0.99, persist_gap=0.99, align_low=-1.0, sig_gap=0.99) is None
