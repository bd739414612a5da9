"""The sweep table's collapse label (the base of ``co_rate`` and the detector scorecard) on run
directories written with the run writer: what the label calls a collapse, and the epoch it names."""
from __future__ import annotations

from pathlib import Path

from codiag.reports.sweep_table import sweep_row
from codiag.runs import RunWriter, load_run


def _run(path: Path, events: list[tuple[int, float, float, float]], final: tuple[float, float, float]) -> Path:
    """A finished run: probe events (epoch, clean, FGSM, PGD accuracy) at the end of each epoch
    (epoch 0: at initialisation) and the final evaluation (clean, FGSM, PGD)."""
    with RunWriter(path, {"method": "fgsm", "eps": 0.3, "seed": 0, "dataset": "fashion_mnist",
                          "model": "cnn4", "eval_steps": 10, "eval_restarts": 1}) as w:
        for epoch, clean, fgsm, pgd in events:
            w.log_many(epoch * 10, epoch, "robust_acc", {"clean_acc": clean, "fgsm_acc": fgsm, "pgd_acc": pgd})
        clean, fgsm, pgd = final
        w.log_many(len(events) * 10, len(events) - 1, "eval", {"clean_acc": clean, "fgsm_acc": fgsm, "pgd_acc": pgd})
    return path


def test_a_run_that_never_became_robust_is_not_a_collapse(tmp_path):
    """Clean accuracy learned, FGSM accuracy as low as PGD's at every event and at the end: the
    model never had robustness to lose (a large eps), which is no catastrophic overfitting."""
    run = load_run(_run(tmp_path / "r", [(0, 0.1, 0.02, 0.02), (1, 0.7, 0.03, 0.01), (2, 0.8, 0.03, 0.01)],
                        final=(0.8, 0.03, 0.01)))
    row = sweep_row(run)
    assert row["collapsed"] is False and row["collapse_epoch"] is None and row["outcome"] == "quiet"


def test_a_collapse_in_the_first_epoch_gets_that_epoch(tmp_path):
    """PGD accuracy never above the bound (it collapsed inside epoch 1, before any peak), FGSM
    accuracy far above it from epoch 1: collapsed at epoch 1, not at the measurement at
    initialisation (epoch 0)."""
    run = load_run(_run(tmp_path / "r", [(0, 0.1, 0.04, 0.03), (1, 0.7, 0.6, 0.01), (2, 0.8, 0.7, 0.0)],
                        final=(0.8, 0.7, 0.01)))
    row = sweep_row(run)
    assert row["collapsed"] is True and row["collapse_epoch"] == 1 and row["outcome"] == "miss"


def test_a_collapse_after_a_peak_keeps_its_epoch(tmp_path):
    run = load_run(_run(tmp_path / "r", [(0, 0.1, 0.05, 0.04), (1, 0.7, 0.4, 0.3), (2, 0.7, 0.5, 0.35),
                                         (3, 0.8, 0.8, 0.02), (4, 0.8, 0.85, 0.01)], final=(0.8, 0.85, 0.01)))
    row = sweep_row(run)
    assert row["collapsed"] is True and row["collapse_epoch"] == 3 and row["peak_probe_pgd"] == 0.35


def _monitored_loop_run(path: Path) -> Path:
    """What ``codiag.monitor`` writes for a loop of the user's whose attack is a lambda: probe
    events every 5 steps (10 steps per epoch, so some events fall mid-epoch), a collapse at step
    25 (inside epoch 3), the strength gap without a reference model, the probe sets' indices."""
    config = {"method": "main.<locals>.<lambda>", "eps": 0.3, "model": "Net", "dataset": "tensors",
              "train_size": 100, "batch_size": 10,
              "monitor": {"attack": "main.<locals>.<lambda>", "probe_set": {"source": "test", "n": 256,
                                                                          "indices": list(range(1000, 1256))}}}
    with RunWriter(path, config) as w:
        for step in range(0, 45, 5):
            epoch = 0 if step == 0 else step // 10 + 1
            pgd, fgsm = (0.02, 0.8) if step >= 25 else (0.2 + step / 100, 0.3 + step / 100)
            w.log_many(step, epoch, "robust_acc", {"clean_acc": 0.8, "fgsm_acc": fgsm, "pgd_acc": pgd})
            w.log(step, epoch, "strength_gap", "gap", -0.5 if step < 25 else -3.0)
    return path


def test_the_page_of_a_monitored_loop_reads_well(tmp_path):
    """A lambda attack gets a readable name, the CO epoch is an epoch (3, not 2.5 epochs of
    progress), the probe indices stay in run.json, and a lone panel is (a)."""
    import csv
    import html
    import re

    from codiag.reports.build import build

    run_dir = _monitored_loop_run(tmp_path / "loop")
    build([run_dir], tmp_path / "rep", figures={"training_curves", "strength_gap"}, analytic=False, echo=False)
    page = html.unescape((tmp_path / "rep" / "index.html").read_text())
    assert "lambda in main" in page and "<lambda>" not in page
    assert "1000, 1001" not in page and "256 indices, 1000..1255" in page
    row = next(csv.DictReader((tmp_path / "rep" / "summary.csv").open()))
    assert row["method"] == "lambda in main" and row["co_epoch"] == "3"
    co_cell = re.search(r"CO epoch</td>\s*<td></td>\s*<td></td>\s*<td>([^<]*)</td>", page)
    assert co_cell and co_cell.group(1).startswith("3 (step 25"), co_cell
    svg = next((tmp_path / "rep").rglob("strength_gap.svg")).read_text()
    assert "(a) strength gap" in svg and "(b) strength gap" not in svg


def test_no_note_for_a_figure_that_cannot_exist(tmp_path):
    """FGSM keeps no internal state: its page does not ask to switch on method_state (nothing would
    be recorded); a run of a method with state that did not record it still gets the hint."""
    import html

    from codiag.reports.build import build

    events, final = [(0, 0.1, 0.05, 0.04), (1, 0.7, 0.4, 0.3)], (0.7, 0.4, 0.3)
    fgsm = _run(tmp_path / "fgsm", events, final)
    build([fgsm], tmp_path / "rep", figures={"method_state"}, analytic=False, echo=False)
    assert "method_state" not in html.unescape((tmp_path / "rep" / "index.html").read_text())
    apart = _run(tmp_path / "apart", events, final)
    run_json = apart / "run.json"
    run_json.write_text(run_json.read_text().replace('"method": "fgsm"', '"method": "apart"'))
    build([apart], tmp_path / "rep2", figures={"method_state"}, analytic=False, echo=False)
    assert "switch on the probe method_state" in html.unescape((tmp_path / "rep2" / "index.html").read_text())
