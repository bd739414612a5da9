"""``co_rate``: for each method and training eps, the share of seeds that collapsed, once by
the online detector (a ``co_alarm`` event in the run) and once by the final PGD accuracy
(the collapse label of ``sweep_table``). The eps where a method starts to collapse is the
number the CO papers compare (GradAlign Fig. 1: FGSM from 6/255, FGSM-RS from 9/255).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from codiag.runs import Run

from .base import Figure, fmt_eps, method_title, save, style
from .sweep_table import grid_table


def co_rate_table(df: pd.DataFrame) -> pd.DataFrame:
    """method x eps rows: seeds, collapsed by the detector and by the final PGD accuracy."""
    g = df.groupby(["method", "eps"])
    out = pd.DataFrame({"seeds": g["seed"].nunique(), "alarm": g["alarm"].mean(),
                        "collapsed": g["collapsed"].apply(lambda s: s.dropna().astype(float).mean())})
    if "saved" in df and df["saved"].any():   # runs the guard rolled back that did not collapse
        out["saved"] = g["saved"].mean()
    return out.reset_index()


def co_rate(runs: Sequence[Run], out_dir: Path) -> Figure:
    """Share of seeds that collapsed, per method and eps: by the detector and by final PGD."""
    df = grid_table(runs)
    rates = co_rate_table(df)
    methods = list(dict.fromkeys(df["method"]))
    seeds = df.groupby("method")["seed"].nunique()
    with style():
        panels = [("alarm", "online CO alarm"), ("collapsed", "final PGD collapse label")]
        if "saved" in rates:
            panels.append(("saved", "saved by the guard"))
        fig, axes = plt.subplots(1, len(panels), figsize=(2.2 + 0.55 * df["eps"].nunique() * len(panels),
                                                          0.9 + 0.4 * len(methods)), sharey=True)
        for letter, ax, (key, title) in zip("abc", axes, panels):
            grid = rates.pivot(index="method", columns="eps", values=key).reindex(methods)
            grid.columns = [fmt_eps(e) for e in grid.columns]
            grid.index = [f"{method_title(m)} (n={seeds[m]})" for m in grid.index]
            sns.heatmap(grid, ax=ax, vmin=0, vmax=1, cmap="Reds", annot=True, fmt=".2f", cbar=False,
                        linewidths=0.5, annot_kws={"fontsize": 7})
            ax.set_title(f"({letter}) {title}: share of seeds", fontsize=9)
            ax.set_xlabel("training eps")
            ax.set_ylabel("")
            ax.tick_params(axis="y", labelrotation=0)
        files = save(fig, out_dir, "co_rate")
    table = rates.copy()
    table.insert(1, "eps_label", [fmt_eps(e) for e in table["eps"]])
    table = table.drop(columns="eps").round(2)
    caption = ("Share of seeds whose run collapsed (n: seeds per method), (a) by the online alarm, (b) by "
               "the final PGD accuracy (below max(0.05, 0.3 x the run's peak probe PGD accuracy, with clean and "
               "FGSM accuracy at least 0.2 above it; a run that never became robust is no collapse; sweep_table). "
               "Where they differ the detector missed a collapse or raised a false alarm (the scorecard counts "
               "them). With guarded runs (METHOD+guard), (c): the share saved by the guard (rolled back, and "
               "not collapsed by the final PGD accuracy).")
    return Figure("co_rate", "CO rate per method and eps", caption,
                  "GradAlign Fig. 1 (where each method collapses)", files, table=table)
