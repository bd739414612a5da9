"""``accuracy_vs_cost``: final robust accuracy against what training cost, one point per method
and eps (mean +/- standard deviation over seeds): (a) gradient evaluations per training step,
counted by the trainer on the model (machine-independent: FGSM 2, PGD-10 11), (b) training
time relative to FGSM at the same eps (wall clock, so it depends on the machine and on what
else ran there). GradAlign Sec. 5 compares methods by robustness and by cost; ZeroGrad Table 2
by time.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd

from codiag.runs import Run

from .base import Figure, MissingData, fmt_eps, method_title, save, style
from .sweep_table import grid_table

#: (column of the per-(method, eps) table, axis label, tick format), one panel each
_PANELS = (("grad_evals", "gradient evaluations per training step (counted)", "%g"),
           ("cost", "training time / FGSM's at the same eps (wall clock)", "%gx"))


def _per_cell(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of PGD accuracy and both costs, per (method, eps), with the seeds."""
    g = df.groupby(["method", "eps"])
    return pd.DataFrame({
        "seeds": g["seed"].nunique(), "pgd": g["pgd_acc"].mean(), "pgd_std": g["pgd_acc"].std(ddof=0),
        "grad_evals": g["grad_evals_per_step"].mean(), "cost": g["cost_vs_fgsm"].mean(),
        "clean": g["clean_acc"].mean()}).reset_index()


def accuracy_vs_cost(runs: Sequence[Run], out_dir: Path) -> Figure:
    """Robust accuracy vs gradient evaluations per step and vs training time / FGSM's, per method and eps."""
    df = grid_table(runs)
    for k in ("pgd_acc", "clean_acc", "grad_evals_per_step", "cost_vs_fgsm"):
        df[k] = pd.to_numeric(df[k], errors="coerce")
    agg = _per_cell(df)
    panels = [p for p in _PANELS if agg[p[0]].notna().any()]
    if not panels:
        raise MissingData("needs runs that counted their gradient evaluations (codiag train) or FGSM runs at "
                          "the same eps as the others (the time reference)")
    methods = list(dict.fromkeys(df["method"]))
    colors = dict(zip(methods, plt.get_cmap("tab10").colors))
    seeds = df.groupby("method")["seed"].nunique()
    eps_values = sorted(agg["eps"].unique())
    sizes = dict(zip(eps_values, np.linspace(15, 90, len(eps_values))))
    with style():
        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), sharey=True, squeeze=False)
        for i, (ax, (key, xlabel, fmt)) in enumerate(zip(axes[0], panels)):
            for m in methods:
                s = agg[(agg["method"] == m) & agg[key].notna()]
                ax.errorbar(s[key], s["pgd"], yerr=s["pgd_std"], fmt="none", ecolor=colors[m], alpha=0.6,
                            capsize=2, lw=1)
                ax.scatter(s[key], s["pgd"], s=[sizes[e] for e in s["eps"]], color=colors[m], alpha=0.8,
                           label=f"{method_title(m)} (n={seeds[m]})")
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(mticker.FormatStrFormatter(fmt))
            ax.xaxis.set_minor_formatter(mticker.FormatStrFormatter(fmt))
            ax.set_xlabel(xlabel)
            ax.set_ylim(0, 1)
            ax.set_title(f"({'ab'[i]}) robustness vs {'gradient evaluations' if key == 'grad_evals' else 'time'}")
        axes[0, 0].set_ylabel("final robust accuracy (mean +/- std over seeds)")
        axes[0, 0].legend(fontsize=7, loc="best", title=f"marker size: eps {fmt_eps(eps_values[0])} .. "
                          f"{fmt_eps(eps_values[-1])}", title_fontsize=7)
        files = save(fig, out_dir, "accuracy_vs_cost")
    table = agg.groupby("method").agg(seeds=("seeds", "max"), grad_evals_per_step=("grad_evals", "mean"),
                                      cost_vs_fgsm=("cost", "mean"), mean_pgd_acc=("pgd", "mean"),
                                      min_pgd_acc=("pgd", "min")).reset_index().round(3)
    return Figure("accuracy_vs_cost", "Robust accuracy vs training cost", "Each point is one method at one "
                  "eps: mean final robust accuracy over seeds (bars: +/- one standard deviation; n = seeds "
                  "per method) against (a) the gradient evaluations per training step that the trainer "
                  "counted on the model (a gradient reaching the model's output; FGSM 2, PGD-10 11; the same "
                  "on any machine) and (b) the mean training time relative to the FGSM runs of the same eps "
                  "(wall clock from run.json, so runs that shared a machine with other work look costlier).",
                  "GradAlign Sec. 5 (cost of the methods)", files, table=table)
