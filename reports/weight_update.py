"""Weight-update MSE of three convolution kernels between consecutive probe events,
with the test adversarial accuracy. Redraws ZeroGrad Fig. 1."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from codiag.probes.weight_update import WeightUpdate
from codiag.runs import Run

from . import paper
from .base import (
    BLUE,
    Figure,
    co_point,
    curve,
    event_marks,
    mark_co,
    needs,
    rows_of,
    save,
    steps_per_epoch,
    style,
    twin_adv_acc,
    x_of_step,
)


def _kernel_series(run: Run) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Three (label, x, mse) series: the kernel with the largest peak update in the first,
    middle and last recorded conv module (more kernels per module when there are fewer)."""
    modules = [f["module"] for f in map(WeightUpdate.kernel_mse.parse, run.array_names()) if f is not None]
    per_module = []
    for mod in modules:
        snaps = run.arrays(WeightUpdate.kernel_mse.format(module=mod))
        steps = sorted(snaps)
        mat = np.stack([np.asarray(snaps[s], dtype=float).reshape(-1) for s in steps])  # (T, K)
        x = np.array([x_of_step(run, s) for s in steps])
        order = np.argsort(-np.nanmax(mat, axis=0))
        per_module.append((mod, x, mat, list(order)))
    if not per_module:
        return []
    picks: list[tuple[str, np.ndarray, np.ndarray]] = []
    mods = [per_module[0], per_module[len(per_module) // 2], per_module[-1]]
    seen: set[tuple[str, int]] = set()
    while len(picks) < 3:
        added = False
        for mod, x, mat, order in mods:
            while order and (mod, order[0]) in seen:
                order.pop(0)
            if order and len(picks) < 3:
                k = order.pop(0)
                seen.add((mod, k))
                picks.append((f"{mod} kernel {k}", x, mat[:, k]))
                added = True
        if not added:
            break
    return picks


def _param_series(run: Run) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Fallback: per-parameter-tensor MSE scalars (``mse/<param>``) of conv weights."""
    params = sorted({WeightUpdate.mse.parse(k)["param"] for k in rows_of(run, WeightUpdate.mse)["key"]})
    params = [p for p in params if p.endswith("weight")] or params
    out = []
    for param in params[:3]:
        df = curve(run, WeightUpdate.mse, param=param)
        out.append((param, df["x"].to_numpy(), df["value"].to_numpy()))
    return out


@needs((WeightUpdate.kernel_mse, WeightUpdate.mse))
def weight_update(run: Run, out_dir: Path) -> Figure:
    """ZeroGrad Fig. 1: MSE of weight updates of three conv kernels (blue) against test
    adversarial accuracy (red), between consecutive probe events."""
    series = _kernel_series(run) or _param_series(run)
    co = co_point(run)
    per = "epoch" if steps_per_epoch(run) is None or run.config.get("every", "epoch") == "epoch" \
        else f"{run.config.get('every')} steps"
    with style():
        fig, axes = plt.subplots(1, len(series), figsize=(4.3 * len(series), 3.3), squeeze=False)
        for ax, (label, x, y) in zip(axes[0], series):
            ax.plot(x, y, color=BLUE, marker="o", ms=3)
            ax.set_yscale("log")
            ax.set_title(label)
            ax.set_xlabel("epoch")
            ax.set_ylabel(f"weight-update MSE per {per}", color=BLUE)
            mark_co(ax, co, label=False, marks=event_marks(run))
            twin_adv_acc(ax, run)
        files = save(fig, out_dir, "weight_update")
    return Figure(
        key="weight_update", title="Weight-update MSE of three kernels", redraws="ZeroGrad Fig. 1",
        caption="""Mean squared difference of a convolution kernel's weights between consecutive probe events (blue, log
        scale) for three kernels (largest peak update in the first, middle and last conv layer), with the test
        PGD accuracy (red); dashed: CO. Redraws ZeroGrad Fig. 1.""",
        files=files, paper=paper.ZEROGRAD_FIG1, paper_source=paper.ZEROGRAD_FIG1_SOURCE)
