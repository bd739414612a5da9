"""Loss surfaces along the adversarial direction v1 and a random direction v2 for
the lowest- and highest-gradient-norm subsets, at a few points in training.
Redraws ATAS Fig. 2."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from codiag.probes.loss_surface import LossSurface
from codiag.runs import Run

from . import paper
from .base import Figure, MissingData, co_point, method_label, needs, pick_snapshots, recorded, save, style, x_of_step

SUBSETS = {LossSurface.low: "low: D1, the 10% smallest gradient norms",
           LossSurface.high: "high: D10, the 10% largest gradient norms"}


def _axes_for(run: Run, step: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    snaps = run.arrays(LossSurface.axes.name)
    a = snaps.get(step) if snaps else None
    if a is None and snaps:
        a = next(iter(snaps.values()))
    if a is not None:
        a = np.asarray(a, float)
        if a.ndim == 1 and a.size == shape[0] == shape[1]:
            return a, a
        if a.ndim == 2 and a.shape[0] == 2 and a.shape[1] == shape[0] == shape[1]:
            return a[0], a[1]
    return np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1])


@needs((LossSurface.low, LossSurface.high))
def loss_surface(run: Run, out_dir: Path) -> Figure:
    """ATAS Fig. 2: mean loss of each gradient-norm subset on a grid along (v1, v2), columns
    at increasing training step (including just before and at CO)."""
    subsets = [a for a in SUBSETS if recorded(run, a)]
    snaps = {s: run.arrays(s.name) for s in subsets}
    steps = sorted(set.intersection(*(set(v) for v in snaps.values())))
    if not steps:
        raise MissingData("loss_surface subsets were recorded at different steps")
    co = co_point(run)
    cols = pick_snapshots(steps, co, k=4)
    with style():
        fig = plt.figure(figsize=(3.3 * len(cols), 3.0 * len(subsets)))
        for r, sub in enumerate(subsets):
            for c, step in enumerate(cols):
                z = np.asarray(snaps[sub][step], float)
                if z.ndim != 2:
                    raise MissingData(f"{sub} is not a 2-D grid")
                a1, a2 = _axes_for(run, step, z.shape)
                X, Y = np.meshgrid(a1, a2, indexing="ij")
                ax = fig.add_subplot(len(subsets), len(cols), r * len(cols) + c + 1, projection="3d")
                ax.plot_surface(X, Y, z, cmap="viridis", linewidth=0, antialiased=True)
                ax.set_xlabel("v₁ (adv.)", fontsize=7)
                ax.set_ylabel("v₂ (random)", fontsize=7)
                ax.tick_params(labelsize=6)
                tag = ""
                if co is not None:
                    tag = ", before CO" if step < co.step else ", after CO"
                label = SUBSETS[sub] if c == 0 else sub.name.rsplit(".", 1)[-1]
                ax.set_title(f"{label}: epoch {x_of_step(run, step):g}{tag}", fontsize=8)
        fig.suptitle(f"{method_label(run)}: loss surfaces", fontsize=10)
        files = save(fig, out_dir, "loss_surface")
    return Figure(
        key="loss_surface", title="Loss surfaces of low- and high-gradient-norm subsets",
        redraws="ATAS Fig. 2",
        caption="""Mean loss of the subset with the smallest gradient norms (top) and the largest (bottom) on a grid x +
        a·v₁ + b·v₂, v₁ the adversarial direction and v₂ a random direction, at up to four probe events.
        Redraws ATAS Fig. 2.""",
        files=files, paper=paper.ATAS_FIG2, paper_source=paper.ATAS_FIG2_SOURCE)
