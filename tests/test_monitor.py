"""codiag.monitor: step counting, cadence, probe sets, run directory, events, kill safety."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from codiag.detector import Detector
from codiag.errors import UsageError
from codiag.monitoring import monitor, parse_every
from codiag.probes import PROBES
from codiag.probes.base import Probe
from codiag.probes.robust_acc import RobustAcc
from codiag.runs import load_run

EPS = 0.1
ROOT = Path(__file__).resolve().parents[1]


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 36, 3))


def tensors(n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


class CountingDataset(Dataset):
    """Records which indices were read."""

    def __init__(self, x, y):
        self.x, self.y, self.read = x, y, []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.read.append(int(i))
        return self.x[i], self.y[i]


class NoIterLoader(DataLoader):
    def __iter__(self):  # the monitor must read the dataset by index, never iterate the user's loader
        raise AssertionError("monitor iterated the user's loader")


def train(mon, model, opt, loader, epochs: int) -> None:
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        mon.epoch_end()


CHEAP = ["robust_acc", "grad_align", "weight_update"]


def test_steps_epochs_and_step_zero_event(tmp_path):
    x, y = tensors()
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)   # 4 steps per epoch
    with monitor(model, opt, tmp_path / "r", eps=EPS, probe_data=(x, y), probes=CHEAP,
                 probe_n=32, strict=True) as mon:
        assert mon.step == 0 and mon.n_events == 1           # the step-0 event, before any update
        train(mon, model, opt, loader, epochs=3)
        assert mon.step == 12 and mon.epoch == 3
        mon.log("eval", {"pgd_acc": torch.tensor(0.5)})
    run = load_run(tmp_path / "r")
    acc = run.scalar("robust_acc", "pgd_acc")
    assert acc["step"].tolist() == [0, 4, 8, 12] and acc["epoch"].tolist() == [0, 1, 2, 3]
    wu = run.scalar("weight_update", "mse_all")
    assert wu["step"].tolist() == [4, 8, 12] and (wu["value"] > 0).all()
    assert run.scalar("eval", "pgd_acc")["value"].tolist() == [0.5]
    assert run.status == "finished" and run.meta["monitor_stats"]["events"] == 4
    mon_cfg = run.config["monitor"]
    assert mon_cfg["probe_set"]["indices"] == list(range(32)) and mon_cfg["probe_set"]["n"] == 32
    assert mon_cfg["train_probe_set"] is None and mon_cfg["probes"] == CHEAP
    assert mon_cfg["probe_pgd"] == {"steps": 10, "alpha": EPS / 4, "random_start": True}
    assert [e["kind"] for e in run.events] == ["run_start", "run_end"]


def test_every_n_steps_runs_in_the_step_hook_and_once_more_at_exit(tmp_path):
    x, y = tensors()
    model = tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    with monitor(model, opt, tmp_path / "r", eps=EPS, probe_data=(x, y), probes=["robust_acc"],
                 every=3, probe_n=16, strict=True) as mon:
        mon.log("train", {"loss": 1.0})          # logged during epoch 1 before any step: epoch 0
        train(mon, model, opt, loader, epochs=2)  # 8 steps: events at 3, 6, then 8 at exit
    steps = load_run(tmp_path / "r").scalar("robust_acc", "clean_acc")
    assert steps["step"].tolist() == [0, 3, 6, 8]
    assert steps["epoch"].tolist() == [0, 1, 2, 2]  # an event inside epoch k carries epoch k


def test_probe_sets_are_read_by_index_without_iterating_the_loader(tmp_path):
    x, y = tensors(100)
    test_ds, train_ds = CountingDataset(x, y), CountingDataset(x.flip(0), y.flip(0))
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rng = torch.get_rng_state()
    with monitor(model, opt, tmp_path / "r", eps=EPS, probe_data=NoIterLoader(test_ds, batch_size=10,
                 shuffle=True), train_data=NoIterLoader(train_ds, batch_size=10, shuffle=True),
                 probes=["robust_acc", "instance_grad_norm"], probe_n=20, train_probe_n=30, strict=True) as mon:
        assert test_ds.read == list(range(20)) and train_ds.read == list(range(30))
        torch.testing.assert_close(mon.probe_set.x, x[:20])
        torch.testing.assert_close(mon.train_set.x, x.flip(0)[:30])
    assert torch.equal(rng, torch.get_rng_state())
    run = load_run(tmp_path / "r")
    assert run.config["monitor"]["train_probe_set"]["indices"] == list(range(30))
    assert run.arrays("instance_grad_norm")[0].shape == (30,)


def test_nonfinite_losses_become_events(tmp_path):
    x, y = tensors()
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with monitor(model, opt, tmp_path / "r", eps=EPS, probe_data=(x, y), probes=["robust_acc"],
                 probe_n=8, strict=True) as mon:
        for i in range(3):
            opt.zero_grad()
            loss = F.cross_entropy(model(x[:8]), y[:8]) * (float("nan") if i == 1 else 1.0)
            mon.track_loss(loss)
            loss.backward()
            opt.step()
        mon.log("train", {"loss": torch.tensor(float("inf")), "acc": 0.5})
        mon.epoch_end()
        # the NaN step poisoned the weights: the probe losses are NaN as well
    events = load_run(tmp_path / "r").events_of("nonfinite_loss")
    by_key = {(e["probe"], e["key"]): e for e in events}
    # step 3 inherits the NaN weights
    assert by_key[("train", "step_loss")]["step"] == 2 and by_key[("train", "step_loss")]["count"] == 2
    assert by_key[("train", "loss")]["value"] == "inf" and by_key[("train", "loss")]["epoch"] == 1
    assert ("robust_acc", "clean_loss") in by_key
    assert len(events) == len(by_key)  # once per (probe, key)
    run = load_run(tmp_path / "r")
    assert math.isinf(run.scalar("train", "loss")["value"].iloc[0])


def test_online_alarm_fires_once_writes_event_and_calls_back(tmp_path, monkeypatch):
    script = iter([(0.05, 0.1), (0.40, 0.45), (0.42, 0.50), (0.10, 0.70), (0.0, 0.9), (0.0, 0.9)])

    class Scripted(Probe):  # robust_acc values of a collapsing run, one pair per event
        name = "scripted"

        def run(self, ctx):
            pgd, fgsm = next(script)
            ctx.log(RobustAcc.pgd_acc, torch.tensor(pgd))
            ctx.log(RobustAcc.fgsm_acc, fgsm)

    monkeypatch.setitem(PROBES, "scripted", Scripted)
    x, y = tensors()
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    seen = []
    with monitor(model, opt, tmp_path / "r", eps=EPS, probe_data=(x, y), probes=["scripted"],
                 probe_n=8, on_co=seen.append, every=1) as mon:
        for _ in range(5):
            opt.step()
            assert mon.co_detected == (mon.step >= 3)
        mon.epoch_end()
    assert len(seen) == 1 and seen[0]["step"] == 3 and seen[0]["rule"] == "pgd_collapse"
    alarms = load_run(tmp_path / "r").events_of("co_alarm")
    assert len(alarms) == 1 and alarms[0]["step"] == 3 and alarms[0]["epoch"] == 1
    assert alarms[0]["values"]["pgd_acc"] == pytest.approx(0.1)


def test_an_event_near_a_line_is_measured_again_on_confirm_n_points(tmp_path):
    class Suspicious(Detector):   # near a line at every event: every full event gets its confirmation
        suspect = True

        def __init__(self):
            self.seen = []

        def update(self, step, epoch, values):
            self.seen.append((step, dict(values)))

        def reset(self):
            pass

    x, y = tensors()
    loader = DataLoader(TensorDataset(x, y), batch_size=16)   # 4 steps per epoch
    plain = tiny()
    opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    for _ in range(2):
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(plain(xb), yb).backward()
            opt.step()
    model, det, test_ds = tiny(), Suspicious(), CountingDataset(x, y)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with monitor(model, opt, tmp_path / "r", eps=EPS, probe_data=test_ds, probes=CHEAP, probe_n=16,
                 confirm_n=48, detector=det, strict=True) as mon:
        train(mon, model, opt, loader, epochs=2)
    assert test_ds.read == list(range(16)) + list(range(48))   # the 48 points read once, when first needed
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), model.parameters()))  # training untouched
    run = load_run(tmp_path / "r")
    assert run.scalar("robust_acc", "pgd_acc")["step"].tolist() == [0, 4, 8]        # one point per event
    confirm = run.scalar("confirm", "clean_acc")
    assert confirm["step"].tolist() == [0, 4, 8]
    with torch.no_grad():   # measured on the first 48 points, independently of the probe set's 16
        assert confirm["value"].iloc[-1] == pytest.approx((model(x[:48]).argmax(1) == y[:48]).float().mean().item())
    assert [s for s, _ in det.seen] == [0, 0, 4, 4, 8, 8]
    assert set(det.seen[1][1]) == {"clean_acc", "fgsm_acc", "pgd_acc", "n"}  # the confirmation, as one event
    assert [v["n"] for _, v in det.seen] == [16, 48] * 3                      # with the points each measured
    assert run.meta["monitor_stats"]["confirmations"] == 3 and run.config["monitor"]["confirm_n"] == 48
    for kw in ({"confirm_n": 0}, {"confirm_n": 16}, {"confirm_n": 48, "detector": False}):
        test_ds = CountingDataset(x, y)
        with monitor(tiny(), opt, tmp_path / "off", eps=EPS, probe_data=test_ds, probes=CHEAP, probe_n=16,
                     overwrite=True, **{"detector": Suspicious(), **kw}) as mon:
            mon.epoch_end()
        assert load_run(tmp_path / "off").meta["monitor_stats"]["confirmations"] == 0, kw
        assert test_ds.read == list(range(16)), kw
    with pytest.raises(UsageError, match="confirm_n"):
        monitor(tiny(), opt, tmp_path / "bad", eps=EPS, probe_data=(x, y), confirm_n=-1)


def test_bad_arguments_are_usage_errors(tmp_path):
    x, y = tensors()
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for kw, msg in (({"every": 0}, "every"), ({"every": "fortnight"}, "every"),
                    ({"probes": ["nope"]}, "unknown probe"), ({"eps": 0.0}, "eps"),
                    ({"probe_data": None}, "probe_data")):
        args = {"eps": EPS, "probe_data": (x, y), **kw}
        with pytest.raises(UsageError, match=msg):
            monitor(model, opt, tmp_path / "bad", **args).start()
    assert parse_every("epoch") == ("epoch", 1) and parse_every("3epochs") == ("epoch", 3)
    assert parse_every(50) == ("step", 50) and parse_every("50") == ("step", 50)


def test_resume_continues_the_step_count(tmp_path):
    x, y = tensors()
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    with monitor(model, opt, tmp_path / "r", eps=EPS, probe_data=(x, y), probes=["robust_acc"],
                 probe_n=8) as mon:
        train(mon, model, opt, loader, epochs=1)
    with monitor(model, opt, tmp_path / "r", eps=EPS, probe_data=(x, y), probes=["robust_acc"],
                 probe_n=8, resume=True) as mon:
        assert mon.step == 2 and mon.epoch == 1
        train(mon, model, opt, loader, epochs=1)
    acc = load_run(tmp_path / "r").scalar("robust_acc", "clean_acc")
    assert acc["step"].tolist() == [0, 2, 4] and acc["epoch"].tolist() == [0, 1, 2]


KILLED_CHILD = textwrap.dedent("""
    import sys, torch, torch.nn.functional as F
    from torch import nn
    from codiag.monitoring import monitor
    torch.manual_seed(0)
    x, y = torch.rand(64, 1, 6, 6), torch.randint(0, 3, (64,))
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with monitor(model, opt, sys.argv[1], eps=0.1, probe_data=(x, y), probes=["robust_acc"],
                 probe_n=8, every=1, pgd_steps=1, strict=True) as mon:
        for step in range(100000):
            opt.zero_grad(); F.cross_entropy(model(x[:8]), y[:8]).backward(); opt.step()
            # the hook ran the event and flushed it: tell the parent which step is on disk
            print(mon.step, flush=True)
""")


def test_a_sigkilled_run_still_loads_with_every_row_written_before_the_kill(tmp_path):
    run_dir = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, str(run_dir)], stdout=subprocess.PIPE,
                            text=True, env=env)
    flushed = -1
    deadline = time.monotonic() + 60
    while flushed < 30 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        flushed = int(line)
    os.kill(proc.pid, signal.SIGKILL)   # mid-run, possibly mid-write
    proc.wait()
    assert flushed >= 30, "the child did not get going"
    run = load_run(run_dir)
    assert run.status == "running"
    steps = set(run.scalar("robust_acc", "pgd_acc")["step"])
    assert set(range(flushed + 1)) <= steps
    assert len(run.metrics) >= 6 * (flushed + 1)
    assert json.loads((run_dir / "run.json").read_text())["config"]["monitor"]["every"] == "1 steps"


def test_per_step_update_norms_stay_on_device_until_the_event(tmp_path):
    x, y = tensors()
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = []
    with monitor(model, opt, tmp_path / "r", eps=EPS, probe_data=(x, y), probes=["robust_acc"],
                 probe_n=8, step_update_norms=True, every="2epochs") as mon:
        for epoch in range(2):
            for i in range(3):
                before = [p.detach().clone() for p in model.parameters()]
                opt.zero_grad()
                F.cross_entropy(model(x[i::3]), y[i::3]).backward()
                opt.step()
                expected.append(torch.sqrt(sum(((p.detach() - b) ** 2).sum()
                                               for p, b in zip(model.parameters(), before))).item())
            mon.epoch_end()
            if epoch == 0:   # an epoch without an event: rows flushed, no probe ran
                assert mon.n_events == 1
    run = load_run(tmp_path / "r")
    l2 = run.scalar("step_update", "l2")
    assert l2["step"].tolist() == [1, 2, 3, 4, 5, 6] and l2["epoch"].tolist() == [1, 1, 1, 2, 2, 2]
    assert l2["value"].tolist() == pytest.approx(expected, rel=1e-5)
    assert run.scalar("robust_acc", "pgd_acc")["step"].tolist() == [0, 6]


def test_resume_keeps_the_alarm_state(tmp_path, monkeypatch):
    values = iter([(0.4, 0.5), (0.05, 0.9), (0.0, 0.9), (0.0, 0.9)])

    class Scripted(Probe):
        name = "scripted"

        def run(self, ctx):
            pgd, fgsm = next(values)
            ctx.log(RobustAcc.pgd_acc, pgd)
            ctx.log(RobustAcc.fgsm_acc, fgsm)

    monkeypatch.setitem(PROBES, "scripted", Scripted)
    x, y = tensors()
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with monitor(model, opt, tmp_path / "r", eps=EPS, probe_data=(x, y), probes=["scripted"],
                 probe_n=8, every=1) as mon:
        opt.step()
        assert mon.co_detected
        mon.epoch_end()
    calls = []
    with monitor(model, opt, tmp_path / "r", eps=EPS, probe_data=(x, y), probes=["scripted"],
                 probe_n=8, every=1, resume=True, on_co=calls.append) as mon:
        assert mon.co_detected and mon.co_alarm["step"] == 1 and mon.detector.peak_pgd == 0.4
        opt.step()
        mon.epoch_end()
    assert calls == [] and len(load_run(tmp_path / "r").events_of("co_alarm")) == 1
