"""Record two short real runs with every probe (codiag.train on Fashion-MNIST), build the
report, and check that every expected figure exists and is non-empty and that the summary
CSV has one row per run with the right columns."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from codiag import reports
from codiag.reports.build import build
from codiag.reports.summary import COLUMNS

FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed "
                                 "(apt-get install dataset-fashion-mnist)")]

TINY = dict(dataset="fashion_mnist", model="cnn4", eps=0.2, epochs=2, train_limit=256, batch_size=64,
            probes="all", probe_n=16, train_probe_n=20, eval_n=16, eval_steps=2, eval_restarts=1,
            progress=False, device="cpu", checkpoint=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from codiag.trainer import train
    root = tmp_path_factory.mktemp("real")
    runs = [train({**TINY, "out": str(root / "atas"), "method": "atas"}),
            train({**TINY, "out": str(root / "fgsm"), "method": "fgsm", "seed": 1, "probes": "default"})]
    # every per-run figure of the ATAS run (all probes); the FGSM run joins the comparisons
    return runs, build(runs, root / "report", analytic=False, per_run={"atas"})


def test_every_expected_figure_of_real_runs(report):
    runs, rep = report
    assert rep.warnings == []
    assert {f.key for f in rep.figures["atas"]} == set(reports.RUN_BUILDERS), rep.missing["atas"]
    assert {f.key for f in rep.figures["comparison"]} == set(reports.MULTI_BUILDERS)
    for figs in rep.figures.values():
        for fig in figs:
            for path in fig.files.values():
                assert path.stat().st_size > 1000, path
    page = rep.page.read_text()
    assert page.count("<img ") == sum(len(v) for v in rep.figures.values())


def test_summary_csv_of_real_runs(report):
    runs, rep = report
    with open(rep.summary_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == COLUMNS
    assert [r["run"] for r in rows] == ["atas", "fgsm"]
    assert [r["method"] for r in rows] == ["atas", "fgsm"] and [r["seed"] for r in rows] == ["0", "1"]
    for r in rows:
        assert 0.0 <= float(r["clean_acc"]) <= 1.0 and 0.0 <= float(r["pgd_acc"]) <= 1.0
        assert 0.0 <= float(r["fgsm_acc"]) <= 1.0   # the trainer's final evaluation has an FGSM column
        assert r["pgd_attack"] == "PGD-2-1" and r["eval_n"] == "16" and r["eps"] == "0.2"
        assert float(r["train_time_s"]) > 0 and r["status"] == "finished"
        assert r["aa_acc"] == "" or math.isnan(float(r["aa_acc"]))
