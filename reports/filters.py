"""First-layer filters of a run before and after catastrophic overfitting.

* ``filter_evolution``: the kernels of a regular filter and of the filter whose norm grows
  most, per input channel, at snapshots across training (GradAlign Fig. 5, 12).
* ``filter_norms``: per-filter weight norms over training with the CO point dashed
  (GradAlign Fig. 6).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from codiag.probes.filters import Filters
from codiag.runs import Run

from . import paper
from .base import (
    Figure,
    MissingData,
    co_point,
    event_marks,
    mark_co,
    method_label,
    need_array,
    needs,
    pick_snapshots,
    save,
    style,
    x_of_step,
)

CHANNELS = {1: ["gray"], 3: ["R", "G", "B"]}


def _weights(run: Run) -> dict[int, np.ndarray]:
    snaps = need_array(run, Filters.weight)
    out = {}
    for s, w in snaps.items():
        w = np.asarray(w, float)
        if w.ndim != 4:
            raise MissingData(f"filters.weight has shape {w.shape}, expected (out, in, kh, kw)")
        out[s] = w
    return out


def pick_filters(weights: dict[int, np.ndarray]) -> tuple[int, int]:
    """(regular, suspicious): the filters whose L2 norm grew least and most from the first
    to the last snapshot (GradAlign's w1 and w4)."""
    steps = sorted(weights)
    first = np.sqrt((weights[steps[0]] ** 2).sum(axis=(1, 2, 3)))
    last = np.sqrt((weights[steps[-1]] ** 2).sum(axis=(1, 2, 3)))
    growth = last / np.maximum(first, 1e-12)
    return int(np.argmin(growth)), int(np.argmax(growth))


@needs(Filters.weight)
def filter_evolution(run: Run, out_dir: Path) -> Figure:
    """GradAlign Fig. 5 and 12: a regular filter and the filter that grows most (w4 in the
    paper), each input channel, at up to six snapshots incl. just before and after CO."""
    weights = _weights(run)
    co = co_point(run)
    steps = pick_snapshots(sorted(weights), co, k=6)
    regular, grown = pick_filters(weights)
    n_in = weights[steps[0]].shape[1]
    chans = CHANNELS.get(n_in, [f"ch{i}" for i in range(n_in)])[:3]
    rows = [(f, c) for f in ([regular, grown] if regular != grown else [grown]) for c in range(len(chans))]
    kh, kw = weights[steps[0]].shape[2:]
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="white")
    centers = [j * (kw + 1) + (kw - 1) / 2 for j in range(len(steps))]
    labels = [f"ep {x_of_step(run, s):g}" + ("" if co is None else (" <CO" if s < co.step else " ≥CO"))
              for s in steps]
    with style():
        fig, axes = plt.subplots(len(rows), 1, figsize=(1.5 * len(steps) + 1.5, 1.45 * len(rows)),
                                 squeeze=False)
        for r, (f, c) in enumerate(rows):
            # one image per row: the snapshots side by side, separated by a blank column
            mosaic = np.full((kh, len(steps) * (kw + 1) - 1), np.nan)
            for j, s in enumerate(steps):
                mosaic[:, j * (kw + 1): j * (kw + 1) + kw] = weights[s][f, c]
            vmax = float(np.nanmax(np.abs(mosaic))) or 1.0
            ax = axes[r, 0]
            im = ax.imshow(mosaic, cmap=cmap, vmin=-vmax, vmax=vmax)
            ax.grid(False)
            ax.set_yticks([])
            ax.set_ylabel(f"w{f + 1} {chans[c]}", fontsize=8)
            ax.set_xticks(centers if r == 0 else [])
            if r == 0:
                ax.set_xticklabels(labels, fontsize=7)
                ax.xaxis.tick_top()
            fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01)
        fig.suptitle(f"{method_label(run)}: first-layer filters w{regular + 1} (least growth) and "
                     f"w{grown + 1} (most growth)", fontsize=9)
        files = save(fig, out_dir, "filter_evolution")
    return Figure(
        key="filter_evolution", title="First-layer filters before and after CO",
        redraws="GradAlign Fig. 5, 12",
        caption=(f"Kernels of the first-layer filter whose norm grew least (w{regular + 1}) and most "
                 f"(w{grown + 1}) between the first and last snapshot, per input channel, at up to "
                 "six snapshots including those just before and at CO (shared colour scale per row). "
                 "Redraws GradAlign Fig. 5 and 12, where w4 becomes a Laplace-like filter."),
        files=files, paper=paper.GRADALIGN_FILTERS, paper_source=paper.GRADALIGN_FILTERS_SOURCE)


@needs((Filters.norms, Filters.weight))
def filter_norms(run: Run, out_dir: Path) -> Figure:
    """GradAlign Fig. 6: per-filter weight norms over training, CO dashed."""
    snaps = run.arrays(Filters.norms.name)
    if not snaps:
        snaps = {s: np.sqrt((w ** 2).sum(axis=(1, 2, 3))) for s, w in _weights(run).items()}
    steps = sorted(snaps)
    mats = [np.asarray(snaps[s], float) for s in steps]
    mat = np.stack([m.reshape(m.shape[0], -1) for m in mats])    # (T, filters, columns)
    x = [x_of_step(run, s) for s in steps]
    co = co_point(run)
    cols = mat.shape[2]
    titles = ["filter weight norm ||wᵢ||₂", "outgoing weight norm ||uᵢ||₂"] + \
        [f"norm column {i}" for i in range(2, cols)]
    with style():
        fig, axes = plt.subplots(1, cols, figsize=(5.2 * cols, 3.4), squeeze=False)
        for c in range(cols):
            ax = axes[0, c]
            for f in range(mat.shape[1]):
                ax.plot(x, mat[:, f, c], marker="o", ms=3, label=f"w{f + 1}")
            mark_co(ax, co, marks=event_marks(run))
            ax.set_xlabel("epoch")
            ax.set_title(titles[c] if cols > 1 else titles[0])
            if mat.shape[1] <= 10:
                ax.legend(fontsize=7)
        fig.suptitle(method_label(run), fontsize=10)
        files = save(fig, out_dir, "filter_norms")
    table = pd.DataFrame({"filter": [f"w{f + 1}" for f in range(mat.shape[1])],
                          "first": mat[0, :, 0].round(4), "last": mat[-1, :, 0].round(4)})
    return Figure(
        key="filter_norms", title="Per-filter weight norms", redraws="GradAlign Fig. 6",
        caption="""L2 norm of each first-layer filter at every snapshot (and of its outgoing weights when recorded);
        dashed: CO. Redraws GradAlign Fig. 6.""",
        files=files, table=table, paper=paper.GRADALIGN_FILTERS, paper_source=paper.GRADALIGN_FILTERS_SOURCE)
