"""``codiag train --guard``: a real short collapse saved by the guard, and resumed exactly after a roll-back.

Fashion-MNIST, cnn4, FGSM from zero at eps 0.25, the first 4000 training images, 6 epochs,
Adam with the cyclic schedule at peak lr 0.01, seed 0. Plain FGSM collapses in the
second epoch (the alarm fires at step 64; final PGD-10 accuracy near 0); with ``--guard
n_fgsm`` the alarm rolls the run back to its last healthy probe event and it trains on
with N-FGSM, ending robust. The guarded run keeps a weight average (``--weight-averaging``),
which goes back with the roll-back. A run killed after the roll-back's checkpoint and resumed
ends with the weights (and the weight average) of the run that was never stopped; so does a
run whose roll-back goes back to an event inside an epoch (``--every 10``) and re-trains from there.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from codiag.runs import load_run
from codiag.trainer import train

pytestmark = pytest.mark.slow

SETTING = dict(dataset="fashion_mnist", model="cnn4", method="fgsm", eps=0.25, train_limit=4000, epochs=6,
               lr=0.01, seed=0, probes=["robust_acc", "grad_align"], eval_n=500, eval_steps=10,
               eval_restarts=1, progress=False)
CLI = ("--dataset", "fashion_mnist", "--model", "cnn4", "--method", "fgsm", "--eps", "0.25", "--train-limit",
       "4000", "--epochs", "6", "--lr", "0.01", "--seed", "0", "--probes", "robust_acc,grad_align",
       "--eval-n", "500", "--eval-steps", "10", "--eval-restarts", "1", "--quiet", "--guard", "n_fgsm",
       "--weight-averaging", "0.99")
GUARDED = dict(guard="n_fgsm", weight_averaging=0.99)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    for name, extra in (("plain", {}), ("guarded", GUARDED), ("inside", dict(GUARDED, every=10))):
        d = tmp_path_factory.mktemp(name) / "run"
        train(dict(SETTING, out=str(d), **extra))
        out[name] = d
    torch.set_num_threads(threads)
    return out


def test_plain_fgsm_collapses_and_the_guard_saves_the_run(runs):
    plain, guarded = load_run(runs["plain"]), load_run(runs["guarded"])
    assert plain.events_of("co_alarm") and plain.meta["final"]["pgd_acc"] < 0.05, plain.meta["final"]
    assert not plain.events_of("rollback")
    rollback, = guarded.events_of("rollback")
    assert rollback["mitigation"] == "n_fgsm" and rollback["restored_step"] < rollback["step"]
    final = guarded.meta["final"]["pgd_acc"]
    assert final > 0.15 and final > plain.meta["final"]["pgd_acc"] + 0.1, (final, plain.meta["final"])
    assert guarded.meta["guard"]["status"] == "rolled_back" and guarded.meta["guard"]["rollbacks"] == 1
    # the best checkpoint: the highest probe PGD event, kept as best.pt
    best = guarded.meta["best"]
    assert best["pgd_acc"] == pytest.approx(guarded.scalar("robust_acc", "pgd_acc")["value"].max())
    assert set(torch.load(runs["guarded"] / "checkpoints" / "best.pt", weights_only=True)) == \
        set(torch.load(runs["guarded"] / "checkpoints" / "final.pt", weights_only=True))


@pytest.mark.parametrize("name", ["guarded", "inside"])
def test_killed_after_a_rollback_resumes_to_the_uninterrupted_weights(runs, tmp_path, name):
    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    every = ("--every", "10") if name == "inside" else ()
    proc = subprocess.Popen([sys.executable, "-m", "codiag", "train", *CLI, *every, "--out", str(killed)], env=env,
                            stderr=subprocess.DEVNULL)
    events, ckpt = killed / "events.jsonl", killed / "checkpoints" / "resume.pt"
    deadline = time.monotonic() + 600
    seen = None
    while proc.poll() is None and time.monotonic() < deadline:
        if seen is None and events.exists() and '"rollback"' in events.read_text():
            seen = ckpt.stat().st_mtime_ns if ckpt.exists() else 0
        if seen is not None and ckpt.exists() and ckpt.stat().st_mtime_ns != seen:
            break                                # the checkpoint written just after the roll-back
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert not (killed / "checkpoints" / "final.pt").exists(), "the run ended before it could be killed"
    state = torch.load(ckpt, weights_only=True)
    rollback, = load_run(killed).events_of("rollback")
    epoch, inside = divmod(rollback["restored_step"], 32)   # the restored event's epoch and batch (32 an epoch)
    assert state["guard"] == {"mitigated": True, **({"restart": {"offset": inside, "loader_epoch": epoch}}
                                                    if name == "inside" else {})}
    # the weight average went back with the model: it counts the steps up to the restored event only
    assert int(state["averaged"]["n_averaged"]) == rollback["restored_step"] < rollback["step"]
    torch.set_num_threads(1)
    train(dict(SETTING, out=str(killed), **GUARDED, **({"every": 10} if name == "inside" else {})), resume=True)
    for file in ("final.pt", "averaged.pt"):
        resumed = torch.load(killed / "checkpoints" / file, weights_only=True)
        whole = torch.load(runs[name] / "checkpoints" / file, weights_only=True)
        for k, v in whole.items():
            assert torch.equal(resumed[k], v), (file, k)
    a, b = load_run(killed), load_run(runs[name])
    assert [e["step"] for e in a.events_of("rollback")] == [e["step"] for e in b.events_of("rollback")]
    assert a.meta["best"] == b.meta["best"] and a.meta["final"] == b.meta["final"]


def test_the_page_marks_rollbacks_and_the_sweep_table_counts_saved_runs(runs, tmp_path):
    import matplotlib.pyplot as plt

    from reports.base import co_point, mark_co
    from reports.co_rate import co_rate_table
    from reports.curves import training_curves
    from reports.sweep_table import sweep_table

    plain, guarded = load_run(runs["plain"]), load_run(runs["guarded"])
    table = sweep_table([plain, guarded]).set_index("method")
    assert table.loc["fgsm", "rollbacks"] == 0 and not table.loc["fgsm", "saved"]
    row = table.loc["fgsm+guard-n_fgsm"]
    assert row["rollbacks"] == 1 and row["saved"] and row["collapsed"] is False or row["collapsed"] == 0
    assert row["best_pgd_acc"] == guarded.meta["best"]["pgd_acc"] and row["best_epoch"] == guarded.meta["best"]["epoch"]
    for run, method in ((plain, "fgsm"), (guarded, "fgsm+guard-n_fgsm")):   # the first early warning's epoch
        warned = run.events_of("warning")
        cell = table.loc[method, "warning_epoch"]
        assert cell == warned[0]["epoch"] if warned else pd.isna(cell)
    rates = co_rate_table(table.reset_index()).set_index("method")
    assert rates.loc["fgsm+guard-n_fgsm", "saved"] == 1.0 and rates.loc["fgsm", "saved"] == 0.0
    co = co_point(guarded)
    assert [kind for _, kind in co.marks if kind != "warning"] == ["rollback"]
    assert sum(kind == "warning" for _, kind in co.marks) == len(guarded.events_of("warning"))
    fig, ax = plt.subplots()
    mark_co(ax, co)
    assert "rollback" in ax.get_legend_handles_labels()[1]
    plt.close(fig)
    assert training_curves(guarded, tmp_path).files


def test_a_rollback_inside_an_epoch_retrains_only_the_steps_since_the_restored_event(runs):
    """With events every 10 steps (32 steps an epoch) the alarm fires inside an epoch and the target is
    an event inside one: the trainer leaves the epoch at once and goes on from the batch after the
    restored event, with the mitigation: the run is longer by exactly the steps rolled back."""
    run = load_run(runs["inside"])
    rollback, = run.events_of("rollback")
    assert rollback["step"] % 32 != 0 and rollback["restored_step"] % 10 == 0 and rollback["restored_step"] % 32
    lost = rollback["step"] - rollback["restored_step"]
    assert 0 < lost < 32
    train_rows = run.scalar("train", "loss")
    assert len(train_rows) == 6 and int(train_rows["step"].max()) == 6 * 32 + lost
    assert run.meta["steps_per_epoch"] == 32
    assert run.status == "finished" and run.meta["final"]["pgd_acc"] > 0.15
