"""Training curves: clean/FGSM/PGD accuracy and loss, gradient alignment and
cos(delta_FGSM, delta_PGD) on the fixed probe set.

Redraws GradAlign Fig. 4 (PreAct ResNet-18) and Fig. 11 (4-filter CNN, App. C.2);
for several runs, the same curves overlaid by method.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from codiag.detector import CONFIRM
from codiag.probes.fgsm_pgd_cos import FgsmPgdCos
from codiag.probes.grad_align import GradAlign
from codiag.probes.instance_grad_norm import InstanceGradNorm
from codiag.probes.outputs import Key
from codiag.probes.perturbation_delta import PerturbationDelta
from codiag.probes.perturbation_norm import PerturbationNorm
from codiag.probes.robust_acc import RobustAcc
from codiag.probes.sign_agreement import SignAgreement
from codiag.probes.strength_gap import StrengthGap
from codiag.probes.weight_update import WeightUpdate
from codiag.runs import Run

from . import paper
from .base import (
    COPoint,
    Figure,
    before_after,
    co_point,
    curve,
    event_marks,
    fmt_eps,
    mark_co,
    method_label,
    needs,
    progress,
    save,
    style,
)

ACC = [(RobustAcc.clean_acc, "clean"), (RobustAcc.fgsm_acc, "FGSM"), (RobustAcc.pgd_acc, "PGD")]
LOSS = [(RobustAcc.clean_loss, "clean"), (RobustAcc.fgsm_loss, "FGSM"), (RobustAcc.pgd_loss, "PGD")]
ALIGN = [(GradAlign.mean, "grad_align"), (FgsmPgdCos.mean, "cos(δ_FGSM, δ_PGD)")]


def _panel(ax: plt.Axes, run: Run, series: list[tuple[Key, str]], co: COPoint | None,
           ylabel: str, log: bool = False) -> int:
    drawn = 0
    for key, label in series:
        df = curve(run, key)
        if df.empty:
            continue
        line, = ax.plot(df["x"], df["value"], marker="o", ms=3, label=label)
        drawn += 1
        confirm = run.scalar(CONFIRM, key.pair[1]) if key.probe == RobustAcc.name else pd.DataFrame()
        if len(confirm):   # the same accuracy measured again on more points where an event came near a line
            ax.scatter(progress(run, confirm), confirm["value"], s=30, marker="D", facecolors="none",
                       edgecolors=line.get_color(), label=f"{label}, confirming")
    if log and drawn:
        ax.set_yscale("log")
    mark_co(ax, co, marks=event_marks(run))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    if drawn:
        ax.legend()
    return drawn


@needs(RobustAcc.pgd_acc)
def training_curves(run: Run, out_dir: Path) -> Figure:
    """GradAlign Fig. 4 / 11: accuracy, loss and local linearity over training for one run."""
    co = co_point(run)
    with style():
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        _panel(axes[0], run, ACC, co, "accuracy (probe set)")
        _panel(axes[1], run, LOSS, co, "loss", log=True)
        n = _panel(axes[2], run, ALIGN, co, "cosine")
        if not n:
            axes[2].text(0.5, 0.5, "grad_align / fgsm_pgd_cos\nnot recorded", ha="center",
                         va="center", transform=axes[2].transAxes)
        axes[0].set_title("accuracy")
        axes[1].set_title("loss")
        axes[2].set_title("gradient alignment and FGSM-PGD cosine")
        fig.suptitle(f"{run.name}: {method_label(run)}", fontsize=10)
        files = save(fig, out_dir, "training_curves")
    cnn4 = run.config.get("model") == "cnn4"
    return Figure(
        key="training_curves", title="Training curves", redraws="GradAlign Fig. 4, 11",
        caption="""Clean, FGSM and PGD accuracy and loss on the fixed probe set, gradient alignment (mean cos of input
        gradients at x and x+eta, eta ~ U[-eps, eps]) and the cosine between FGSM and PGD perturbations, at
        every probe event (hollow diamonds: the same accuracy measured again on more points where an event
        came near a line of the alarm); the dashed line marks catastrophic overfitting. Redraws GradAlign Fig. 4
        (ResNet-18) and Fig. 11 (4-filter CNN).""",
        files=files, table=co_table(run, co),
        paper=paper.GRADALIGN_C2 if cnn4 else paper.GRADALIGN_FIG4,
        paper_source=paper.GRADALIGN_C2_SOURCE if cnn4 else paper.GRADALIGN_FIG4_SOURCE)


def co_table(run: Run, co: COPoint | None) -> pd.DataFrame:
    """Ours: CO epoch and the values at initialisation, just before / at CO, and at the end."""
    rows = [("CO epoch", "", "", "none detected" if co is None else f"{co.epoch} (step {co.step}, {co.source})",
             "")]
    for key, label in [(RobustAcc.pgd_acc, "PGD acc"), (RobustAcc.fgsm_acc, "FGSM acc"),
                       (RobustAcc.clean_acc, "clean acc"), (GradAlign.mean, "grad_align"),
                       (FgsmPgdCos.mean, "fgsm_pgd_cos")]:
        df = curve(run, key)
        if df.empty:
            continue
        b, a = before_after(df, co)
        rows.append((label, f"{df['value'].iloc[0]:.3f}", _fmt(b), _fmt(a), f"{df['value'].iloc[-1]:.3f}"))
    return pd.DataFrame(rows, columns=["quantity", "initial", "before CO", "at CO", "final"])


def _fmt(row: pd.Series | None) -> str:
    return "" if row is None else f"{row['value']:.3f} (epoch {row['x']:g})"


# ---------------------------------------------------------------------------------------------
# Several runs
# ---------------------------------------------------------------------------------------------
OVERLAY = [(RobustAcc.pgd_acc, "PGD accuracy"), (RobustAcc.fgsm_acc, "FGSM accuracy"),
           (RobustAcc.clean_acc, "clean accuracy"), (RobustAcc.pgd_loss, "PGD loss"),
           (GradAlign.mean, "gradient alignment"), (FgsmPgdCos.mean, "cos(δ_FGSM, δ_PGD)")]

DIAGNOSTICS = [(WeightUpdate.mse_all, "weight-update MSE"),
               (PerturbationDelta.mse, "perturbation MSE between events"),
               (StrengthGap.gap, "strength gap L(δ) − L(δ_PGD)"),
               (SignAgreement.disagree, "sign disagreement with PGD-10"),
               (PerturbationNorm.l2_mean, "mean ||δ||₂"),
               (InstanceGradNorm.long_tail_ratio, "grad-norm long-tail ratio")]


def tidy(runs: Sequence[Run], series: list[tuple[Key, str]]) -> pd.DataFrame:
    """Long frame: run, method, quantity, x, value for the given series of all runs."""
    frames = []
    labels = _hue_labels(runs)
    for run, hue in zip(runs, labels):
        for key, name in series:
            df = curve(run, key)
            if df.empty:
                continue
            frames.append(pd.DataFrame({"run": run.name, "method": hue, "quantity": name,
                                        "x": df["x"], "value": df["value"]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _hue_labels(runs: Sequence[Run]) -> list[str]:
    """Method label per run, plus eps when runs differ in eps."""
    eps = {r.config.get("eps") for r in runs}
    return [method_label(r) + (f", eps {fmt_eps(r.config.get('eps'))}" if len(eps) > 1 else "")
            for r in runs]


def _overlay(df: pd.DataFrame, names: list[str], out_dir: Path, stem: str, title: str,
             log: set[str] = frozenset()) -> dict[str, Path]:
    names = [n for n in names if n in set(df["quantity"])]
    cols = min(3, len(names))
    rows = int(np.ceil(len(names) / cols))
    with style():
        fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.2 * rows), squeeze=False)
        for ax, name in zip(axes.flat, names):
            sub = df[df["quantity"] == name]
            sns.lineplot(data=sub, x="x", y="value", hue="method", errorbar="sd", marker="o",
                         markersize=3, ax=ax)
            ax.set_title(name)
            ax.set_xlabel("epoch")
            ax.set_ylabel("")
            if name in log:
                ax.set_yscale("log")
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        fig.suptitle(title, fontsize=10)
        return save(fig, out_dir, stem)


@needs(tuple(key for key, _ in OVERLAY))
def overlay_curves(runs: Sequence[Run], out_dir: Path) -> Figure:
    """GradAlign Fig. 4: the training curves of several runs overlaid by method
    (mean and standard deviation over seeds)."""
    df = tidy(runs, OVERLAY)
    files = _overlay(df, [n for _, n in OVERLAY], out_dir, "overlay_curves",
                     "training curves by method", log={"PGD loss"})
    return Figure(
        key="overlay_curves", title="Training curves by method", redraws="GradAlign Fig. 4",
        caption="""PGD, FGSM and clean accuracy, PGD loss, gradient alignment and FGSM-PGD cosine on the probe set for
        every run, one colour per method (band: standard deviation over seeds). Redraws the method comparison
        of GradAlign Fig. 4.""",
        files=files)


@needs(tuple(key for key, _ in DIAGNOSTICS))
def overlay_diagnostics(runs: Sequence[Run], out_dir: Path) -> Figure:
    """The other recorded diagnostics (ZeroGrad Fig. 1, 2; APART Fig. 2; ZeroGrad Table 10;
    ATAS Fig. 6b) overlaid by method."""
    df = tidy(runs, DIAGNOSTICS)
    files = _overlay(df, [n for _, n in DIAGNOSTICS], out_dir, "overlay_diagnostics",
                     "CO diagnostics by method", log={"weight-update MSE",
                                                      "perturbation MSE between events"})
    return Figure(
        key="overlay_diagnostics", title="Diagnostics by method",
        redraws="ZeroGrad Fig. 1, 2, Table 10; APART Fig. 2; ATAS Fig. 6b",
        caption="""Weight-update MSE (ZeroGrad Fig. 1), perturbation MSE between consecutive events (ZeroGrad Fig. 2),
        strength gap to PGD (APART Fig. 2b), sign disagreement with PGD-10 (ZeroGrad Table 10), mean
        perturbation L2 norm and the gradient-norm long-tail ratio (ATAS Fig. 6b), one colour per method.""",
        files=files)
