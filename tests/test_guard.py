"""The best checkpoint and the CO guard in a user's own loop (``codiag.monitor(keep_best=..., guard=...)``).

Real Fashion-MNIST points and a small CNN trained for a few dozen steps. Where a test needs
the alarm at a known step it passes its own detector (``detector=`` takes any
:class:`codiag.detector.Detector`, as a user's would), so what is checked is the guard's
mechanics: the restore is exact (weights and optimizer state equal the healthy event's,
also at a second restore from the same snapshot), ``max_rollbacks`` ends in ``collapsed``,
a roll-back then a resume gives the uninterrupted weights, and ``best.pt`` is written
atomically and loads with ``weights_only=True``. The guard on a real collapse is
tests/test_guard_train.py.
"""
from __future__ import annotations

import copy
import io
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from codiag.data import load_dataset
from codiag.detector import Detector
from codiag.errors import UsageError
from codiag.monitoring import monitor
from codiag.runs import load_run

EPS = 0.2
STEPS = 24


class AlarmFrom(Detector):
    """A user's detector: fires at every event from ``step`` on (until re-armed), or only at ``step``."""

    name = "alarm_from"

    def __init__(self, step: int, once: bool = False) -> None:
        self.at, self.once, self.alarm, self.suspect = step, once, None, False

    def update(self, step, epoch, values):
        if self.alarm is None and (step == self.at if self.once else step >= self.at):
            self.alarm = {"step": int(step), "epoch": int(epoch), "rule": "user", "reason": "test", "values": {}}
            return self.alarm
        return None

    def reset(self) -> None:
        self.alarm = None


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)    # the suite's budget is one core; small models run faster so
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    train = load_dataset("fashion_mnist", train=True, limit=16 * STEPS)
    test = load_dataset("fashion_mnist", train=False, limit=64)
    x = train.images.float().div(255)
    batches = [(x[i:i + 16], train.labels[i:i + 16]) for i in range(0, len(x), 16)]
    return batches, (test.images.float().div(255), test.labels)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 13 * 13, 10))


def fgsm(step: float):
    def attack(model, x, y):
        x = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
        return (step * g.sign()).clamp(-EPS, EPS).detach()
    return attack


def loop(model, opt, batches, attack_of, mon, start=0, stop=None, after_step=None):
    """The user's loop: ``attack_of()`` is read at every step, so on_co can switch it."""
    for i, (x, y) in enumerate(batches[start:stop], start):
        delta = attack_of()(model, x, y)
        loss = F.cross_entropy(model((x + delta).clamp(0, 1)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step(mon)
        if (i + 1) % 8 == 0:
            mon.epoch_end()


def options(**extra):
    return dict(every=4, probes=["robust_acc"], probe_n=32, train_probe_n=32, confirm_n=0, early_events=False,
                strict=True, **extra)


def test_restore_is_exact_and_max_rollbacks_ends_in_collapsed(tmp_path, data):
    """Alarm from step 12 on: roll-backs at 12 and 16 (both to the event at step 8, the same snapshot
    twice), then max_rollbacks (2) is used up: ``collapsed`` at step 20, status in run.json."""
    batches, probe = data
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    at_8, infos = {}, []

    def keep_step_8(mon):
        if mon.step == 8:
            at_8.update(model=copy.deepcopy(model.state_dict()), opt=copy.deepcopy(opt.state_dict()))

    def on_co(info):
        infos.append((info, copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())))

    attack = fgsm(EPS)
    with monitor(model, opt, tmp_path / "run", EPS, probe_data=probe, attack=attack, detector=AlarmFrom(12),
                 guard={"mitigation": "mine", "max_rollbacks": 2}, on_co=on_co, **options()) as mon:
        loop(model, opt, batches, lambda: attack, mon, after_step=keep_step_8)
    assert [i["action"] for i, _, _ in infos] == ["rollback", "rollback", "none"]
    for info, weights, opt_state in infos[:2]:
        assert info["restored_step"] == 8 and info["mitigation"] == "mine" and info["alarm"]["rule"] == "user"
        for k, v in at_8["model"].items():
            assert torch.equal(weights[k], v), k
        for p, st in at_8["opt"]["state"].items():
            for k, v in st.items():
                assert torch.equal(torch.as_tensor(opt_state["state"][p][k]), torch.as_tensor(v)), (p, k)
    assert mon.collapsed and len(mon.rollbacks) == 2
    run = load_run(tmp_path / "run")
    kinds = [e["kind"] for e in run.events if e["kind"] in ("co_alarm", "rollback", "collapsed")]
    assert kinds == ["co_alarm", "rollback", "co_alarm", "rollback", "co_alarm", "collapsed"]
    assert [e["step"] for e in run.events_of("rollback")] == [12, 16]
    assert run.meta["guard"]["status"] == "collapsed" and run.meta["guard"]["rollbacks"] == 2
    assert run.meta["best"]["step"] <= 24 and (tmp_path / "run" / "checkpoints" / "best.pt").exists()


def test_without_on_co_the_guard_restores_and_warns(tmp_path, data):
    batches, probe = data
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    attack = fgsm(EPS)
    with pytest.warns(UserWarning, match="guard: CO alarm at step 12: restored the state of step 8"):
        with monitor(model, opt, tmp_path / "run", EPS, probe_data=probe, attack=attack,
                     detector=AlarmFrom(12, once=True), guard=True, **options()) as mon:
            loop(model, opt, batches[:16], lambda: attack, mon)
    assert mon.rollbacks[0]["restored_step"] == 8 and not mon.collapsed


def test_a_user_loop_switches_its_attack_on_co_and_resumes_to_the_uninterrupted_weights(tmp_path, data):
    """on_co switches the loop's attack to the suggested mitigation (half the step); a run stopped
    after the roll-back and resumed from the loop's own checkpoint (with ``mon.state_dict()``) ends
    with the weights of the run that never stopped."""
    batches, probe = data

    def run(name, stop=None, resume_from=None):
        model = make_model()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        current = {"attack": fgsm(EPS)}

        def on_co(info):
            assert info["mitigation"] == "halve-step" and info["action"] == "rollback"
            current["attack"] = fgsm(EPS / 2)

        start = 0
        if resume_from is not None:
            saved = torch.load(io.BytesIO(resume_from), weights_only=True)
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])
            start = saved["step"]
        with monitor(model, opt, tmp_path / name, EPS, probe_data=probe,
                     attack=lambda m, x, y: current["attack"](m, x, y), detector=AlarmFrom(12, once=True),
                     guard="halve-step", on_co=on_co,
                     resume=resume_from is not None, **options()) as mon:
            if resume_from is not None:
                mon.load_state_dict(saved["monitor"])
                if mon.rollbacks:            # the loop's own policy state: the switch it made
                    current["attack"] = fgsm(EPS / 2)
            loop(model, opt, batches, lambda: current["attack"], mon, start=start, stop=stop)
            buf = io.BytesIO()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": mon.step,
                        "monitor": mon.state_dict()}, buf)
        return model, buf.getvalue()

    whole, _ = run("whole")
    _, saved = run("cut", stop=16)                    # after the roll-back at step 12
    resumed, _ = run("cut", resume_from=saved)
    for k, v in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k
    a, b = load_run(tmp_path / "whole"), load_run(tmp_path / "cut")
    assert [e["step"] for e in a.events_of("rollback")] == [e["step"] for e in b.events_of("rollback")] == [12]
    assert a.meta["best"] == b.meta["best"]


def test_best_checkpoint_is_the_highest_pgd_event(tmp_path, data):
    """best.pt holds the state of the full event with the highest probe PGD accuracy and loads with
    weights_only=True; run.json's ``best`` is ``mon.best``; restore_best() puts it back."""
    batches, probe = data
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    run_dir = tmp_path / "run"
    kept = {0: copy.deepcopy(model.state_dict())}

    def keep(mon):
        if mon.best is not None and mon.best["step"] == mon.step:
            kept[mon.step] = copy.deepcopy(model.state_dict())

    attack = fgsm(EPS)
    with monitor(model, opt, run_dir, EPS, probe_data=probe, attack=attack, keep_best=True, **options()) as mon:
        loop(model, opt, batches, lambda: attack, mon, after_step=keep)
        best = mon.best
    saved = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    pgd = load_run(run_dir).scalar("robust_acc", "pgd_acc")
    assert best["pgd_acc"] == pytest.approx(pgd["value"].max())
    assert best["step"] == int(pgd.loc[pgd["value"].idxmax(), "step"])   # the first event at the peak
    assert json.loads((run_dir / "run.json").read_text())["best"] == best
    for k, v in saved.items():
        assert torch.equal(v, kept[best["step"]][k]), k
    assert mon.restore_best() == best                 # the best weights back into the user's model
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    with monitor(make_model(), opt, tmp_path / "nobest", EPS, probe_data=probe, attack=attack, **options()) as m2:
        with pytest.raises(UsageError, match="keep_best"):
            m2.restore_best()


def test_best_checkpoint_is_written_atomically(tmp_path, data):
    """A symbolic link planted at best.pt's name is replaced, not written through; no temporary file stays."""
    batches, probe = data
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    run_dir, attack = tmp_path / "run", fgsm(EPS)
    with monitor(model, opt, run_dir, EPS, probe_data=probe, attack=attack, **options()):
        pass
    (run_dir / "checkpoints").mkdir()
    outside = tmp_path / "outside.pt"
    outside.write_bytes(b"not ours")
    (run_dir / "checkpoints" / "best.pt").symlink_to(outside)
    with monitor(model, opt, run_dir, EPS, probe_data=probe, attack=attack, keep_best=True, resume=True,
                 **options()) as mon:
        loop(model, opt, batches[:8], lambda: attack, mon)
    path = run_dir / "checkpoints" / "best.pt"
    assert outside.read_bytes() == b"not ours"
    assert not path.is_symlink() and not list(path.parent.glob("*.tmp")) and not list(path.parent.glob(".*"))
    assert mon.best["step"] >= 4 and set(torch.load(path, weights_only=True)) == set(model.state_dict())


def test_guard_refuses_a_monitor_without_detector(tmp_path, data):
    _, probe = data
    model = make_model()
    with pytest.raises(UsageError, match="needs a detector"):
        monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), tmp_path / "r", EPS, probe_data=probe,
                guard="n_fgsm", detector=False)
    with pytest.raises(UsageError, match="max_rollbacks"):
        monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), tmp_path / "r", EPS, probe_data=probe,
                guard={"max_rollbacks": -1})


def test_sweep_grid_takes_guarded_variants():
    """``fgsm+guard`` (the default policy) and ``fgsm+guard-POLICY`` are methods of a sweep grid: their
    cells train fgsm with --guard, with fgsm's -m overrides."""
    from codiag.sweeps.grid import cell_config, make_cells, protocol_of, split_method_args

    cells = make_cells("fgsm,FGSM+guard,fgsm+guard-N_FGSM,fgsm+guard-halve_step", "0.25", "0")
    assert [c.name for c in cells] == ["fgsm-eps0.25-seed0", "fgsm+guard-eps0.25-seed0",
                                       "fgsm+guard-n_fgsm-eps0.25-seed0", "fgsm+guard-halve-step-eps0.25-seed0"]
    overrides = split_method_args([("fgsm.step", 0.9)], [c.method for c in cells])
    assert all(overrides[c.method] == {"step": 0.9} for c in cells)
    configs = [cell_config(c, protocol_of({}, overrides), "out") for c in cells]
    assert [(c["method"], c.get("guard")) for c in configs] == [
        ("fgsm", None), ("fgsm", "auto"), ("fgsm", "n_fgsm"), ("fgsm", "halve-step")]
    assert all(c["method_args"] == {"step": 0.9} for c in configs)
    for bad in ("fgsm+guard-nope", "fgsm+guardx", "nope+guard"):
        with pytest.raises(UsageError):
            make_cells(bad, "0.25", "0")


def test_a_snapshot_is_never_trained_into():
    """Optimizer.load_state_dict keeps CPU tensors it is given: the snapshot hands it a copy, so training
    after a restore leaves the snapshot as it was (a second restore gives the same state)."""
    from codiag.snapshot import Snapshot

    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.arange(8)

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    snap = Snapshot.take(model, opt, step=1)
    before = copy.deepcopy(snap.optimizer)
    for _ in range(2):
        snap.restore(model, opt)
        step()
        step()
    for p, st in before["state"].items():
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(snap.optimizer["state"][p][k]), torch.as_tensor(v)), (p, k)


def test_trainer_policies_build_their_mitigation():
    """--guard policies: n_fgsm and gradalign with the dataset's validated settings (nearest eps),
    halve-step with half the step and half the random start; bad policies refused in one line."""
    from codiag.trainer import TrainConfig
    from codiag.trainer_guard import TrainerGuard

    def mitigation(**cfg):
        c = TrainConfig.from_dict(dict(dict(dataset="fashion_mnist", eps=0.25), **cfg))
        return TrainerGuard(c, 100, None).mitigated_method()

    auto = mitigation(method="fgsm", guard="auto")                # the measured mitigation on Fashion-MNIST
    assert (auto.name, auto.c, auto.warmup_epochs) == ("atas", 0.002, 0)
    c = TrainConfig.from_dict(dict(dataset="mnist", eps=0.3, method="fgsm", guard="auto", model="cnn4"))
    assert TrainerGuard(c, 100, None).mitigated_method().name == "n_fgsm"   # elsewhere N-FGSM ...
    c = TrainConfig.from_dict(dict(dataset="mnist", eps=0.3, method="fgsm", guard="auto", model="small_cnn"))
    assert TrainerGuard(c, 100, None).mitigated_method().name == "atas"     # ... but ATAS with small_cnn
    n = mitigation(method="fgsm", guard="n_fgsm")
    assert (n.name, n.step, n.noise) == ("n_fgsm", 0.75, 2.0)      # the Fashion-MNIST row (eps 0.2)
    g = mitigation(method="fgsm", guard="gradalign")
    assert (g.name, g.lam, g.step) == ("gradalign", 2.0, 0.6)
    a = mitigation(method="fgsm", guard="ATAS")
    assert (a.name, a.c, a.warmup_epochs) == ("atas", 0.002, 0)    # the Fashion-MNIST row, no warm-up
    h = mitigation(method="fgsm_rs", guard="halve_step", method_args={"step": 1.0})
    assert (h.name, h.step, h.init) == ("fgsm_rs", 0.5, 0.5)
    for bad in (dict(method="fgsm", guard="nope"), dict(method="fgsm", guard="auto", detector="none"),
                dict(method="zerograd_rollback", guard="auto"), dict(method="pgd10", guard="halve-step")):
        with pytest.raises(UsageError):
            TrainConfig.from_dict(dict(dataset="fashion_mnist", eps=0.25, **bad))


def test_the_rollback_target_is_the_latest_event_that_shows_no_collapse():
    """A full event is a roll-back target where no alarm stands and its accuracies show no collapse: PGD
    accuracy at least 0.6 of the best so far, not PGD <= 0.1 with FGSM 0.25 above it. An event the detector
    is only ``suspect`` of (a run not yet robust) is one; the confirming measurement's accuracies count."""
    from codiag.monitoring.guard import Guard, GuardState

    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = GuardState(Guard())

    def event(step, pgd, fgsm, confirm=None, **flags):
        with torch.no_grad():
            model.weight.fill_(step)         # the weights tell the snapshots apart
        values = {("robust_acc", "pgd_acc"): pgd, ("robust_acc", "fgsm_acc"): fgsm}
        if confirm is not None:
            values.update({("confirm", "pgd_acc"): confirm[0], ("confirm", "fgsm_acc"): confirm[1]})
        guard.observe(model, opt, step, step // 32, values, **flags)
        return None if guard.snapshot is None else guard.snapshot.step

    assert event(0, 0.0, 0.0) == 0
    assert event(32, 0.05, 0.32) == 0                              # in the signature
    assert event(64, 0.043, 0.262, confirm=(0.043, 0.234), suspect=True) == 64   # near a line: not yet robust
    assert event(96, 0.05, 0.2, confirm=(0.04, 0.3)) == 64        # the confirmation (more points) decides
    assert event(128, 0.2, 0.3) == 128                             # the best so far
    assert event(160, 0.11, 0.2) == 128                            # under 0.6 of it: falling
    assert event(192, 0.13, 0.2) == 192
    assert event(224, 0.3, 0.35, alarmed=True) == 192              # an alarm stands
    assert event(256, 0.5, 0.5, suspect=False) == 256 and guard.peak == 0.5
    assert guard.act(model, opt, {"step": 288, "rule": "user"})["restored_step"] == 256
    assert model.weight.eq(256).all() and guard.peak == 0.5
    assert event(288, 0.28, 0.4) == 256                            # the restored trajectory's peak is kept
    # no robust accuracies recorded: the detector's ``suspect`` decides
    assert event(320, float("nan"), 0.4, suspect=True) == 256 and event(352, float("nan"), 0.4) == 352
    again = GuardState(Guard())
    again.load_state_dict(guard.state_dict())
    assert (again.peak, again.snapshot_peak, again.snapshot.step) == (0.5, 0.5, 352)


def test_the_trainers_weight_average_and_selected_checkpoint_go_back_with_the_rollback():
    """``codiag train --guard --weight-averaging TAU --select best``: the EMA and the best checkpoint are
    part of the snapshot; the roll-back puts them back as they were at the restored event (the EMA's update
    count too), however far they moved since: a model of the discarded stretch is not selected."""
    from codiag.monitoring.guard import GuardState
    from codiag.protocol import Extras
    from codiag.trainer import TrainConfig, build_method
    from codiag.trainer_guard import TrainerGuard

    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    extras = Extras(model, 0.9, select_best=True)
    ema, best = extras.averaged, extras.best
    cfg = TrainConfig.from_dict(dict(dataset="fashion_mnist", eps=0.25, method="fgsm", guard="n_fgsm",
                                     weight_averaging=0.9, val_split=100, select="best"))
    rescue = TrainerGuard(cfg, 100, build_method(cfg, 100), extras)
    guard = GuardState(rescue.policy())

    def steps(n):
        for _ in range(n):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01)
            ema.update_parameters(model)

    steps(3)
    best.consider(1, {"raw": ({"pgd_acc": 0.3, "clean_acc": 0.6}, model)})
    guard.observe(model, opt, 3, 1, {("robust_acc", "pgd_acc"): 0.3, ("robust_acc", "fgsm_acc"): 0.35})
    kept, kept_best = copy.deepcopy(ema.state_dict()), copy.deepcopy(best.state_dict())
    steps(5)
    assert best.consider(2, {"raw": ({"pgd_acc": 0.4, "clean_acc": 0.5}, model)})   # the stretch rolled back
    rescue.on_co(guard.act(model, opt, {"step": 8, "rule": "user"}))
    method, position = rescue.switch()
    assert method.name == "n_fgsm" and position == 0
    for k, v in kept.items():
        assert torch.equal(ema.state_dict()[k], v), k
    assert int(ema.n_averaged) == 3
    assert (best.epoch, best.pgd_acc) == (1, 0.3)
    for k, v in kept_best["state"].items():
        assert torch.equal(best.state[k], v), k
    steps(1)                                     # training on does not write into the snapshot
    assert torch.equal(guard.snapshot.extra["averaged"]["module.0.weight"], kept["module.0.weight"])


class WarnFrom:
    """A warning rule (the interface of codiag.detector.COWarning) that holds from ``step`` on."""

    def __init__(self, step: int) -> None:
        self.at, self.warning = step, None

    def update(self, step, epoch, values):
        if self.warning is None and step >= self.at:
            self.warning = {"step": int(step), "epoch": int(epoch), "rule": "user", "reason": "test", "signals": {}}
            return self.warning
        return None

    def reset(self) -> None:
        self.warning = None


def test_on_event_carries_the_warning_and_the_alarm(tmp_path, data):
    """The dict passed to ``on_event`` has ``co_warning`` (None until the warning, then mon.co_warning)
    beside ``co_alarm``, at every event."""
    batches, probe = data
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    attack, seen = fgsm(EPS), []
    with monitor(model, opt, tmp_path / "run", EPS, probe_data=probe, attack=attack, detector=AlarmFrom(16),
                 on_event=seen.append, **options()) as mon:
        mon.alarm.warner = WarnFrom(8)
        loop(model, opt, batches[:20], lambda: attack, mon)
    assert mon.co_warning["step"] == 8 and mon.co_alarm["step"] == 16
    by_step = [(e["step"], (e["co_warning"] or {}).get("step"), (e["co_alarm"] or {}).get("step")) for e in seen]
    assert by_step == [(0, None, None), (4, None, None), (8, 8, None), (12, 8, None), (16, 8, 16), (20, 8, 16)]
    assert seen[-1]["co_warning"] == mon.co_warning


@pytest.mark.parametrize("offset", [3, 5])
def test_a_snapshot_inside_a_trainer_step_returns_to_the_next_batch(offset):
    """A snapshot the monitor takes at an optimizer step hook (``every=N`` steps) gets the trainer's
    state after that step and its place: the next batch of the same epoch, which the loader replays
    from there after the roll-back, or, after the epoch's last batch, the next epoch's start."""
    from codiag.data import InMemoryDataset, dataset_spec, make_loader
    from codiag.monitoring.guard import GuardState
    from codiag.trainer import TrainConfig, build_method
    from codiag.trainer_guard import TrainerGuard

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8, generator=gen)
    loader = make_loader(InMemoryDataset(images, torch.arange(40) % 10, dataset_spec("fashion_mnist")), 8,
                         shuffle=True, with_index=True, seed=1)   # 5 batches an epoch
    model, cfg = make_model(), TrainConfig.from_dict(dict(dataset="fashion_mnist", eps=0.25, method="fgsm",
                                                          guard="n_fgsm"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rescue = TrainerGuard(cfg, 40, build_method(cfg, 40))
    guard = GuardState(rescue.policy())
    order = []
    for i, (_, _, meta) in enumerate(loader):
        order.append(meta.index)
        if i + 1 == offset:   # the event of this step, inside it: then the trainer's after_step
            guard.observe(model, opt, 7, 1, {("robust_acc", "pgd_acc"): 0.3, ("robust_acc", "fgsm_acc"): 0.35})
            rescue.after_step(guard, 6, 0, i + 1, loader)
        else:
            rescue.after_step(guard, 7 + i, 0, i + 1, loader)   # no snapshot in this step: nothing changes
    rescue.on_co(guard.act(model, opt, {"step": 9, "rule": "user"}))
    _, position = rescue.switch()
    pending = rescue.state_dict()            # what a checkpoint written now holds (a resume goes on from it)
    first = rescue.start_epoch(loader)
    tail = [meta.index for _, _, meta in loader]
    if offset < len(loader):
        assert pending == {"mitigated": True, "restart": {"offset": offset, "loader_epoch": 0}}
        assert (position, first) == (0, offset) and rescue.state_dict() == {"mitigated": True}
        assert len(tail) == len(loader) - offset and all(torch.equal(a, b) for a, b in zip(tail, order[offset:]))
    else:
        assert pending == {"mitigated": True} and (position, first) == (1, 0) and len(tail) == len(loader)
        assert not torch.equal(torch.cat(tail), torch.cat(order))   # the next epoch's order


def test_free_m_probe_events_come_at_batch_ends(tmp_path):
    """Free-m makes m optimizer steps a batch, and its state between two of them (the model of one
    replay, the perturbation carried to the next) is not one a roll-back can go on from: the trainer
    holds the events due inside a batch to the batch's end. With m = 4 and an event every 6 steps,
    the events land at steps 8, 12 and 20 (the ends of the batches that held steps 6, 12 and 18)."""
    from codiag.trainer import train
    out = tmp_path / "free"
    train(dict(dataset="fashion_mnist", model="cnn4", method="free", method_args={"m": 4}, eps=0.1,
               train_limit=640, epochs=1, every=6, probes=["robust_acc"], probe_n=64, eval_n=0,
               progress=False, guard="n_fgsm", out=str(out)))
    run = load_run(out)
    steps = sorted(set(run.scalar("robust_acc", "pgd_acc")["step"]))
    assert steps[0] == 0 and 20 in steps and all(s % 4 == 0 for s in steps), steps
