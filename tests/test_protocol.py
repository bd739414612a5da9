"""The FastAT Benchmark's protocol in ``codiag train``: label smoothing, weight averaging,
a held-out validation split with best-checkpoint selection, and OneCycle.

The reference semantics are transcribed from the benchmark's training loop (Pan & Yao 2026):
``exp_avg`` starts as the model's state and after every optimizer step becomes
``(1 - tau) * value + tau * exp_avg`` for every entry of ``state_dict()``; the scheduler is
``OneCycleLR(opt, max_lr=lr, total_steps=epochs)`` stepped once per epoch.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from codiag import protocol
from codiag.cli import main
from codiag.errors import UsageError
from codiag.runs import load_run
from codiag.schedules import make_schedule, momentum_schedule
from codiag.sweeps.grid import protocol_differences, protocol_of
from codiag.trainer import TrainConfig, train


def test_label_smoothing_applies_inside_the_block_only():
    torch.manual_seed(0)
    logits, y = torch.randn(8, 10), torch.randint(0, 10, (8,))
    plain = F.cross_entropy(logits, y)
    with protocol.label_smoothing(0.4):
        smoothed = F.cross_entropy(logits, y)
        per_sample = F.cross_entropy(logits, y, reduction="none")
        explicit = F.cross_entropy(logits, y, label_smoothing=0.0)
    # smoothing 0.4: (1 - 0.4) * CE + 0.4 * mean over classes of -log p
    logp = logits.log_softmax(1)
    expected = (0.6 * -logp.gather(1, y[:, None]).squeeze(1) + 0.4 * -logp.mean(1))
    torch.testing.assert_close(smoothed, expected.mean())
    torch.testing.assert_close(per_sample, expected)
    torch.testing.assert_close(explicit, plain)
    assert torch.equal(F.cross_entropy(logits, y), plain)          # restored after the block
    with protocol.label_smoothing(0.0):
        assert F.cross_entropy is torch.nn.functional.cross_entropy
        assert torch.equal(F.cross_entropy(logits, y), plain)


def test_onecycle_is_torchs_onecyclelr_stepped_per_epoch():
    epochs, lr, n = 7, 0.2, 5
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs)
    lr_at, mom_at = make_schedule("onecycle", lr, epochs), momentum_schedule("onecycle", epochs)
    for epoch in range(epochs):
        for i in range(n):      # the trainer's progress t = epoch + (i+1)/n, constant within the epoch
            t = epoch + (i + 1) / n
            assert lr_at(t) == opt.param_groups[0]["lr"], (epoch, i)
            assert mom_at(t) == opt.param_groups[0]["momentum"], (epoch, i)
        opt.step()
        sched.step() if epoch < epochs - 1 else None
    assert momentum_schedule("cyclic", epochs) is None
    with pytest.raises(UsageError, match="at least 2 epochs"):
        TrainConfig(lr_schedule="onecycle", epochs=1).validate()


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).relu().mean((2, 3)))


def test_weight_average_is_the_benchmarks_ema_of_the_whole_state():
    torch.manual_seed(0)
    model, tau = _Net(), 0.9
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    extras = protocol.Extras(model, tau, select_best=False)
    exp_avg = {k: v.clone() for k, v in model.state_dict().items()}
    for step in range(6):
        x, y = torch.rand(16, 1, 6, 6), torch.randint(0, 3, (16,))
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        extras.after_step(model)
        state = model.state_dict()
        for k, v in state.items():   # the benchmark's update, float entries (num_batches_tracked aside)
            exp_avg[k] = (1 - tau) * v + tau * (v if step == 0 else exp_avg[k])
    averaged = extras.averaged.module.state_dict()
    for k, v in exp_avg.items():
        if averaged[k].is_floating_point():
            torch.testing.assert_close(averaged[k], v, rtol=1e-5, atol=1e-6)
    # the BatchNorm running statistics are averaged, not copied from the model
    assert not torch.allclose(averaged["bn.running_mean"], state["bn.running_mean"])


def test_best_checkpoint_keeps_the_benchmarks_rule():
    raw, avg = nn.Linear(1, 1), nn.Linear(1, 1)
    best = protocol.BestCheckpoint()
    assert best.consider(1, {"raw": ({"pgd_acc": 0.3, "clean_acc": 0.5}, raw),
                             "averaged": ({"pgd_acc": 0.3, "clean_acc": 0.9}, avg)})
    assert (best.model, best.epoch) == ("raw", 1)        # PGD ties between the two: the raw model
    assert not best.consider(2, {"raw": ({"pgd_acc": 0.3, "clean_acc": 0.5}, raw)})
    assert best.consider(3, {"raw": ({"pgd_acc": 0.2, "clean_acc": 0.9}, raw),
                             "averaged": ({"pgd_acc": 0.3, "clean_acc": 0.6}, avg)})
    assert (best.model, best.epoch, best.clean_acc) == ("averaged", 3, 0.6)
    torch.testing.assert_close(best.state["weight"], avg.weight.detach())
    again = protocol.BestCheckpoint()
    again.load_state_dict(best.state_dict())
    assert again.summary() == best.summary()


def test_protocol_options_are_checked_and_part_of_a_sweeps_protocol():
    for bad, match in ((dict(label_smoothing=1.0), "label smoothing"), (dict(weight_averaging=1.5), "tau"),
                       (dict(val_split=-1), "val split"), (dict(val_split=600, train_limit=600), "val split"),
                       (dict(select="best", probes="none"), "select='best'"),
                       (dict(select="best", every=25), "every='epoch'"), (dict(select="first"), "select")):
        with pytest.raises(UsageError, match=match):
            TrainConfig(**bad).validate()
    proto = protocol_of({"label_smoothing": 0.4, "weight_averaging": 0.9995, "val_split": 1000,
                         "select": "best", "lr_schedule": "onecycle"}, {})
    assert protocol_differences(proto, protocol_of({}, {})) == [
        "label_smoothing", "lr_schedule", "select", "val_split", "weight_averaging"]


QUICK = dict(model="cnn4", method="fgsm_rs", eps=0.1, train_limit=400, batch_size=100, epochs=2,
             probes=["robust_acc"], probe_n=64, eval_n=0, seed=3, progress=False)


@pytest.mark.slow
def test_averaging_and_selection_do_not_change_training(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plain = train(dict(QUICK, out=str(tmp_path / "plain")))
        extra = train(dict(QUICK, out=str(tmp_path / "extra"), weight_averaging=0.9, select="best"))
    finally:
        torch.set_num_threads(threads)
    a, b = (torch.load(d / "checkpoints" / "final.pt", weights_only=True) for d in (plain, extra))
    assert all(torch.equal(a[k], b[k]) for k in a)
    run = load_run(extra)
    # the averaged model's probe-set accuracy at each epoch event, and the best chosen from the probe's PGD
    assert len(run.scalar("averaged", "pgd_acc")) == 2
    chosen = run.events_of("best_checkpoint")
    assert chosen and all((extra / "checkpoints" / f).exists() for f in ("selected.pt", "averaged.pt"))
    pgd = run.scalar("robust_acc", "pgd_acc")["value"].tolist()
    assert chosen[-1]["select_pgd_acc"] >= max(pgd) - 1e-12 or chosen[-1]["model"] == "averaged"


TRAIN = ("--model", "cnn4", "--method", "fgsm_rs", "--eps", "0.1", "--train-limit", "500", "--batch-size", "50",
         "--epochs", "3", "--probes", "robust_acc", "--eval-n", "50", "--eval-steps", "3", "--eval-restarts", "1",
         "--seed", "2", "--quiet", "--label-smoothing", "0.4", "--weight-averaging", "0.95",
         "--val-split", "100", "--select", "best", "--lr-schedule", "onecycle", "--optimizer", "sgd",
         "--lr", "0.05")


@pytest.mark.slow
def test_killed_run_resumes_average_and_best_checkpoint_bit_for_bit(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "codiag", "train", *TRAIN, "--out", str(killed)], env=env,
                            stderr=subprocess.DEVNULL)
    ckpt = killed / "checkpoints" / "resume.pt"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.kill()                                   # SIGKILL, just after the first epoch's checkpoint
    proc.wait()
    assert not (killed / "checkpoints" / "final.pt").exists(), "the run ended before it could be killed"
    try:
        assert main(["train", *TRAIN, "--out", str(killed), "--resume"]) == 0
        assert main(["train", *TRAIN, "--out", str(tmp_path / "whole")]) == 0
    finally:
        torch.set_num_threads(threads)
    for name in ("final.pt", "averaged.pt", "selected.pt", "best.pt"):
        a, b = (torch.load(d / "checkpoints" / name, weights_only=True) for d in (killed, tmp_path / "whole"))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    r, w = load_run(killed), load_run(tmp_path / "whole")
    assert r.meta["final"] == w.meta["final"] and r.meta["config"]["train_size"] == 400
    assert set(r.meta["final"]) >= {"pgd_acc", "averaged", "best"}
    for probe in ("val_raw", "val_averaged", "averaged"):
        pd.testing.assert_frame_equal(r.scalar(probe, "pgd_acc"), w.scalar(probe, "pgd_acc"))
    assert ([{k: e[k] for k in ("epoch", "model", "select_pgd_acc")} for e in r.events_of("best_checkpoint")]
            == [{k: e[k] for k in ("epoch", "model", "select_pgd_acc")} for e in w.events_of("best_checkpoint")])
