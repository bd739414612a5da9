"""``robust_vs_eps``: clean and robust accuracy against the training eps, one line per method,
mean over seeds with a band of +/- one standard deviation (GradAlign Fig. 1 and 8; the eps sweeps of the N-FGSM,
ELLE, AAER and LAP papers). Robust accuracy is each run's final PGD-k-r evaluation (and
AutoAttack where it ran); a method that collapses drops to ~0 beyond some eps.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from codiag.runs import Run

from .base import Figure, fmt_eps, method_title, save, style
from .paper import gradalign_table4
from .sweep_table import grid_table


def _panels(df: pd.DataFrame) -> list[tuple[str, str]]:
    attack = next((a for a in df["pgd_attack"] if a), "PGD")
    panels = [("pgd_acc", f"robust accuracy ({attack})"), ("clean_acc", "clean accuracy")]
    if pd.to_numeric(df["aa_acc"], errors="coerce").notna().any():
        panels.insert(1, ("aa_acc", "robust accuracy (AutoAttack)"))
    return panels


def stats(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Mean, standard deviation (over seeds, ddof 0), min and max of ``keys`` per (method, eps)."""
    out = df.groupby(["method", "eps"])[list(keys)].agg(["mean", lambda v: v.std(ddof=0), "min", "max"])
    out.columns = [(k, "std" if s == "<lambda_0>" else s) for k, s in out.columns]
    out.columns = [f"{k}_{s}" for k, s in out.columns]
    out["seeds"] = df.groupby(["method", "eps"])["seed"].nunique()
    return out.reset_index()


def robust_vs_eps(runs: Sequence[Run], out_dir: Path) -> Figure:
    """Clean and robust accuracy vs training eps, per method (mean +/- std over seeds)."""
    df = grid_table(runs)
    for k in ("pgd_acc", "clean_acc", "aa_acc"):
        df[k] = pd.to_numeric(df[k], errors="coerce")
    panels = _panels(df)
    st = stats(df, [k for k, _ in panels])
    paper = gradalign_table4(str(df["dataset"].iloc[0]), str(df["model"].iloc[0]))
    methods = list(dict.fromkeys(df["method"]))
    colors = dict(zip(methods, plt.get_cmap("tab10").colors))
    with style():
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), sharex=True)
        for ax, (key, title) in zip(np.atleast_1d(axes), panels):
            for m in methods:
                s = st[st["method"] == m].sort_values("eps")
                n = int(s["seeds"].max()) if len(s) else 0
                ax.plot(s["eps"], s[f"{key}_mean"], marker="o", ms=3, color=colors[m],
                        label=f"{method_title(m)} (n={n})", ls="-" if key != "clean_acc" else "--")
                ax.fill_between(s["eps"], (s[f"{key}_mean"] - s[f"{key}_std"]).clip(0, 1),
                                (s[f"{key}_mean"] + s[f"{key}_std"]).clip(0, 1), color=colors[m], alpha=0.15, lw=0)
            if paper is not None and key in ("pgd_acc", "clean_acc"):
                col = "pgd" if key == "pgd_acc" else "clean"
                for m, grp in paper.groupby("method"):
                    ax.errorbar(grp["eps"], grp[f"{col}_mean"], yerr=grp[f"{col}_std"], fmt="D", ms=4,
                                mfc="none", color=colors.get(m, "k"), capsize=2,
                                label="paper (GradAlign Table 4)" if m == paper["method"].iloc[0] else None)
            ax.set_title(title)
            ax.set_xlabel("training eps")
            ax.set_ylim(0, 1)
            ticks = sorted(df["eps"].unique())
            ax.set_xticks(ticks if len(ticks) <= 8 else ticks[:: max(1, len(ticks) // 8)])
            ax.set_xticklabels([fmt_eps(t) for t in ax.get_xticks()], rotation=45)
        np.atleast_1d(axes)[0].set_ylabel("accuracy (mean, band: +/- std over n seeds)")
        np.atleast_1d(axes)[0].legend(loc="best", fontsize=7)
        files = save(fig, out_dir, "robust_vs_eps")
    table = st.copy()
    table.insert(1, "eps_label", [fmt_eps(e) for e in table["eps"]])
    table = table.drop(columns="eps").round(3)
    notes = [f"{len(df)} runs: {len(methods)} methods x {df['eps'].nunique()} eps x up to "
             f"{int(st['seeds'].max())} seeds; final evaluation {panels[0][1].split('(')[-1].rstrip(')')} on "
             f"{df['eval_n'].iloc[0]} test points"]
    return Figure("robust_vs_eps", "Accuracy vs training eps", "Final clean (dashed) and robust (solid) accuracy "
                  "of each method against the training eps; lines are the mean over seeds, bands +/- one "
                  "standard deviation, n the number of seeds (the table adds min and max)."
                  + (" Diamonds: the paper's mean and standard deviation over 5 seeds "
                                "(GradAlign App. D.3, Table 4)." if paper is not None else ""),
                  "GradAlign Fig. 1, 8", files, table=table,
                  paper=paper.round(2) if paper is not None else None,
                  paper_source="paper: GradAlign App. D.3, Table 4 (PreAct ResNet-18, CIFAR-10, "
                               "PGD-50-10, 5 seeds, no early stopping)" if paper is not None else "",
                  notes=notes)
