"""The early warning's rules (codiag.detector.COWarning) and the signature's second event, on hand-made
sequences; the monitor's ``warning`` event and ``co_warning`` on a real short training are in
tests/test_monitor_early_co.py."""
from __future__ import annotations

import pytest
from test_detector import frame

from codiag.detector import CODetector, COWarning, detect_co, detect_warning


def test_the_signature_needs_a_second_event_inside_the_first_epoch():
    """A user's MNIST loop (2-conv CNN, FGSM at eps 0.3, SGD one-cycle): at the end of epoch 1 PGD read
    0.039 beside FGSM 0.289 (up from 0.000), then PGD rose to 0.18 at epoch 2: not yet robust, not collapsed."""
    rows = [{"step": 0, "epoch": 0, "pgd_acc": 0.0, "fgsm_acc": 0.0},
            {"step": 63, "epoch": 1, "pgd_acc": 0.039, "fgsm_acc": 0.289},
            {"step": 126, "epoch": 2, "pgd_acc": 0.18, "fgsm_acc": 0.41}]
    assert detect_co(frame(rows)) is None
    # the same event followed by a second one that still shows the signature: the collapse
    co = detect_co(frame(rows[:2] + [{**rows[2], "pgd_acc": 0.03}]))
    assert (co["rule"], co["step"]) == ("signature", 126)
    # Fashion-MNIST FGSM at eps 0.3 (tests/test_monitor_early_co.py): light events inside epoch 1 carry the
    # second event, so a collapse inside the first epoch still alarms in it
    fm = [(0, 0, 0.0, 0.086), (8, 1, 0.086, 0.18), (16, 1, 0.047, 0.297), (24, 1, 0.031, 0.305)]
    co = detect_co(frame([{"step": s, "epoch": e, "pgd_acc": p, "fgsm_acc": f} for s, e, p, f in fm]))
    assert (co["rule"], co["step"], co["epoch"]) == ("signature", 24, 1)
    # after the first epoch one event is enough (as before): a late collapse at the run's last event
    det = CODetector()
    assert det.update(0, 0, {"pgd_acc": 0.0, "fgsm_acc": 0.0}) is None
    assert det.update(64, 4, {"pgd_acc": 0.0, "fgsm_acc": 0.3})["rule"] == "signature"


def test_a_confirmation_at_the_same_step_is_not_a_second_event():
    rows = [{"step": 0, "epoch": 0, "pgd_acc": 0.0, "fgsm_acc": 0.0},
            {"step": 16, "epoch": 1, "pgd_acc": 0.04, "fgsm_acc": 0.3},
            {"step": 16, "epoch": 1, "probe": "confirm", "pgd_acc": 0.05, "fgsm_acc": 0.31}]
    assert detect_co(frame(rows)) is None


def test_align_falling_warns_before_the_collapse():
    """The demo's alignment fell 0.87 -> 0.65 -> 0.49 over the epochs before its collapse while PGD held."""
    align = [0.5, 0.8, 0.87, 0.65, 0.49, 0.2]
    pgd = [0.0, 0.3, 0.35, 0.36, 0.35, 0.02]
    fgsm = [0.1, 0.4, 0.45, 0.46, 0.47, 0.7]
    rows = [{"step": 10 * i, "epoch": i, "pgd_acc": p, "fgsm_acc": f, "grad_align": a}
            for i, (p, f, a) in enumerate(zip(pgd, fgsm, align))]
    w = detect_warning(frame(rows))
    assert (w["rule"], w["step"], w["epoch"]) == ("align_falling", 40, 4) and "0.870 -> 0.650 -> 0.490" in w["reason"]
    assert detect_co(frame(rows))["epoch"] == 5   # the alarm one epoch later
    # one fall is not a trend; a fall of less than a fifth of the peak is noise
    assert detect_warning(frame(rows[:4])) is None
    small = [{**r, "grad_align": a} for r, a in zip(rows, [0.5, 0.8, 0.87, 0.8, 0.75, 0.74])]
    assert detect_warning(frame(small[:5])) is None


def test_gap_widening_needs_a_measured_robustness_and_a_rise_over_its_median():
    steps = [0, 8, 16, 32, 64, 128]
    pgd = [0.0, 0.01, 0.0, 0.0, 0.21, 0.27]
    fgsm = [0.086, 0.094, 0.078, 0.195, 0.22, 0.41]   # a healthy Fashion-MNIST run at eps 0.2
    rows = [{"step": s, "epoch": min(e, 2), "pgd_acc": p, "fgsm_acc": f}
            for e, (s, p, f) in enumerate(zip(steps, pgd, fgsm))]
    assert detect_warning(frame(rows)) is None   # step 32's widening came before any robustness
    later = rows + [{"step": 192, "epoch": 3, "pgd_acc": 0.25, "fgsm_acc": 0.5}]
    w = detect_warning(frame(later))
    assert (w["rule"], w["step"]) == ("gap_widening", 192) and w["signals"]["fgsm_acc"] == 0.5


def test_the_warning_fires_once_and_not_at_or_after_the_alarm():
    warner = COWarning()
    seq = [(0.9, 0.3, 0.4), (0.7, 0.3, 0.4), (0.6, 0.3, 0.4), (0.5, 0.3, 0.4)]
    hits = [warner.update(i, i, {"grad_align": a, "pgd_acc": p, "fgsm_acc": f}) for i, (a, p, f) in enumerate(seq)]
    assert hits[:2] == [None, None] and hits[2]["rule"] == "align_falling" and hits[3] is None
    warner.reset()
    assert warner.warning is None and warner.update(9, 9, {"grad_align": 0.1}) is None
    # the alarm fires at the event the warning would: no warning
    rows = [{"step": 10 * i, "epoch": i, "pgd_acc": p, "fgsm_acc": f, "grad_align": a}
            for i, (a, p, f) in enumerate([(0.9, 0.4, 0.45), (0.8, 0.4, 0.45), (0.6, 0.05, 0.7)])]
    assert detect_co(frame(rows))["step"] == 20 and detect_warning(frame(rows)) is None


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
    eager = dict(gap_rise=-1.0, min_gap=-1.0, min_peak=-1.0, window=1)
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
    assert mon.co_warning["step"] == 8 and mon.co_warning["rule"] == "gap_widening"
    assert run.events_of("warning")[0]["signals"] == pytest.approx(mon.co_warning["signals"])
    assert [f["step"] for k, f in seen.events if k == "warning"] == [8]
    mon, run = runs["guarded"]
    kinds = [(e["kind"], e["step"]) for e in run.events if e["kind"] in ("warning", "rollback", "collapsed")]
    assert kinds == [("warning", 8), ("rollback", 8), ("warning", 16), ("collapsed", 16)]
    rollback = run.events_of("rollback")[0]
    assert (rollback["trigger"], rollback["restored_step"], rollback["alarm_rule"]) == ("warning", 4, "gap_widening")
    assert mon.collapsed and run.meta["guard"]["status"] == "collapsed"


def test_resume_keeps_the_warning(tmp_path, monkeypatch):
    """A resumed run rebuilds the warning from the recorded events: it stands, and is not raised twice."""
    import torch
    from test_monitor import EPS, tensors, tiny

    from codiag.monitoring import monitor
    from codiag.probes import PROBES
    from codiag.probes.base import Probe
    from codiag.probes.grad_align import GradAlign
    from codiag.probes.robust_acc import RobustAcc
    from codiag.runs import load_run

    values = iter([0.9, 0.7, 0.6, 0.5, 0.4])   # alignment falling while PGD accuracy holds

    class Scripted(Probe):
        name = "scripted"

        def run(self, ctx):
            ctx.log(RobustAcc.pgd_acc, 0.3)
            ctx.log(RobustAcc.fgsm_acc, 0.35)
            ctx.log(GradAlign.mean, next(values))

    monkeypatch.setitem(PROBES, "scripted", Scripted)
    x, y = tensors()
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    kw = dict(eps=EPS, probe_data=(x, y), probes=["scripted"], probe_n=8, every=1)
    with monitor(model, opt, tmp_path / "r", **kw) as mon:
        opt.step()
        assert mon.co_warning is None
        opt.step()
        assert mon.co_warning["step"] == 2 and mon.co_warning["rule"] == "align_falling"
        mon.epoch_end()
    with monitor(model, opt, tmp_path / "r", resume=True, **kw) as mon:
        assert mon.co_warning["step"] == 2 and mon.alarm.warner.peak_align == 0.9
        opt.step()
        opt.step()
        mon.epoch_end()
    assert [e["step"] for e in load_run(tmp_path / "r").events_of("warning")] == [2] and not mon.co_detected
