"""Report builders on synthetic run directories (every metric key and array the
monitor writes), the summary CSV, the analytic figures, and the CLI's handling of
missing, empty and half-written run directories."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from codiag import reports
from codiag.errors import UsageError
from codiag.reports.base import co_point
from codiag.reports.build import build
from codiag.reports.summary import COLUMNS
from codiag.reports.synthetic import write_synthetic_run
from codiag.runs import load_run

# feature_maps needs the dataset's test images, which synthetic runs do not have.
SYNTHETIC_RUN_FIGURES = set(reports.RUN_BUILDERS) - {"feature_maps"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return [write_synthetic_run(root / "fgsm-s0", method="fgsm", seed=0),
            write_synthetic_run(root / "zerograd", method="zerograd", co_epoch=None, seed=2)]


@pytest.fixture(scope="module")
def report(runs):
    """Every per-run figure of the run with a collapse; the summary of both runs."""
    out = runs[0].parent / "report"
    rep = build(runs, out, analytic=False, figures={*reports.RUN_BUILDERS, "l1_table"},
                runs=[load_run(runs[0]), load_run(runs[1])], per_run={runs[0].name})
    return runs, out, rep


def _nonempty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 500


def test_every_expected_figure_exists_and_is_nonempty(report):
    runs, out, rep = report
    assert rep.warnings == []
    figs = {f.key: f for f in rep.figures[runs[0].name]}
    assert set(figs) == SYNTHETIC_RUN_FIGURES, rep.missing[runs[0].name]
    assert runs[1].name not in rep.figures               # per_run limits the per-run sections
    for fig in [*figs.values(), *rep.figures["comparison"]]:
        _check_files(fig)
    assert {f.key for f in rep.figures["comparison"]} == {"l1_table"}


def _check_files(fig) -> None:
    assert set(fig.files) == {"png", "svg"}
    assert all(_nonempty(p) for p in fig.files.values()), fig.key
    assert fig.files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in fig.files["svg"].read_bytes()[:2000]
    assert fig.redraws.split()[0] in fig.caption       # names the paper figure redrawn


def test_figures_across_runs(runs, tmp_path):
    both = [load_run(r) for r in runs]
    for key in ("overlay_curves", "overlay_diagnostics", "sign_table"):
        fn, min_runs = reports.MULTI_BUILDERS[key]
        assert min_runs == 2
        fig = fn(both, tmp_path)
        _check_files(fig)
    table = reports.MULTI_BUILDERS["sign_table"][0](both, tmp_path).table
    assert list(table["method"]) == ["fgsm", "zerograd"]
    assert table.loc[0, "before CO (%)"].startswith("18.00") and table.loc[0, "after CO (%)"].startswith("48.00")
    assert table.loc[1, "CO epoch"] == "none"


def test_summary_csv_has_one_row_per_run_and_the_columns(report):
    runs, out, rep = report
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == COLUMNS
    assert [r["run"] for r in rows] == [p.name for p in runs]
    by_run = {r["run"]: r for r in rows}
    assert by_run["fgsm-s0"]["co_epoch"] == "6"         # synthetic collapse after epoch 6: an epoch
    assert by_run["zerograd"]["co_epoch"] == ""         # no collapse: left empty
    assert by_run["zerograd"]["method"] == "zerograd" and by_run["zerograd"]["seed"] == "2"
    assert float(by_run["fgsm-s0"]["clean_acc"]) == pytest.approx(0.8)
    assert float(by_run["fgsm-s0"]["train_time_s"]) == pytest.approx(12.5)
    assert by_run["fgsm-s0"]["eps"] == "8/255"


def test_page_links_every_figure_and_labels_paper_numbers(report):
    runs, out, rep = report
    page = rep.page.read_text()
    for figs in rep.figures.values():
        for fig in figs:
            for path in fig.files.values():
                rel = path.relative_to(out).as_posix()
                assert f'"{rel}"' in page
    assert "paper: GradAlign" in page and "paper: ZeroGrad Table 10" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "run configuration" in page


def test_co_point_and_before_after_numbers(report):
    runs, _, rep = report
    assert [k for k, _ in rep.missing[runs[0].name]] == ["feature_maps"]     # no dataset here
    co = co_point(load_run(runs[0]))
    assert co is not None and co.epoch == 6 and co.x == pytest.approx(6.0)
    assert co_point(load_run(runs[1])) is None
    curves = next(f for f in rep.figures[runs[0].name] if f.key == "training_curves")
    row = curves.table.set_index("quantity").loc["PGD acc"]
    assert row["before CO"].startswith("0.300") and row["at CO"].startswith("0.020")


def test_subset_masks_split_by_average_norm():
    from codiag.reports.grad_norm import subset_masks
    norms = np.tile(np.arange(100.0), (3, 1))
    masks = subset_masks(norms)
    assert all(m.sum() == 10 for m in masks.values())
    assert np.flatnonzero(masks[1]).tolist() == list(range(10))
    assert np.flatnonzero(masks[10]).tolist() == list(range(90, 100))


def test_lemma1_bound_holds_and_is_tight_in_high_dimension():
    from codiag.reports.analytic import lemma1_bound, lemma1_monte_carlo
    eps, rng = 8 / 255, np.random.default_rng(0)
    for alpha in (0.0, eps, 1.25 * eps, 2 * eps):
        bound = float(lemma1_bound(np.array(alpha), eps))
        assert lemma1_monte_carlo(alpha, eps, 1, 4000, rng) <= bound + 1e-3
        assert lemma1_monte_carlo(alpha, eps, 3072, 100, rng) == pytest.approx(bound, rel=2e-3)
    assert float(lemma1_bound(np.array(1.25 * eps), eps)) * 255 == pytest.approx(7.11, abs=0.01)


def test_lemma2_quantities_are_ordered_as_the_lemma_says():
    from codiag.reports.analytic import lemma2_quantities
    q = lemma2_quantities(8 / 255, samples=400, rng=np.random.default_rng(0))
    assert q["final"] <= q["first"] + 0.02 and q["first"] <= q["limit"] + 0.02
    assert 0.5 <= q["final"] < 0.8 and q["limit"] > 0.9 and q["cos"][0] > 0.9


def test_analytic_figures(tmp_path):
    rep = build([], tmp_path, figures={"lemma1", "lemma2"})
    assert {f.key for f in rep.figures["analytic"]} == {"lemma1", "lemma2"}
    for f in rep.figures["analytic"]:
        assert f.paper is not None and all(_nonempty(p) for p in f.files.values())
    assert rep.summary_csv is None


def test_build_with_nothing_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError):
        build([], tmp_path, analytic=False)


# -- the command line (in-process: the same code path as the console script) ------------------
def codiag(capsys, *args: str) -> tuple[int, str, str]:
    from codiag.cli import main
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("kind", ["missing", "empty", "not_json", "not_a_dir"])
def test_report_on_a_bad_directory_prints_one_line(tmp_path, capsys, kind):
    target = tmp_path / "run"
    if kind == "empty":
        target.mkdir()
    elif kind == "not_json":
        target.mkdir()
        (target / "run.json").write_text('{"config": ')
    elif kind == "not_a_dir":
        target.write_text("x")
    rc, out, err = codiag(capsys, "report", str(target), "--no-analytic")
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(target) in lines[0]
    assert not (tmp_path / "codiag-report").exists()


def test_report_on_a_half_written_run_is_partial_with_a_warning(tmp_path, capsys):
    run = write_synthetic_run(tmp_path / "killed", epochs=3, co_epoch=None, close=False)
    with open(run / "metrics.csv", "a") as f:
        f.write("40,4,robust_acc,pgd_a")                  # killed in the middle of a line
    with open(run / "events.jsonl", "a") as f:
        f.write('{"kind": "co_al')
    (run / "arrays" / ".filters.weight-STEP0000040.npy.tmp").write_bytes(b"\x93NUMPY")
    for f in (run / "arrays").glob("instance_grad_norm-*.npy"):
        f.unlink()                                        # a probe that never wrote
    rc, out, err = codiag(capsys, "report", str(run), "--no-analytic",
                          "--figures", "training_curves,grad_norm_hist,l1_table")
    assert rc == 0, err
    assert "not finished" in err and "grad_norm_hist" in err
    page = (run / "report" / "index.html").read_text()
    assert "training_curves.png" in page and "l1_table.png" in page
    # says what is missing and which probe to switch on
    assert "no &#x27;instance_grad_norm&#x27; recorded: switch on the probe instance_grad_norm" in page
    rows = list(csv.DictReader(open(run / "report" / "summary.csv")))
    assert len(rows) == 1 and rows[0]["status"] == "running"


def test_report_with_one_bad_and_one_good_run_warns_and_reports_the_good(tmp_path, capsys):
    good = write_synthetic_run(tmp_path / "good", epochs=2, co_epoch=None)
    (tmp_path / "empty").mkdir()
    out = tmp_path / "rep"
    rc, _, err = codiag(capsys, "report", str(good), str(tmp_path / "empty"), "-o", str(out),
                        "--no-analytic", "--figures", "training_curves")
    assert rc == 0, err
    assert "skipped" in err and "no run.json" in err
    assert (out / "index.html").exists() and (out / "figures" / "good" / "training_curves.svg").exists()


def test_report_list_figures_and_bad_figure_name(capsys):
    rc, out, _ = codiag(capsys, "report", "x", "--list-figures")
    assert rc == 0 and "training_curves" in out and "lemma2" in out
    rc, _, err = codiag(capsys, "report", "x", "--figures", "nosuch")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "nosuch" in err


def test_report_expands_a_folder_of_runs(tmp_path, capsys):
    for s in range(2):
        write_synthetic_run(tmp_path / "runs" / f"r{s}", epochs=2, seed=s, co_epoch=None)
    out = tmp_path / "rep"
    rc, _, err = codiag(capsys, "report", str(tmp_path / "runs"), "-o", str(out), "--no-analytic",
                        "--figures", "training_curves")
    assert rc == 0, err
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["run"] for r in rows] == ["r0", "r1"]


def test_report_labels_a_stand_in_probe_perturbation(tmp_path):
    from codiag.methods import METHODS
    stand_in = METHODS["atta"].probe_stand_in
    assert stand_in and not METHODS["fgsm_rs"].probe_stand_in
    runs = [write_synthetic_run(tmp_path / name, method=name, epochs=2, co_epoch=None,
                                monitor={"train_probe_set": {"n": 0, "indices": []},
                                         "probe_stand_in": METHODS[name].probe_stand_in or None})
            for name in ("atta", "fgsm_rs")]
    build(runs, tmp_path / "report", analytic=False, figures={"training_curves"})
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.count("Stand-in perturbation") == 1 and "U[-eps, eps] instead" in page


def test_summary_and_curves_of_a_monitor_run_with_shared_steps_and_confirmations(tmp_path):
    """A monitored loop without train_data: a light event and the epoch's event at one step, then a
    confirming measurement; the summary reads the epoch's event, the curves draw the confirmation apart."""
    from codiag.reports.curves import training_curves
    from codiag.reports.summary import summary_row
    from codiag.runs import RunWriter

    with RunWriter(tmp_path / "r", {"method": "fgsm", "eps": 0.3,
                                    "monitor": {"probe_pgd": {"steps": 10}}}) as w:
        for step, epoch, probe, n, pgd, fgsm in ((0, 0, "robust_acc", 256, 0.0, 0.0),
                                                 (16, 1, "robust_acc", 128, 0.05, 0.30),   # light
                                                 (16, 1, "robust_acc", 256, 0.02, 0.22),   # the epoch's
                                                 (16, 1, "confirm", None, 0.01, 0.28)):
            if n is not None:
                w.log(step, epoch, "event", "probe_n", n)
            for key, v in (("pgd_acc", pgd), ("fgsm_acc", fgsm), ("clean_acc", 0.5)):
                w.log(step, epoch, probe, key, v)
    run = load_run(tmp_path / "r")
    row = summary_row(run)
    assert (row["pgd_acc"], row["fgsm_acc"], row["pgd_attack"]) == (0.02, 0.22, "PGD-10-1")
    fig = training_curves(run, tmp_path / "out")
    assert all(p.stat().st_size > 0 for p in fig.files.values()) and "hollow diamonds" in fig.caption


def test_every_codiag_method_has_its_papers_name_on_the_figures():
    from codiag.methods import METHODS
    from codiag.reports.base import METHOD_TITLES, method_title

    ours = {name for name, cls in METHODS.items() if cls.__module__.startswith("codiag.methods.")}
    assert sorted(ours - set(METHOD_TITLES)) == [] and set(METHOD_TITLES) <= ours
    assert [method_title(n) for n in ("fgsm_fuap", "nuat", "fgsm_mep_cs", "sora")] == [
        "FGSM-FUAP", "NuAT", "FGSM-MEP-CS", "SORA"]
    assert method_title("main.<locals>.<lambda>") == "lambda in main"       # a user's attack: readable


def test_a_run_warned_without_a_collapse_has_the_warning_on_its_curves(tmp_path, monkeypatch):
    """The early warning (and a roll-back) is marked on every curve that marks CO, also in a run with
    no CO point: a dash-dotted line at the warning's epoch, labelled ``warning``."""
    import matplotlib.pyplot as plt

    from codiag.reports.base import MARK_STYLES, event_marks, mark_co

    run = load_run(write_synthetic_run(tmp_path / "warned", method="fgsm", co_epoch=None, seed=3,
                                       events=[("warning", 4)]))
    assert co_point(run) is None and [x for x, _ in event_marks(run)] == [4.0]
    fig, ax = plt.subplots()
    mark_co(ax, None, marks=event_marks(run))
    assert ax.get_legend_handles_labels()[1] == ["warning"]
    plt.close(fig)
    closed, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda f=None: (closed.append(f), close(f)))   # the builders' figures
    color, ls = MARK_STYLES["warning"]
    for key in ("training_curves", "weight_update", "perturbation_delta", "strength_gap", "method_state",
                "grad_norm_hist", "grad_norm_subsets", "filter_norms", "sign_agreement", "local_linearity",
                "abnormal_examples", "pert_align", "grad_concentration"):
        closed.clear()
        reports.RUN_BUILDERS[key](run, tmp_path / "out")
        lines = [line for f in closed for a in f.axes for line in a.get_lines()
                 if line.get_color() == color and line.get_linestyle() == ls]
        assert lines and all(list(line.get_xdata()) == [4.0, 4.0] for line in lines), key
