"""The reference trainer end to end on real data: CO with FGSM, none with PGD-10.

The embedded setting (cnn4, Fashion-MNIST, eps 0.2, FGSM step eps, Adam with a
cyclic schedule, batch 128) shortened for the suite: 10k training images,
5 epochs, peak lr 0.01 (the full demo, 30k images and lr 3e-3, collapses near
epoch 10 of 20; a higher peak lr brings the collapse into the first epochs).
"""
from __future__ import annotations

import pytest
import torch

from codiag.runs import load_run
from codiag.trainer import TrainConfig, train

pytestmark = pytest.mark.slow

SHORT = dict(epochs=5, train_limit=10000, lr=0.01, seed=0, probes=["robust_acc", "grad_align"],
             probe_n=256, eval_n=500, eval_steps=10, eval_restarts=1, progress=False,
             checkpoint=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    # FGSM is probed every 25 steps: at this lr its robust phase lasts about one epoch.
    for method, every in (("fgsm", 25), ("pgd10", "epoch")):
        d = tmp_path_factory.mktemp(method) / "run"
        train(dict(SHORT, out=str(d), method=method, every=every))
        out[method] = load_run(d)
    torch.set_num_threads(threads)
    return out


def curve(run, key):
    return run.scalar("robust_acc", key)["value"].tolist()


def test_fgsm_collapses_while_fgsm_accuracy_rises_above_pgd(runs):
    run = runs["fgsm"]
    pgd, fgsm = curve(run, "pgd_acc"), curve(run, "fgsm_acc")
    assert max(pgd) >= 0.15, pgd                 # it was robust before the collapse
    assert pgd[-1] < 0.05, pgd                    # ... and then is not
    assert fgsm[-1] > pgd[-1] + 0.4, (fgsm, pgd)  # the model beats FGSM but not PGD
    assert run.meta["final"]["pgd_acc"] < 0.05
    assert run.events_of("co_alarm"), "the online alarm should have fired"


def test_pgd10_same_budget_does_not_collapse(runs):
    run = runs["pgd10"]
    pgd = curve(run, "pgd_acc")
    assert pgd[-1] >= 0.25 and pgd[-1] >= 0.6 * max(pgd), pgd
    assert run.meta["final"]["pgd_acc"] >= 0.25
    assert not run.events_of("co_alarm")


def test_run_records_config_and_environment(runs):
    run = runs["fgsm"]
    assert run.config["method"] == "fgsm" and run.config["eps"] == pytest.approx(0.2)
    assert run.config["train_size"] == 10000
    assert run.status == "finished" and run.meta["train_time_s"] > 0
    assert run.scalar("train", "loss")["value"].notna().all()
    assert run.scalar("eval", "pgd_acc")["value"].tolist() == [run.meta["final"]["pgd_acc"]]


def test_seed_reproduces_weights_exactly(tmp_path):
    torch.set_num_threads(1)
    cfg = dict(epochs=1, train_limit=512, eval_n=0, probes="none", progress=False, seed=3)
    weights = []
    for name in ("a", "b"):
        train(dict(cfg, out=str(tmp_path / name)))
        weights.append(torch.load(tmp_path / name / "checkpoints" / "final.pt", weights_only=True))
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k


def test_config_rejects_bad_values():
    from codiag.errors import UsageError
    for bad in (dict(eps=1.5), dict(epochs=-1), dict(method="nope"), dict(batch_size=0),
                dict(lr=0), dict(nonsense=1), dict(stop_after_co=-1)):
        with pytest.raises(UsageError):
            TrainConfig.from_dict(bad)


def test_zerograd_rollback_acts_on_the_online_alarm(tmp_path):
    """ZeroGrad 5.2: on the monitor's CO alarm the trainer restores the checkpoint from
    before the collapse and continues with the larger q. With q0 = 0, no random start and
    step eps, the first stage is plain FGSM, which collapses in the short setting."""
    torch.set_num_threads(1)
    out = tmp_path / "rb"
    rollback_args = {"qs": [0.0, 0.5], "init": 0.0, "step": 1.0}
    train(dict(SHORT, out=str(out), method="zerograd_rollback", method_args=rollback_args,
               eval_n=0, epochs=7, probes=["robust_acc", "grad_align", "method_state"]))
    run = load_run(out)
    alarms, rollbacks = run.events_of("co_alarm"), run.events_of("rollback")
    assert alarms and rollbacks, [e["kind"] for e in run.events]
    assert rollbacks[0]["q_from"] == 0.0 and rollbacks[0]["q_to"] == 0.5
    assert rollbacks[0]["step"] >= alarms[0]["step"]
    q = run.scalar("method_state", "q")
    assert (q[q["step"] <= alarms[0]["step"]]["value"] == 0.0).all()
    after = q[q["step"] > rollbacks[0]["step"]]["value"]
    assert len(after) and (after == 0.5).all(), q


def test_stop_after_co_ends_training_one_epoch_after_the_alarm(tmp_path):
    """``stop_after_co`` (the demo's --quick): training ends N = 1 epochs after the online alarm."""
    torch.set_num_threads(1)
    out = tmp_path / "stop"
    train(dict(SHORT, out=str(out), method="fgsm", every="epoch", epochs=8, eval_n=0, stop_after_co=1))
    run = load_run(out)
    alarm, = run.events_of("co_alarm")
    stopped, = run.events_of("stopped_after_co")
    assert stopped["alarm_epoch"] == alarm["epoch"] and stopped["epoch"] == alarm["epoch"] + 1
    assert alarm["epoch"] + 1 < 8, "the run collapsed too late to show the cut"
    assert run.scalar("train", "loss")["epoch"].max() == alarm["epoch"] + 1
    assert run.status == "finished"
