"""The CO detector's rules on hand-made sequences, and the scorecard's label.

The online alarm against the offline replay on real short trainings is in
tests/test_monitor_co.py (test_online_alarm_matches_the_offline_collapse, test_detect_co_on_real_runs).
"""
from __future__ import annotations

import pandas as pd
import pytest

from codiag.detector import CODetector, detect_co


def frame(rows: list[dict]) -> pd.DataFrame:
    """A tidy metrics frame from per-event dicts {step, epoch, pgd_acc, fgsm_acc, grad_align[, probe]}."""
    keys = {"pgd_acc": ("robust_acc", "pgd_acc"), "fgsm_acc": ("robust_acc", "fgsm_acc"),
            "clean_acc": ("robust_acc", "clean_acc"), "grad_align": ("grad_align", "mean")}
    out = []
    for r in rows:   # a row with "probe" writes its accuracies under that probe (a confirming measurement)
        for name, (probe, key) in keys.items():
            if name in r:
                out.append({"step": r["step"], "epoch": r["epoch"], "probe": r.get("probe", probe), "key": key,
                            "value": r[name]})
        if "n" in r:   # the points the event measured, as the monitor writes them
            out.append({"step": r["step"], "epoch": r["epoch"], "probe": r.get("probe", "event"), "key": "probe_n",
                        "value": r["n"]})
        out.append({"step": r["step"], "epoch": r["epoch"], "probe": "train", "key": "loss", "value": 1.0})
    return pd.DataFrame(out)


def seq(pgd, fgsm=None, align=None):
    rows = []
    for i, p in enumerate(pgd):
        r = {"step": 10 * i, "epoch": i, "pgd_acc": p}
        if fgsm is not None:
            r["fgsm_acc"] = fgsm[i]
        if align is not None:
            r["grad_align"] = align[i]
        rows.append(r)
    return rows


def test_pgd_collapse_with_fgsm_jump_is_co():
    rows = seq(pgd=[0.05, 0.30, 0.41, 0.40, 0.12, 0.01, 0.0],
               fgsm=[0.10, 0.35, 0.45, 0.46, 0.70, 0.90, 0.92])
    co = detect_co(frame(rows))
    assert co["epoch"] == 4 and co["step"] == 40 and co["rule"] == "pgd_collapse"
    assert co["values"]["pgd_acc"] == pytest.approx(0.12) and co["peak_pgd_acc"] == pytest.approx(0.41)
    assert "0.410" in co["reason"] and "0.120" in co["reason"]


def test_pgd_collapse_needs_a_gap_of_0_18():
    """A 4-filter CNN's collapse (cnn4 FGSM 0.25, seed 15 of the scorecard corpus, its probe values)."""
    pgd, fgsm = [0.0, 0.102, 0.109, 0.121, 0.059, 0.031], [0.0, 0.164, 0.184, 0.195, 0.238, 0.223]
    co = detect_co(frame(seq(pgd=pgd, fgsm=fgsm)))
    assert co["rule"] == "pgd_collapse" and co["step"] == 50   # gap 0.192; at step 40 it was 0.179
    # with gap 0.2 the looser line, crossed at steps 40 and 50, raises the alarm at the same step
    assert detect_co(frame(seq(pgd=pgd, fgsm=fgsm)), min_gap=0.2)["rule"] == "pgd_drop_persists"
    assert detect_co(frame(seq(pgd=pgd, fgsm=fgsm)), min_gap=0.2, persist_gap=0.2) is None


def test_a_looser_pgd_drop_alarms_when_two_events_in_a_row_show_it():
    """cnn4 FGSM 0.25, seed 4 of the development corpora (its probe values, events at steps 0, 8, 16, 16, 32,
    48, 64): PGD fell to 0.02 from a peak of 0.117 but FGSM was only 0.15-0.16 above it, under pgd_collapse's
    0.18; two events in a row past the looser line (0.6 of the peak, gap 0.12) are the alarm."""
    steps = [0, 8, 16, 16, 32, 48, 64]
    pgd = [0.0, 0.117, 0.094, 0.105, 0.109, 0.020, 0.020]
    fgsm = [0.0, 0.117, 0.133, 0.125, 0.176, 0.172, 0.184]
    rows = [{"step": s, "epoch": -(-s // 16), "pgd_acc": p, "fgsm_acc": f} for s, p, f in zip(steps, pgd, fgsm)]
    co = detect_co(frame(rows))
    assert co["rule"] == "pgd_drop_persists" and co["step"] == 64 and co["epoch"] == 4
    # one event past the line is not enough: the run stopped after step 48
    assert detect_co(frame(rows[:6])) is None
    # nor two events at one step (a light event, then the epoch's): step 48's verdict is counted once
    assert detect_co(frame(rows[:5] + [{**rows[5], "step": 32}, {**rows[5], "step": 32}])) is None
    assert detect_co(frame(rows), persist_ratio=0.15) is None   # 0.020 > 0.15 x 0.117: the line holds


def test_a_confirming_measurement_settles_an_event_near_the_signature():
    """cnn4 FGSM 0.35, seed 25 of the scorecard (its probe values on 256 points, then on 1024): PGD stays at
    zero while FGSM climbs to 0.22 above it, under the signature's 0.25; the events near the line make the
    detector suspect, and the 1024-point measurement that follows at the same step fires."""
    steps, epochs = [0, 8, 16, 16, 32, 48, 64], [0, 1, 1, 1, 2, 3, 4]
    pgd = [0.0, 0.008, 0.0, 0.0, 0.0, 0.0, 0.0]
    fgsm = [0.0, 0.062, 0.078, 0.066, 0.129, 0.188, 0.223]
    confirm = {48: (0.0, 0.230), 64: (0.0, 0.282)}   # (pgd, fgsm) on 1024 points
    det, suspect, rows = CODetector(), [], []
    for s, e, p, f in zip(steps, epochs, pgd, fgsm):
        rows.append({"step": s, "epoch": e, "pgd_acc": p, "fgsm_acc": f})
        assert det.update(s, e, rows[-1]) is None
        suspect.append(det.suspect)
        if det.suspect:
            rows.append({"step": s, "epoch": e, "probe": "confirm", "pgd_acc": confirm[s][0],
                         "fgsm_acc": confirm[s][1]})
    assert suspect == [False] * 5 + [True, True]   # gap >= min_gap 0.18 with PGD <= 0.1
    plain = [r for r in rows if "probe" not in r]
    assert detect_co(frame(plain)) is None           # on 256 points alone: no alarm
    co = detect_co(frame(rows))
    assert (co["rule"], co["step"], co["epoch"]) == ("signature", 64, 4)
    assert co["values"]["fgsm_acc"] == pytest.approx(0.282)
    # the online detector reads the confirming measurement as one more event at the same step
    det = CODetector()
    alarms = [det.update(r["step"], r["epoch"], r) for r in rows]
    assert alarms[-1] is not None and alarms[-1]["rule"] == "signature" and not det.suspect
    assert all(a is None for a in alarms[:-1])


def test_a_light_event_does_not_set_the_pgd_peak():
    """MNIST, cnn4 FGSM 0.15, seed 30 of the scorecard (its probe values): the light event at step 8 read
    PGD 0.359 on 128 points, the epoch's event 0.281 on 256 (held out: 0.317 after epoch 1, then 0.19
    and back to 0.29: no collapse). 0.156 at step 32 is under half the light value, not of the peak of
    the events measured on the probe set's 256 points (or more: a confirmation's 1024)."""
    steps, epochs, n = [0, 8, 16, 32, 48, 64], [0, 1, 1, 2, 3, 4], [256, 128, 256, 256, 256, 256]
    pgd, fgsm = [0.0, 0.359, 0.281, 0.156, 0.223, 0.348], [0.0, 0.406, 0.477, 0.539, 0.590, 0.594]
    rows = [{"step": s, "epoch": e, "pgd_acc": p, "fgsm_acc": f, "n": k}
            for s, e, p, f, k in zip(steps, epochs, pgd, fgsm, n)]
    assert detect_co(frame(rows)) is None
    det = CODetector()   # online: step 32 only comes near the looser line, so a confirmation is due there
    assert [det.update(r["step"], r["epoch"], r) or det.suspect for r in rows] == [False] * 3 + [True, False, False]
    assert det.peak_pgd == pytest.approx(0.348)
    # a run recorded without the points per event: every event sets the peak, and 0.156 fires
    old = detect_co(frame([{k: v for k, v in r.items() if k != "n"} for r in rows]))
    assert (old["rule"], old["step"], old["peak_pgd_acc"]) == ("pgd_collapse", 32, pytest.approx(0.359))
    # a confirmation measures more points than the probe set: its value does set the peak
    confirmed = rows[:3] + [{"step": 16, "epoch": 1, "probe": "confirm", "pgd_acc": 0.33, "fgsm_acc": 0.5,
                             "n": 1024}] + rows[3:4]
    co = detect_co(frame(confirmed))
    assert (co["rule"], co["step"], co["peak_pgd_acc"]) == ("pgd_collapse", 32, pytest.approx(0.33))


def test_divergence_without_fgsm_gap_and_noise_are_not_co():
    # both accuracies fall together: the run diverged, it did not overfit to FGSM
    assert detect_co(frame(seq(pgd=[0.3, 0.4, 0.1, 0.0], fgsm=[0.35, 0.45, 0.12, 0.02]))) is None
    # a noisy but robust run (drops of < 50 %)
    assert detect_co(frame(seq(pgd=[0.3, 0.42, 0.30, 0.40, 0.25, 0.41],
                               fgsm=[0.4, 0.5, 0.45, 0.5, 0.5, 0.5]))) is None
    # at initialisation PGD and FGSM accuracy are both low: no gap, no alarm
    assert detect_co(frame(seq(pgd=[0.0, 0.02, 0.05], fgsm=[0.1, 0.15, 0.2]))) is None


def test_the_signature_fires_without_a_pgd_peak_whatever_the_alignment():
    # a collapse inside the first epoch: PGD accuracy never above 0.1, FGSM accuracy rising far above it
    pgd, fgsm = [0.0, 0.08, 0.05, 0.03, 0.01], [0.13, 0.2, 0.27, 0.45, 0.6]
    co = detect_co(frame(seq(pgd=pgd, fgsm=fgsm, align=[0.3, 0.6, 0.5, 0.25, 0.15])))
    assert co["rule"] == "signature" and co["step"] == 30 and "0.450" in co["reason"]
    # a narrow model whose alignment never rose above 0.45 and hardly fell: the accuracies decide
    co = detect_co(frame(seq(pgd=pgd, fgsm=fgsm, align=[0.2, 0.44, 0.43, 0.4, 0.38])))
    assert co["rule"] == "signature" and co["step"] == 30
    # FGSM accuracy only 0.2 above PGD accuracy: a hard run (PGD-10 training at a large eps looks so)
    assert detect_co(frame(seq(pgd=[0.0, 0.08, 0.05, 0.04, 0.02], fgsm=[0.0, 0.1, 0.15, 0.2, 0.22],
                               align=[0.9, 0.6, 0.4, 0.3, 0.2]))) is None
    # FGSM accuracy not risen from its own lowest value: no alarm
    assert detect_co(frame(seq(pgd=[0.05] * 4, fgsm=[0.5, 0.45, 0.5, 0.5], align=[0.6, 0.5, 0.2, 0.1]))) is None


def test_detectors_are_pluggable_by_name():
    from codiag.detector import DETECTORS, Detector, make_detector
    from codiag.errors import UsageError

    class Always(Detector):
        name = "always_test"
        signals = {("robust_acc", "pgd_acc"): "pgd_acc"}

        def update(self, step, epoch, values):
            if self.alarm is None:
                self.alarm = {"step": step, "epoch": epoch, "rule": "always", "reason": "test", "values": values}
                return self.alarm
            return None

        def reset(self):
            self.alarm = None

    DETECTORS["always_test"] = Always
    try:
        rows = frame(seq(pgd=[0.4, 0.41, 0.40], fgsm=[0.5, 0.5, 0.5]))
        assert detect_co(rows) is None and detect_co(rows, detector="always_test")["step"] == 0
        assert isinstance(make_detector("always_test"), Always) and make_detector(False) is None
        with pytest.raises(UsageError, match="unknown detector"):
            make_detector("nope")
    finally:
        DETECTORS.pop("always_test")


def test_grad_align_collapse_needs_the_pgd_accuracy_to_fall_too():
    align = [0.9, 0.8, 0.7, 0.2, 0.1]
    rows = seq(pgd=[0.3, 0.4, 0.4, 0.28, 0.26], fgsm=[0.4, 0.5, 0.5, 0.45, 0.44], align=align)
    # the fall (a quarter of the peak) is confirmed by the next event
    co = detect_co(frame(rows))
    assert co["rule"] == "grad_align_collapse" and co["epoch"] == 4 and "next event" in co["reason"]
    # ... or at once by the confirming measurement at the same step (the detector asked for one)
    det = CODetector()
    for r in rows[:3]:
        assert det.update(r["step"], r["epoch"], r) is None
    assert det.update(30, 3, rows[3]) is None and det.suspect
    co = det.update(30, 3, {"pgd_acc": 0.27, "fgsm_acc": 0.46, "n": 1024})
    assert co["rule"] == "grad_align_collapse" and "confirming measurement" in co["reason"]
    # a confirmation that reads the PGD accuracy above the line dismisses the event
    det = CODetector()
    for r in rows[:3]:
        det.update(r["step"], r["epoch"], r)
    det.update(30, 3, rows[3])
    assert det.update(30, 3, {"pgd_acc": 0.33, "fgsm_acc": 0.46, "n": 1024}) is None and not det.suspect
    assert detect_co(frame(seq(pgd=[0.3, 0.4, 0.4, 0.39, 0.40], fgsm=[0.4, 0.5, 0.5, 0.5, 0.5],
                               align=align))) is None
    # alignment declining without a collapse (small_cnn, SGD one-cycle, label smoothing 0.4, FGSM at eps 0.2,
    # Fashion-MNIST seed 1): one event 0.70 of the PGD peak on 256 points, then back
    pgd = [0.0, 0.29, 0.23, 0.34, 0.26, 0.30, 0.24, 0.30, 0.30, 0.29]
    fgsm = [0.12, 0.44, 0.41, 0.61, 0.62, 0.66, 0.64, 0.70, 0.71, 0.70]
    al = [0.25, 0.51, 0.41, 0.32, 0.26, 0.22, 0.18, 0.19, 0.18, 0.17]
    assert detect_co(frame(seq(pgd=pgd, fgsm=fgsm, align=al))) is None
    # without robust_acc rows, alignment alone decides
    rows = [{"step": r["step"], "epoch": r["epoch"], "grad_align": r["grad_align"]}
            for r in seq(pgd=[0] * 5, align=align)]
    assert detect_co(frame(rows))["epoch"] == 3


def test_replay_keeps_two_events_at_one_step_apart():
    # a light event and then the epoch's event at the same step (the monitor did not know the
    # epoch's length): the online alarm fired at the light one; the replay must see it alone
    rows = seq(pgd=[0.0, 0.05], fgsm=[0.05, 0.1], align=[0.4, 0.5])
    rows += [{"step": 20, "epoch": 2, "pgd_acc": 0.02, "fgsm_acc": 0.45, "grad_align": 0.3},   # light
             {"step": 20, "epoch": 2, "pgd_acc": 0.12, "fgsm_acc": 0.3, "grad_align": 0.35}]   # epoch's
    det = CODetector()
    online = [det.update(r["step"], r["epoch"], r) for r in rows]
    assert online[2] is not None and online[2]["rule"] == "signature"
    co = detect_co(frame(rows))
    assert (co["step"], co["rule"], co["values"]["fgsm_acc"]) == (20, "signature", 0.45)


def test_online_detector_fires_once_and_rearms_after_reset():
    det = CODetector()
    vals = [(0.4, 0.45), (0.1, 0.8), (0.0, 0.9)]
    alarms = [det.update(i, i, {"pgd_acc": p, "fgsm_acc": f}) for i, (p, f) in enumerate(vals)]
    assert alarms[0] is None and alarms[1]["step"] == 1 and alarms[2] is None and det.fired
    det.reset()
    assert not det.fired and det.update(5, 5, {"pgd_acc": 0.0, "fgsm_acc": 0.9}) is None
    # NaN values disable the rule instead of firing it
    det = CODetector()
    det.update(0, 0, {"pgd_acc": 0.4, "fgsm_acc": 0.5})
    assert det.update(1, 1, {"pgd_acc": float("nan"), "fgsm_acc": 0.9}) is None


def test_detect_co_accepts_a_run_and_empty_metrics(tmp_path):
    from codiag.runs import RunWriter, load_run

    with RunWriter(tmp_path / "r", {}) as w:
        for r in seq(pgd=[0.4, 0.41, 0.05], fgsm=[0.5, 0.5, 0.9]):
            w.log(r["step"], r["epoch"], "robust_acc", "pgd_acc", r["pgd_acc"])
            w.log(r["step"], r["epoch"], "robust_acc", "fgsm_acc", r["fgsm_acc"])
    assert detect_co(load_run(tmp_path / "r"))["epoch"] == 2
    assert detect_co(pd.DataFrame(columns=["step", "epoch", "probe", "key", "value"])) is None


def test_the_scorecard_label_leaves_runs_between_its_lines_unscored():
    """benchmarks/detector_eval.py's label: held-out PGD-50 and FGSM accuracy per epoch (index 0 = init)."""
    from example_modules import load_example

    label = load_example("detector_eval", "benchmarks").label_collapse
    # (b): PGD near zero from epoch 1 on while FGSM accuracy climbs far above it
    assert label([0.0, 0.02, 0.01, 0.0], [0.0, 0.40, 0.50, 0.55]) == (1, False)
    # (a): robustness won, then more than half of it lost while the model still beats FGSM
    assert label([0.0, 0.30, 0.35, 0.10], [0.0, 0.32, 0.40, 0.50]) == (3, False)
    # PGD ends at 0.07 beside FGSM 0.58 (small_cnn, seeds 6-8): above the strict 0.05, under the loose 0.10
    assert label([0.0, 0.06, 0.01, 0.03, 0.07], [0.03, 0.33, 0.50, 0.56, 0.58]) == (None, True)
    # PGD-10 training of cnn4 at eps 0.3: PGD near zero, FGSM 0.24-0.27 above it, between the lines
    assert label([0.0, 0.01, 0.04, 0.05, 0.06], [0.0, 0.20, 0.31, 0.30, 0.30]) == (None, True)
    # PGD at 0.48 of its peak (cnn4 FGSM 0.25, seed 14): inside the band around half, between the lines
    assert label([0.0, 0.14, 0.198, 0.223, 0.107], [0.0, 0.21, 0.33, 0.35, 0.33]) == (None, True)
    # collapse accuracies for three epochs, then PGD recovers (small_cnn ATAS 0.3, seed 13): between the lines
    assert label([0.0, 0.043, 0.05, 0.075, 0.138], [0.004, 0.325, 0.314, 0.332, 0.386]) == (None, True)
    # a healthy run and one that never learned robustness (both accuracies low)
    assert label([0.0, 0.30, 0.35, 0.38], [0.0, 0.33, 0.40, 0.45]) == (None, False)
    assert label([0.0, 0.09, 0.10, 0.10], [0.0, 0.09, 0.10, 0.12]) == (None, False)


def test_the_scorecard_reads_the_probe_set_at_each_epochs_last_event(tmp_path):
    """The reference rows read the epoch-end event, not the light event logged earlier at the same step."""
    from example_modules import load_example

    from codiag.runs import RunWriter, load_run

    bench = load_example("detector_eval", "benchmarks")
    with RunWriter(tmp_path / "r", {}) as w:
        # step 0; a light event at step 8 and at step 16; the epoch-end event at step 16; epoch 2's at 32
        for step, epoch, pgd, fgsm in ((0, 0, 0.0, 0.0), (8, 1, 0.9, 0.9), (16, 1, 0.8, 0.8),
                                       (16, 1, 0.30, 0.32), (32, 2, 0.05, 0.45)):
            w.log(step, epoch, "robust_acc", "pgd_acc", pgd)
            w.log(step, epoch, "robust_acc", "fgsm_acc", fgsm)
    pgd, fgsm = bench.probe_epoch_values(load_run(tmp_path / "r").metrics)
    assert (pgd, fgsm) == ([0.0, 0.30, 0.05], [0.0, 0.32, 0.45])
    assert bench.collapse_epoch(pgd, fgsm, **bench.STRICT) == 2
    assert bench.probe_epoch_values(load_run(tmp_path / "r").metrics.iloc[0:0]) == ([], [])
