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
