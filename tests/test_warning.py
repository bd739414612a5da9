"""The early warning's rules (codiag.detector.COWarning) and the signature's first epoch, on hand-made
sequences; the monitor's ``warning`` event and ``co_warning`` on a real short training are in
tests/test_monitor_early_co.py."""
from __future__ import annotations

import math

import pytest
from test_detector import frame

from codiag.detector import CODetector, COWarning, detect_co, detect_warning


def test_the_signature_does_not_fire_inside_the_first_epoch():
    """A user's MNIST loop (2-conv CNN, FGSM at eps 0.3, SGD one-cycle): at the end of epoch 1 PGD read
    0.039 beside FGSM 0.289 (up from 0.000), then PGD rose to 0.18 at epoch 2: not yet robust, not collapsed."""
    rows = [{"step": 0, "epoch": 0, "pgd_acc": 0.0, "fgsm_acc": 0.0},
            {"step": 63, "epoch": 1, "pgd_acc": 0.039, "fgsm_acc": 0.289},
            {"step": 126, "epoch": 2, "pgd_acc": 0.18, "fgsm_acc": 0.41}]
    assert detect_co(frame(rows)) is None
    # the same event followed by one of epoch 2 that still shows the signature: the collapse
    co = detect_co(frame(rows[:2] + [{**rows[2], "pgd_acc": 0.03}]))
    assert (co["rule"], co["step"]) == ("signature", 126)
    # two events in a row inside epoch 1, the PGD accuracy lower at the second on the confirming measurement
    # (1024 points), and still not yet robust: Fashion-MNIST small_cnn, FGSM eps 0.2 under the FastAT protocol
    # at CPU size (SGD one-cycle lr 0.05, label smoothing 0.4), seed 3: PGD 0.33 at epoch 2
    ns = [(0, 0, 0.0, 0.0, 256, None), (8, 1, 0.0, 0.031, 128, None), (16, 1, 0.0, 0.180, 128, None),
          (32, 1, 0.055, 0.352, 128, None), (40, 1, 0.059, 0.449, 256, None), (40, 1, 0.046, 0.433, 1024, "confirm"),
          (80, 2, 0.332, 0.543, 256, None)]
    rows = [{"step": s, "epoch": e, "pgd_acc": p, "fgsm_acc": f, "n": n, **({"probe": c} if c else {})}
            for s, e, p, f, n, c in ns]
    assert detect_co(frame(rows)) is None
    # Fashion-MNIST FGSM at eps 0.3 (tests/test_monitor_early_co.py): the signature at every event of epoch 1,
    # the alarm at the first event of epoch 2
    fm = [(0, 0, 0.0, 0.086), (8, 1, 0.086, 0.18), (16, 1, 0.047, 0.297), (24, 1, 0.031, 0.305), (48, 2, 0.02, 0.41)]
    fm_rows = [{"step": s, "epoch": e, "pgd_acc": p, "fgsm_acc": f} for s, e, p, f in fm]
    assert detect_co(frame(fm_rows[:4])) is None
    co = detect_co(frame(fm_rows))
    assert (co["rule"], co["step"], co["epoch"]) == ("signature", 48, 2)
    # after the first epoch one event is enough (as before): a late collapse at the run's last event
    det = CODetector()
    assert det.update(0, 0, {"pgd_acc": 0.0, "fgsm_acc": 0.0}) is None
    assert det.update(64, 4, {"pgd_acc": 0.0, "fgsm_acc": 0.3})["rule"] == "signature"


def lframe(rows: list[dict]):
    """test_detector's frame with the probe set's losses: per-event dicts {step, epoch, pgd_acc, fgsm_acc,
    pgd_loss, fgsm_loss[, n][, probe]}, rows written in the monitor's order."""
    import pandas as pd

    keys = {"pgd_acc": "pgd_acc", "fgsm_acc": "fgsm_acc", "pgd_loss": "pgd_loss", "fgsm_loss": "fgsm_loss"}
    out = []
    for r in rows:
        out += [{"step": r["step"], "epoch": r["epoch"], "probe": r.get("probe", "robust_acc"), "key": key,
                 "value": r[name]} for name, key in keys.items() if name in r]
        if "n" in r:
            out.append({"step": r["step"], "epoch": r["epoch"], "probe": r.get("probe", "event"), "key": "probe_n",
                        "value": r["n"]})
    return pd.DataFrame(out)


def events(table: list[tuple]) -> list[dict]:
    names = ("step", "epoch", "n", "pgd_acc", "fgsm_acc", "pgd_loss", "fgsm_loss")
    return [dict(zip(names, row)) for row in table]


#: Fashion-MNIST, small_cnn, ZeroGrad at eps 0.3 (benchmarks/detector_eval.py, seed 41): the probe set's
#: events (step 8: a light event on 128 points). Held-out PGD-50 accuracy 0.07 after epoch 1, 0.01 after epoch 2
#: beside FGSM 0.38: the label's collapse epoch is 2, the alarm fired at epoch 2.
ZEROGRAD = events([(0, 0, 256, 0.000, 0.094, 2.400, 2.331), (8, 1, 128, 0.023, 0.203, 2.438, 2.222),
                   (16, 1, 256, 0.082, 0.266, 2.611, 2.017), (32, 2, 256, 0.039, 0.336, 2.849, 1.606)])


def test_pgd_loss_rising_warns_an_epoch_before_the_collapse():
    w = detect_warning(lframe(ZEROGRAD))
    assert (w["rule"], w["step"], w["epoch"]) == ("pgd_loss_rising", 16, 1)
    assert "0.211 above its lowest 2.400 (step 0)" in w["reason"] and w["signals"]["pgd_loss"] == 2.611
    assert detect_co(lframe(ZEROGRAD))["epoch"] == 2   # the alarm one epoch later


def test_healthy_and_diverging_runs_are_not_warned():
    # both losses fall (Fashion-MNIST small_cnn FGSM at eps 0.15, seed 40)
    healthy = events([(0, 0, 256, 0.023, 0.082, 2.362, 2.331), (16, 1, 256, 0.219, 0.320, 2.011, 1.821),
                      (32, 2, 256, 0.293, 0.379, 1.840, 1.524), (48, 3, 256, 0.297, 0.426, 1.730, 1.380)])
    assert detect_warning(lframe(healthy)) is None
    # both rise (cnn4 ATAS at eps 0.3, seed 40, epoch 4: PGD loss +0.25 over its lowest, FGSM loss +0.09)
    diverging = events([(0, 0, 256, 0.0, 0.0, 3.22, 3.08), (48, 3, 256, 0.062, 0.117, 2.43, 2.06),
                        (64, 4, 256, 0.023, 0.082, 2.68, 2.15)])
    assert detect_warning(lframe(diverging)) is None
    # a rise under 0.15 is noise of 256 points
    small = [dict(r, pgd_loss=min(r["pgd_loss"], 2.54)) for r in ZEROGRAD]
    assert detect_warning(lframe(small)) is None
    # the losses diverge but FGSM accuracy stays within 0.15 of PGD's (small_cnn ATAS at eps 0.3, seed 42,
    # epoch 2: labelled healthy; its PGD loss fell back at the next epoch)
    atas = events([(0, 0, 256, 0.0, 0.094, 2.404, 2.333), (16, 1, 256, 0.07, 0.21, 2.43, 2.17),
                   (32, 2, 256, 0.113, 0.219, 2.636, 1.910)])
    assert detect_warning(lframe(atas)) is None
    w = detect_warning(lframe([*atas[:2], dict(atas[2], fgsm_acc=0.27)]))
    assert w["step"] == 32 and "accuracy gap 0.157" in w["reason"]


def test_only_full_events_set_the_lowest_pgd_loss_and_a_confirmation_is_not_read():
    # a light event's low value (128 points) does not become the reference ...
    rows = events([(0, 0, 256, 0.0, 0.1, 2.40, 2.33), (8, 1, 128, 0.0, 0.2, 2.10, 2.20),
                   (16, 1, 256, 0.0, 0.3, 2.30, 2.00)])
    assert detect_warning(lframe(rows)) is None
    # ... but a light event may fire the rule
    w = detect_warning(lframe([rows[0], dict(rows[1], pgd_loss=2.60)]))
    assert (w["step"], w["signals"]["n"]) == (8, 128)
    # a confirming measurement (1024 other points) neither fires it nor sets its reference
    confirm = dict(rows[2], probe="confirm", n=1024, pgd_loss=2.9)
    assert detect_warning(lframe([rows[0], rows[2], confirm])) is None


def test_the_warning_fires_once_and_not_at_or_after_the_alarm():
    warner = COWarning()
    seq = [(2.4, 2.3), (2.5, 2.2), (2.6, 2.1), (2.8, 2.0)]
    hits = [warner.update(i, i, {"pgd_loss": p, "fgsm_loss": f, "pgd_acc": 0.0, "fgsm_acc": 0.2})
            for i, (p, f) in enumerate(seq)]
    assert hits[:2] == [None, None] and hits[2]["rule"] == "pgd_loss_rising" and hits[3] is None
    warner.reset()
    assert warner.warning is None and warner.low is None and warner.update(9, 9, {"pgd_loss": 9.0}) is None
    # the alarm fires at the event the warning would: no warning
    rows = [dict(r, pgd_acc=p) for r, p in zip(ZEROGRAD, (0.4, 0.4, 0.02, 0.02))]
    assert detect_co(lframe(rows))["step"] == 16 and detect_warning(lframe(rows)) is None


def test_the_monitor_writes_the_warning_and_the_guard_acts_on_it(tmp_path):
    """A real short training in a user's loop (Fashion-MNIST, tests/test_guard.py's loop). The warning's
    lines are set so that it fires at the first event that has an earlier one to compare with (what is
    checked is the wiring, not the lines): a ``warning`` event and ``mon.co_warning``; with a guard whose
    policy acts on warnings, a roll-back (``trigger: warning``) that re-arms it, then ``collapsed`` once
    ``max_rollbacks`` is used up; without one, the warning changes nothing."""
    import torch
    from test_guard import EPS, fgsm, loop, make_model, options

    from codiag.data import load_dataset
    from codiag.monitoring import monitor
    from codiag.runs import load_run

    train = load_dataset("fashion_mnist", train=True, limit=16 * 20)
    test = load_dataset("fashion_mnist", train=False, limit=64)
    x = train.images.float().div(255)
    batches = [(x[i:i + 16], train.labels[i:i + 16]) for i in range(0, len(x), 16)]
    probe = (test.images.float().div(255), test.labels)
    class Seen:   # a user's sink (the protocol of sinks=): what a tracker would turn into alerts
        def __init__(self):
            self.events = []

        def log(self, step, rows):
            pass

        def event(self, kind, fields):
            self.events.append((kind, dict(fields)))

        def close(self, status):
            pass

    seen = Seen()
    eager = dict(loss_rise=-math.inf, fgsm_fall=-math.inf, min_gap=-math.inf)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = {}
        for name, guard in (("plain", None), ("guarded", {"mitigation": "mine", "max_rollbacks": 1,
                                                          "on": ("warning",)})):
            model = make_model()
            opt = torch.optim.Adam(model.parameters(), lr=1e-2)
            attack = fgsm(EPS)
            kw = {"sinks": [seen]} if guard is None else {"guard": guard, "on_co": lambda info: None}
            with monitor(model, opt, tmp_path / name, EPS, probe_data=probe, attack=attack, **kw,
                         **options()) as mon:
                mon.alarm.warner = COWarning(**eager)   # fed from the event at step 4 on
                loop(model, opt, batches, lambda a=attack: a, mon)
            runs[name] = (mon, load_run(tmp_path / name))
    finally:
        torch.set_num_threads(threads)
    mon, run = runs["plain"]
    assert [e["step"] for e in run.events_of("warning")] == [8] and not run.events_of("rollback")
    assert mon.co_warning["step"] == 8 and mon.co_warning["rule"] == "pgd_loss_rising"
    assert run.events_of("warning")[0]["signals"] == pytest.approx(mon.co_warning["signals"])
    assert [f["step"] for k, f in seen.events if k == "warning"] == [8]
    mon, run = runs["guarded"]
    kinds = [(e["kind"], e["step"]) for e in run.events if e["kind"] in ("warning", "rollback", "collapsed")]
    assert kinds == [("warning", 8), ("rollback", 8), ("warning", 16), ("collapsed", 16)]
    rollback = run.events_of("rollback")[0]
    assert (rollback["trigger"], rollback["restored_step"], rollback["alarm_rule"]) == ("warning", 4, "pgd_loss_rising")
    assert mon.collapsed and run.meta["guard"]["status"] == "collapsed"


def test_resume_keeps_the_warning(tmp_path, monkeypatch):
    """A resumed run rebuilds the warning from the recorded events: it stands, and is not raised twice."""
    import torch
    from test_monitor import EPS, tensors, tiny

    from codiag.monitoring import monitor
    from codiag.probes import PROBES
    from codiag.probes.base import Probe
    from codiag.probes.robust_acc import RobustAcc
    from codiag.runs import load_run

    values = iter([(2.0, 2.0), (2.1, 1.9), (2.3, 1.8), (2.4, 1.7), (2.5, 1.6)])   # PGD loss up, FGSM loss down

    class Scripted(Probe):
        name = "scripted"

        def run(self, ctx):
            ctx.log(RobustAcc.pgd_acc, 0.3)
            ctx.log(RobustAcc.fgsm_acc, 0.35)
            pgd, fgsm = next(values)
            ctx.log(RobustAcc.pgd_loss, pgd)
            ctx.log(RobustAcc.fgsm_loss, fgsm)
            ctx.log(RobustAcc.pgd_acc, 0.3)   # constant, 0.2 under FGSM's: no alarm
            ctx.log(RobustAcc.fgsm_acc, 0.5)

    monkeypatch.setitem(PROBES, "scripted", Scripted)
    x, y = tensors()
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    kw = dict(eps=EPS, probe_data=(x, y), probes=["scripted"], probe_n=8, every=1)
    with monitor(model, opt, tmp_path / "r", **kw) as mon:
        opt.step()
        assert mon.co_warning is None
        opt.step()
        assert mon.co_warning["step"] == 2 and mon.co_warning["rule"] == "pgd_loss_rising"
        mon.epoch_end()
    with monitor(model, opt, tmp_path / "r", resume=True, **kw) as mon:
        assert mon.co_warning["step"] == 2 and mon.alarm.warner.low == (0, 2.0, 2.0)
        opt.step()
        opt.step()
        mon.epoch_end()
    assert [e["step"] for e in load_run(tmp_path / "r").events_of("warning")] == [2] and not mon.co_detected


@pytest.mark.slow
def test_a_real_collapse_is_warned_an_epoch_before_its_alarm(tmp_path):
    """benchmarks/detector_eval.py's run (Fashion-MNIST, 2000 images, small_cnn width 8, FGSM, Adam 3e-3,
    batch 128, seed 40), two epochs, default lines. At eps 0.35 (labelled a collapse at epoch 2 there:
    held-out PGD-50 accuracy 0.00, FGSM 0.28 then 0.42) the probe PGD loss rises from 2.40 while the FGSM
    loss falls inside epoch 1: warned at step 16 (epoch 1), the alarm follows at epoch 2. At eps 0.05
    (robust: PGD accuracy 0.47 then 0.60) neither."""
    import torch

    from codiag.data import load_dataset, make_loader
    from codiag.methods import get_method
    from codiag.models import build_model
    from codiag.monitoring import monitor
    from codiag.runs import load_run

    train = load_dataset("fashion_mnist", train=True, limit=2000)
    test = load_dataset("fashion_mnist", train=False, limit=1256)
    probe = (test.images[1000:].float() / 255, test.labels[1000:])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mons = {}
        for eps in (0.35, 0.05):
            torch.manual_seed(40)
            model = build_model("small_cnn", train.spec, width=8, hidden=64)
            opt = torch.optim.Adam(model.parameters(), lr=3e-3)
            method = get_method("fgsm", eps, seed=40, num_samples=len(train), epochs=2)
            loader = make_loader(train, 128, shuffle=True, with_index=True, seed=40)
            with monitor(model, opt, tmp_path / str(eps), eps=eps, probe_data=probe, attack=method.perturb,
                         method=method, probes="robust_acc,grad_align", confirm_n=0) as mon:
                for epoch in range(2):
                    method.on_epoch_start(epoch)
                    for x, y, meta in loader:
                        method.train_step(model, opt, x, y, meta)
                    mon.epoch_end()
            mons[eps] = mon
    finally:
        torch.set_num_threads(threads)
    w, alarm = mons[0.35].co_warning, mons[0.35].co_alarm
    assert (w["rule"], w["step"], w["epoch"]) == ("pgd_loss_rising", 16, 1)
    assert w["signals"]["pgd_loss"] - 2.4 >= COWarning.loss_rise and alarm["epoch"] == 2
    run = load_run(tmp_path / "0.35")
    assert [e["step"] for e in run.events_of("warning")] == [16] and detect_warning(run.metrics) == w
    assert mons[0.05].co_warning is None and mons[0.05].co_alarm is None
