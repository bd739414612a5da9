"""Quality of the linear approximation |L(x+delta) - L(x) - <delta, grad>| against
||delta||_2 at fixed ||delta||_inf = eps (coordinates of delta zeroed). Redraws
GradAlign Fig. 10."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from codiag.probes.linear_approx import LinearApprox
from codiag.runs import Run

from . import paper
from .base import Figure, co_point, method_label, needs, pick_snapshots, rows_of, save, style, x_of_step

KINDS = {LinearApprox.err: "δ_FGSM (sign of the gradient)", LinearApprox.err_random: "δ_random (random corner)"}


def _table(run: Run) -> pd.DataFrame:
    """Wide rows: step, kind, k, err, l2."""
    parts = []
    for key in (*KINDS, LinearApprox.l2):
        rows = rows_of(run, key)
        parts.append(rows.assign(what=key.name.split("/")[0],
                                 k=[float(key.parse(k)["k"]) for k in rows["key"]]))
    sel = pd.concat(parts, ignore_index=True)
    wide = sel.pivot_table(index=["step", "k"], columns="what", values="value", aggfunc="last").reset_index()
    # The random corner has the same mask, so the same ||delta||_2 up to clamping at [0, 1].
    frames = [wide.assign(kind=label, err=wide[key.name.split("/")[0]]) for key, label in KINDS.items()
              if key.name.split("/")[0] in wide]
    return pd.concat(frames, ignore_index=True)[["step", "k", "kind", "err", "l2"]]


@needs(LinearApprox.err, LinearApprox.l2)
def linear_approx(run: Run, out_dir: Path) -> Figure:
    """GradAlign Fig. 10: linearisation error against the L2 norm of delta, at a few
    probe events (initialisation, before and after CO, end)."""
    wide = _table(run)
    co = co_point(run)
    steps = pick_snapshots(sorted(set(wide["step"])), co, k=4)
    kinds = [k for k in KINDS.values() if k in set(wide["kind"])]
    with style():
        fig, axes = plt.subplots(1, len(kinds), figsize=(5.2 * len(kinds), 3.5), squeeze=False)
        colors = plt.cm.viridis(np.linspace(0, 0.9, len(steps)))
        for ax, kind in zip(axes[0], kinds):
            for color, s in zip(colors, steps):
                d = wide[(wide["step"] == s) & (wide["kind"] == kind)].sort_values("l2")
                tag = ""
                if co is not None:
                    tag = " (before CO)" if s < co.step else " (after CO)"
                ax.plot(d["l2"], d["err"], marker="o", ms=3, color=color,
                        label=f"epoch {x_of_step(run, s):g}{tag}")
            ax.set_xlabel("||δ||₂  (||δ||∞ = ε)")
            ax.set_ylabel("|L(x+δ) − L(x) − ⟨δ, ∇ₓL⟩|")
            ax.set_title(kind)
            ax.legend()
        fig.suptitle(method_label(run), fontsize=10)
        files = save(fig, out_dir, "linear_approx")
    return Figure(
        key="linear_approx", title="Linear-approximation error", redraws="GradAlign Fig. 10",
        caption="""Error of the first-order Taylor approximation of the loss, averaged over the probe set, for
        perturbations with L∞ norm ε whose coordinates are progressively zeroed (so ||δ||₂ varies), starting
        from the FGSM direction and from a random corner of the ball (||δ||₂ of the FGSM start on the x axis
        for both), at up to four probe events. Redraws GradAlign Fig. 10 (there: standard and PGD-trained
        ResNet-18).""",
        files=files, paper=paper.GRADALIGN_FIG10, paper_source=paper.GRADALIGN_FIG10_SOURCE)
