"""Per-instance input-gradient norms on the fixed training probe subset.

* ``grad_norm_hist``: histogram and long-tail ratio mean(G^2) / mean(G)^2 (ATAS Fig. 6).
* ``grad_norm_subsets``: gradient norm and step size of the subsets D1, D5, D10 (the
  10% of instances with the smallest, middle and largest average gradient norm)
  over training (ATAS Fig. 10).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from codiag.probes.instance_grad_norm import InstanceGradNorm
from codiag.probes.method_state import MethodState
from codiag.runs import Run

from . import paper
from .base import (
    Figure,
    MissingData,
    co_point,
    curve,
    event_marks,
    mark_co,
    method_label,
    need_array,
    needs,
    save,
    style,
    x_of_step,
)

SUBSETS = (1, 5, 10)


def _ratio(g: np.ndarray) -> float:
    g = g[np.isfinite(g)]
    return float(np.mean(g ** 2) / np.mean(g) ** 2) if g.size and np.mean(g) > 0 else float("nan")


@needs(InstanceGradNorm.norms)
def grad_norm_hist(run: Run, out_dir: Path) -> Figure:
    """ATAS Fig. 6: histogram of per-instance ||grad_x L||_2 and the long-tail ratio."""
    snaps = need_array(run, InstanceGradNorm.norms)
    steps = sorted(snaps)
    first, last = np.asarray(snaps[steps[0]], float).ravel(), np.asarray(snaps[steps[-1]], float).ravel()
    ratio = curve(run, InstanceGradNorm.long_tail_ratio)
    if ratio.empty:
        ratio = pd.DataFrame({"x": [x_of_step(run, s) for s in steps],
                              "value": [_ratio(np.asarray(snaps[s], float).ravel()) for s in steps]})
    co = co_point(run)
    with style():
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
        ax = axes[0]
        bins = np.linspace(0, np.nanmax(np.concatenate([first, last])) or 1.0, 40)
        ax.hist(last, bins=bins, alpha=0.8, label=f"epoch {x_of_step(run, steps[-1]):g} (last)")
        if len(steps) > 1:
            ax.hist(first, bins=bins, alpha=0.45, label=f"epoch {x_of_step(run, steps[0]):g}")
        ax.set_xlabel("per-instance ||∇ₓ L||₂ (sum-reduced loss)")
        ax.set_ylabel("instances")
        ax.set_title("(a) gradient-norm histogram")
        ax.legend()
        ax = axes[1]
        ax.plot(ratio["x"], ratio["value"], marker="o", ms=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean(G²) / mean(G)²")
        ax.set_title("(b) long-tail ratio")
        mark_co(ax, co, marks=event_marks(run))
        files = save(fig, out_dir, "grad_norm_hist")
    table = pd.DataFrame([("long-tail ratio, first event", f"{_ratio(first):.3f}"),
                          ("long-tail ratio, last event", f"{_ratio(last):.3f}"),
                          ("instances", str(last.size))], columns=["quantity", "ours"])
    return Figure(
        key="grad_norm_hist", title="Per-instance gradient norms", redraws="ATAS Fig. 6",
        caption="""Histogram of the per-instance input-gradient L2 norm G at the method's starting point on the fixed
        training probe subset (first and last probe event), and the long-tail ratio mean(G²)/mean(G)² over
        training. Redraws ATAS Fig. 6.""",
        files=files, table=table, paper=paper.ATAS_FIG6, paper_source=paper.ATAS_FIG6_SOURCE)


def subset_masks(norms: np.ndarray, parts: int = 10) -> dict[int, np.ndarray]:
    """ATAS's D_i: instances ranked by average gradient norm, cut into ``parts`` equal
    groups; returns {i: boolean mask} for i = 1..parts."""
    gn = np.nanmean(norms, axis=0)
    rank = np.argsort(np.argsort(gn, kind="stable"), kind="stable") / max(len(gn), 1)
    return {i: (rank >= (i - 1) / parts) & (rank < i / parts) for i in range(1, parts + 1)}


def _train_indices(run: Run) -> np.ndarray | None:
    """Dataset indices of the training probe subset, as the monitor records them in the config."""
    mon = run.config.get("monitor") or {}
    tps = mon.get("train_probe_set") if isinstance(mon, dict) else None
    if isinstance(tps, dict) and isinstance(tps.get("indices"), list):
        return np.asarray(tps["indices"], dtype=int)
    return None


def _step_sizes(run: Run, n: int, steps: list[int]) -> tuple[str, np.ndarray] | None:
    """(name, (T, n) matrix) of per-instance step sizes from method_state arrays, if any."""
    names = [a for a in run.array_names() if MethodState.array.parse(a) is not None
             and any(t in a for t in ("step", "alpha"))]
    idx = _train_indices(run)
    for name in names:
        snaps = run.arrays(name)
        rows = []
        for s in steps:
            a = snaps.get(s)
            if a is None:
                rows.append(np.full(n, np.nan))
                continue
            a = np.asarray(a, float).ravel()
            if a.size == n:
                rows.append(a)
            elif idx is not None and idx.size == n and idx.max() < a.size:
                rows.append(a[idx])
            else:
                break
        else:
            return MethodState.array.parse(name)["state"], np.stack(rows)
    return None


def _row_means(mat: np.ndarray) -> np.ndarray:
    """Mean of each row over its finite entries; NaN for a row with none (an event without a snapshot)."""
    return np.ma.masked_invalid(mat).mean(axis=1).filled(np.nan)


@needs(InstanceGradNorm.norms)
def grad_norm_subsets(run: Run, out_dir: Path) -> Figure:
    """ATAS Fig. 10: gradient norm (and per-instance step size, when the method keeps one)
    of D1, D5 and D10 over training."""
    snaps = need_array(run, InstanceGradNorm.norms)
    steps = sorted(snaps)
    sizes = {np.asarray(a).size for a in snaps.values()}
    if len(sizes) != 1:
        raise MissingData("instance_grad_norm arrays differ in length between events")
    norms = np.stack([np.asarray(snaps[s], float).ravel() for s in steps])   # (T, n)
    if norms.shape[1] < 10:
        raise MissingData(f"only {norms.shape[1]} training probe instances; need at least 10")
    masks = subset_masks(norms)
    x = np.array([x_of_step(run, s) for s in steps])
    step_sizes = _step_sizes(run, norms.shape[1], steps)
    co = co_point(run)
    panels = 2 if step_sizes else 1
    rows = []
    with style():
        fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.4), squeeze=False)
        for i in SUBSETS:
            axes[0, 0].plot(x, _row_means(norms[:, masks[i]]), marker="o", ms=3, label=f"D{i}")
            rows.append((f"D{i}", f"{np.nanmean(norms[:, masks[i]]):.4g}"))
        axes[0, 0].set_title("(a) input-gradient norm")
        axes[0, 0].set_ylabel("mean ||∇ₓ L||₂ of subset")
        if step_sizes:
            name, mat = step_sizes
            for i in SUBSETS:
                axes[0, 1].plot(x, _row_means(mat[:, masks[i]]), marker="o", ms=3, label=f"D{i}")
            axes[0, 1].set_title(f"(b) step size ({name})")
            axes[0, 1].set_ylabel("mean step size of subset")
        for ax in axes[0]:
            ax.set_xlabel("epoch")
            mark_co(ax, co, label=False, marks=event_marks(run))
            ax.legend()
        fig.suptitle(method_label(run), fontsize=10)
        files = save(fig, out_dir, "grad_norm_subsets")
    # a method without per-instance state (FGSM, FGSM-RS, ...) has no step sizes to miss: no note then
    kept = any(MethodState.array.parse(a) is not None for a in run.array_names())
    notes = [] if step_sizes or not kept else ["the method's per-instance state (method_state arrays) holds "
                                               "no step size; only gradient norms are drawn"]
    return Figure(
        key="grad_norm_subsets", title="Gradient norm and step size of subsets D1, D5, D10",
        redraws="ATAS Fig. 10",
        caption="""The training probe subset is ranked by each instance's gradient norm averaged over all probe events
        and cut into ten equal parts D1 (smallest) .. D10 (largest); curves show the mean gradient norm and,
        for methods with per-instance step sizes (ATAS), the mean step size of D1, D5 and D10. Redraws ATAS
        Fig. 10.""",
        files=files, table=pd.DataFrame(rows, columns=["subset", "mean grad norm (all events)"]),
        paper=paper.ATAS_FIG10, paper_source=paper.ATAS_FIG10_SOURCE, notes=notes)
