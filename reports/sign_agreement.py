"""Share of coordinates where sign(delta_method) differs from sign(delta_PGD-10),
before and after catastrophic overfitting. Redraws ZeroGrad Table 10."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from codiag.probes.sign_agreement import SignAgreement
from codiag.runs import Run

from . import paper
from .base import (
    Figure,
    before_after,
    co_point,
    curve,
    event_marks,
    mark_co,
    method_label,
    needs,
    recorded,
    save,
    style,
)
from .curves import tidy


def _before_after_row(run: Run) -> dict[str, str]:
    df = curve(run, SignAgreement.disagree)
    co = co_point(run)
    b, a = before_after(df, co)
    fmt = lambda r: "" if r is None else f"{100 * r['value']:.2f} (epoch {r['x']:g})"  # noqa: E731
    return {"run": run.name, "method": method_label(run),
            "CO epoch": "none" if co is None else co.epoch,
            "before CO (%)": fmt(b), "after CO (%)": fmt(a),
            "last event (%)": f"{100 * df['value'].iloc[-1]:.2f}" if len(df) else ""}


@needs(SignAgreement.disagree)
def sign_agreement(run: Run, out_dir: Path) -> Figure:
    """ZeroGrad Table 10 for one run: sign disagreement with PGD-10 over training and its
    values at the events just before and at CO."""
    df = curve(run, SignAgreement.disagree)
    co = co_point(run)
    with style():
        fig, ax = plt.subplots(figsize=(6, 3.3))
        ax.plot(df["x"], 100 * df["value"], marker="o", ms=3, label=method_label(run))
        ax.set_xlabel("epoch")
        ax.set_ylabel("% coordinates with sign ≠ PGD-10")
        mark_co(ax, co, marks=event_marks(run))
        ax.legend()
        files = save(fig, out_dir, "sign_agreement")
    row = _before_after_row(run)
    table = pd.DataFrame([(k, v) for k, v in row.items() if k not in ("run", "method")],
                         columns=["quantity", "ours"])
    return Figure(
        key="sign_agreement", title="Sign disagreement with PGD-10", redraws="ZeroGrad Table 10",
        caption="""Percentage of input coordinates where the sign of the method's perturbation differs from that of
        PGD-10 on the probe set, at every probe event; the table gives the events just before and at CO.
        Redraws ZeroGrad Table 10.""",
        files=files, table=table, paper=paper.ZEROGRAD_TABLE10, paper_source=paper.ZEROGRAD_TABLE10_SOURCE)


@needs(SignAgreement.disagree)
def sign_table(runs: Sequence[Run], out_dir: Path) -> Figure:
    """ZeroGrad Table 10 across runs: one row per run, ours beside the paper's."""
    runs = [r for r in runs if recorded(r, SignAgreement.disagree)]
    table = pd.DataFrame([_before_after_row(r) for r in runs])
    df = tidy(runs, [(SignAgreement.disagree, "disagree")])
    df["value"] *= 100
    with style():
        fig, ax = plt.subplots(figsize=(6.5, 3.4))
        sns.lineplot(data=df, x="x", y="value", hue="method", errorbar="sd", marker="o", markersize=3, ax=ax)
        ax.set_xlabel("epoch")
        ax.set_ylabel("% coordinates with sign ≠ PGD-10")
        files = save(fig, out_dir, "sign_table")
    return Figure(
        key="sign_table", title="Sign disagreement with PGD-10 by method", redraws="ZeroGrad Table 10",
        caption="""Percentage of coordinates whose perturbation sign differs from PGD-10's, per run, at the probe events
        just before and at CO, and over training by method. Redraws ZeroGrad Table 10.""",
        files=files, table=table, paper=paper.ZEROGRAD_TABLE10, paper_source=paper.ZEROGRAD_TABLE10_SOURCE)
