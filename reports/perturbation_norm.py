"""Norms of the method's perturbations on the probe set.

* ``perturbation_norm_hist``: histogram of per-instance L2 (and L1) norms (ATAS Fig. 11).
* ``l1_table``: mean |delta| x 255 (the L1 norm divided by the input dimension d) early
  in training and at the end, per run (ZeroGrad Table 4), beside the paper's table.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from codiag.probes.perturbation_norm import PerturbationNorm
from codiag.runs import Run

from . import paper
from .base import (
    Figure,
    MissingData,
    curve,
    fmt_eps,
    input_dim,
    method_label,
    need_array,
    needs,
    save,
    style,
    value_at,
    x_of_step,
)


@needs(PerturbationNorm.l2)
def perturbation_norm_hist(run: Run, out_dir: Path) -> Figure:
    """ATAS Fig. 11: histogram of the L2 norms (and L1 norms per coordinate) of the method's
    perturbations at the last probe event."""
    l2 = need_array(run, PerturbationNorm.l2)
    step = max(l2)
    eps = float(run.config.get("eps", float("nan")))
    d = input_dim(run)
    l1 = run.arrays(PerturbationNorm.l1.name)
    panels = 2 if l1 else 1
    with style():
        fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.3), squeeze=False)
        ax = axes[0, 0]
        v = np.asarray(l2[step], float).ravel()
        ax.hist(v, bins=30, color="tab:blue", alpha=0.85)
        if d and np.isfinite(eps):
            ax.axvline(eps * np.sqrt(d), color="0.3", ls=":", label="ε√d (every pixel at the bound)")
            ax.legend()
        ax.set_xlabel("||δ||₂")
        ax.set_ylabel("instances")
        ax.set_title(f"L2 norms, epoch {x_of_step(run, step):g}")
        if l1:
            s1 = max(l1)
            v1 = np.asarray(l1[s1], float).ravel()
            ax = axes[0, 1]
            ax.hist(v1 / d * 255 if d else v1, bins=30, color="tab:green", alpha=0.85)
            ax.set_xlabel("mean |δ| × 255  (||δ||₁ / d × 255)" if d else "||δ||₁")
            ax.set_title(f"L1 norms, epoch {x_of_step(run, s1):g}")
        fig.suptitle(f"{method_label(run)}, eps {fmt_eps(eps)}", fontsize=10)
        files = save(fig, out_dir, "perturbation_norm_hist")
    linf = curve(run, PerturbationNorm.linf_mean)
    rows = [("mean ||δ||₂ (last event)", f"{v.mean():.4g}"), ("std ||δ||₂", f"{v.std():.4g}")]
    if not linf.empty:
        rows.append(("mean ||δ||∞ × 255 (last event)", f"{linf['value'].iloc[-1] * 255:.3g}"))
    return Figure(
        key="perturbation_norm_hist", title="Perturbation-norm histogram", redraws="ATAS Fig. 11",
        caption="""Per-instance L2 norm of the method's perturbation on the probe set at the last probe event (dotted:
        ε√d, every coordinate at the L∞ bound) and the L1 norm per coordinate. Redraws ATAS Fig. 11.""",
        files=files, table=pd.DataFrame(rows, columns=["quantity", "ours"]),
        paper=paper.ATAS_FIG11, paper_source=paper.ATAS_FIG11_SOURCE)


def l1_rows(runs: Sequence[Run]) -> pd.DataFrame:
    """Per run: mean |delta| x 255 after epoch 2 and at the last event (ZeroGrad Table 4)."""
    rows = []
    for run in runs:
        df = curve(run, PerturbationNorm.l1_mean)
        d = input_dim(run)
        if df.empty or not d:
            continue
        early, last = value_at(df, 2.0), df.iloc[-1]
        rows.append({"run": run.name, "method": method_label(run), "eps": fmt_eps(run.config.get("eps")),
                     "epoch (early)": f"{early['x']:g}", "early": early["value"] / d * 255,
                     "epoch (last)": f"{last['x']:g}", "last": last["value"] / d * 255})
    return pd.DataFrame(rows)


@needs(PerturbationNorm.l1_mean)
def l1_table(runs: Sequence[Run], out_dir: Path) -> Figure:
    """ZeroGrad Table 4: L1 perturbation norms (x255 per coordinate) per method, ours beside
    the paper's."""
    table = l1_rows(runs)
    if table.empty:
        raise MissingData("no perturbation_norm/l1_mean rows (probe perturbation_norm)")
    long = table.melt(id_vars=["run", "method"], value_vars=["early", "last"], var_name="when",
                      value_name="mean |δ| × 255")
    with style():
        fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(table) + 2), 3.4))
        sns.barplot(data=long, x="method", y="mean |δ| × 255", hue="when", ax=ax, errorbar=None)
        ax.tick_params(axis="x", rotation=20)
        ax.set_xlabel("")
        files = save(fig, out_dir, "l1_table")
    shown = table.copy()
    shown["early"] = shown["early"].map("{:.2f}".format)
    shown["last"] = shown["last"].map("{:.2f}".format)
    return Figure(
        key="l1_table", title="L1 perturbation norms", redraws="ZeroGrad Table 4",
        caption="""Mean absolute perturbation per coordinate × 255 (||δ||₁ / d × 255, with ||δ||₁ the per-sample L1 norm
        averaged over the probe set) at the probe event closest to epoch 2 and at the last event. ZeroGrad
        Table 4 measures the same quantity on the whole CIFAR-10 training set at epochs 2 and 52.""",
        files=files, table=shown, paper=paper.ZEROGRAD_TABLE4, paper_source=paper.ZEROGRAD_TABLE4_SOURCE)
