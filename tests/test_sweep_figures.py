"""The sweep figures (robust_vs_eps, accuracy_vs_cost, co_rate) drawn from run directories
written with the run writer: mean +/- std over seeds, the number of seeds, the paper's method
names in the legends, and gradient evaluations per step beside wall time."""
from __future__ import annotations

from pathlib import Path

import pytest

from codiag.reports.accuracy_vs_cost import accuracy_vs_cost
from codiag.reports.co_rate import co_rate
from codiag.reports.robust_vs_eps import robust_vs_eps
from codiag.runs import RunWriter, load_run

#: final PGD accuracy of (method, eps, seed); grad evaluations per step of each method
PGD = {("fgsm", 0.1, 0): 0.30, ("fgsm", 0.1, 1): 0.50, ("fgsm", 0.2, 0): 0.0, ("fgsm", 0.2, 1): 0.02,
       ("n_fgsm", 0.1, 0): 0.40, ("n_fgsm", 0.1, 1): 0.44, ("n_fgsm", 0.2, 0): 0.25, ("n_fgsm", 0.2, 1): 0.35}
GRAD_EVALS = {"fgsm": 2.0, "n_fgsm": 2.0}


def _sweep(root: Path) -> list:
    runs = []
    for (method, eps, seed), pgd in PGD.items():
        path = root / f"{method}-eps{eps}-seed{seed}"
        with RunWriter(path, {"method": method, "eps": eps, "seed": seed, "dataset": "fashion_mnist",
                              "model": "cnn4", "eval_steps": 10, "eval_restarts": 1}) as w:
            w.log_many(10, 1, "robust_acc", {"clean_acc": 0.7, "fgsm_acc": 0.5, "pgd_acc": 0.4})
            w.log_many(20, 1, "eval", {"clean_acc": 0.8, "fgsm_acc": 0.9 if pgd < 0.05 else pgd + 0.1,
                                       "pgd_acc": pgd, "n": 100})
            w.update(train_time_s=10.0 + seed, cost={"grad_evals_per_step": GRAD_EVALS[method]})
        runs.append(load_run(path))
    return runs


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    runs = _sweep(root)
    out = root / "figures"
    return {f.__name__: f(runs, out) for f in (robust_vs_eps, accuracy_vs_cost, co_rate)}


@pytest.mark.parametrize("name", ["robust_vs_eps", "accuracy_vs_cost", "co_rate"])
def test_legends_name_the_papers_methods_with_the_number_of_seeds(figures, name):
    svg = figures[name].files["svg"].read_text()
    assert "FGSM (n=2)" in svg and "N-FGSM (n=2)" in svg
    assert "n_fgsm" not in svg


def test_robust_vs_eps_shows_mean_and_std_over_seeds(figures):
    fig = figures["robust_vs_eps"]
    row = fig.table[(fig.table["method"] == "fgsm") & (fig.table["eps_label"] == fmt(0.1))].iloc[0]
    assert row["pgd_acc_mean"] == pytest.approx(0.4) and row["pgd_acc_std"] == pytest.approx(0.1)
    assert row["seeds"] == 2
    assert "+/- one standard deviation" in fig.caption and "number of seeds" in fig.caption


def test_accuracy_vs_cost_has_counted_gradient_evaluations_beside_time(figures):
    fig = figures["accuracy_vs_cost"]
    svg = fig.files["svg"].read_text()
    assert "gradient evaluations per training step (counted)" in svg and "wall clock" in svg
    table = fig.table.set_index("method")
    assert table.loc["n_fgsm", "grad_evals_per_step"] == 2.0 and table.loc["fgsm", "seeds"] == 2
    assert "+/- one standard deviation" in fig.caption


def test_co_rate_counts_the_collapsed_seeds(figures):
    table = figures["co_rate"].table.set_index(["method", "eps_label"])
    assert table.loc[("fgsm", fmt(0.2)), "collapsed"] == 1.0 and table.loc[("fgsm", fmt(0.1)), "collapsed"] == 0.0
    assert table.loc[("n_fgsm", fmt(0.2)), "seeds"] == 2
    svg = figures["co_rate"].files["svg"].read_text()
    assert "(a) online CO alarm" in svg and "(b) final PGD collapse label" in svg


def fmt(eps: float) -> str:
    from codiag.reports.base import fmt_eps
    return fmt_eps(eps)
