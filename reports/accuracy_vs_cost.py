"""``accuracy_vs_cost``: final robust accuracy against training time relative to FGSM at the
same eps (mean over seeds), one point per method and eps: what each method's robustness costs
(GradAlign Sec. 5 compares methods by robustness and by cost; ZeroGrad Table 2 by time).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd

from codiag.runs import Run

from .base import Figure, MissingData, fmt_eps, save, style
from .sweep_table import grid_table


def accuracy_vs_cost(runs: Sequence[Run], out_dir: Path) -> Figure:
    """Robust accuracy vs training time / FGSM's at the same eps, per method and eps."""
    df = grid_table(runs)
    if df["cost_vs_fgsm"].isna().all():
        raise MissingData("needs FGSM runs at the same eps as the others (the cost reference)")
    df["pgd_acc"] = pd.to_numeric(df["pgd_acc"], errors="coerce")
    agg = df.groupby(["method", "eps"]).agg(cost=("cost_vs_fgsm", "mean"), pgd=("pgd_acc", "mean"),
                                           clean=("clean_acc", "mean")).reset_index().dropna(subset=["cost"])
    methods = list(dict.fromkeys(df["method"]))
    colors = dict(zip(methods, plt.get_cmap("tab10").colors))
    eps_values = sorted(agg["eps"].unique())
    sizes = dict(zip(eps_values, np.linspace(15, 90, len(eps_values))))
    with style():
        fig, ax = plt.subplots(figsize=(5.6, 3.8))
        for m in methods:
            s = agg[agg["method"] == m]
            ax.scatter(s["cost"], s["pgd"], s=[sizes[e] for e in s["eps"]], color=colors[m], label=m, alpha=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(mticker.FormatStrFormatter("%gx"))
        ax.xaxis.set_minor_formatter(mticker.FormatStrFormatter("%gx"))
        ax.set_xlabel("training time / FGSM's at the same eps")
        ax.set_ylabel("final robust accuracy (mean over seeds)")
        ax.set_ylim(0, 1)
        ax.set_title(f"robustness vs cost (marker size: eps {fmt_eps(eps_values[0])} .. {fmt_eps(eps_values[-1])})")
        ax.legend(fontsize=7, loc="best")
        files = save(fig, out_dir, "accuracy_vs_cost")
    table = agg.groupby("method").agg(cost_vs_fgsm=("cost", "mean"), mean_pgd_acc=("pgd", "mean"),
                                      min_pgd_acc=("pgd", "min")).reset_index().round(3)
    return Figure("accuracy_vs_cost", "Robust accuracy vs training cost", "Each point is one method at one "
                  "eps: mean final robust accuracy against mean training time relative to the FGSM runs "
                  "of the same eps (same machine, same protocol). Times are wall-clock training times "
                  "recorded in run.json, so runs that shared a machine with other work look costlier.",
                  "GradAlign Sec. 5 (cost of the methods)", files, table=table)
