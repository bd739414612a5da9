"""Perturbation strength: the gap G = L(x + delta_method) - L(x + delta_PGD) and the
accuracy of a reference model on the method's perturbations. Redraws APART Fig. 2."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from codiag.probes.strength_gap import StrengthGap
from codiag.runs import Run

from . import paper
from .base import Figure, co_point, curve, event_marks, mark_co, method_label, needs, recorded, save, style


@needs(StrengthGap.gap)
def strength_gap(run: Run, out_dir: Path) -> Figure:
    """APART Fig. 2: (a) transfer accuracy on a reference model (when recorded; higher means a
    weaker perturbation), (b) strength gap G to PGD (eq. 2; |G| grows as the perturbation weakens);
    without a reference model the strength gap is the only panel, (a)."""
    co = co_point(run)
    transfer_keys = [k for k in (StrengthGap.transfer_acc, StrengthGap.transfer_acc_random) if recorded(run, k)]
    panels = 2 if transfer_keys else 1
    with style():
        fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.4), squeeze=False)
        ax = axes[0, -1]
        df = curve(run, StrengthGap.gap)
        ax.plot(df["x"], df["value"], marker="o", ms=3, label=method_label(run))
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_title(f"({'ab'[panels - 1]}) strength gap to PGD (APART eq. 2)")   # (a) when it is alone
        ax.set_ylabel("L(δ_method) − L(δ_PGD)")
        ax.set_xlabel("epoch")
        mark_co(ax, co, marks=event_marks(run))
        ax.legend()
        if transfer_keys:
            ax = axes[0, 0]
            for key in transfer_keys:
                d = curve(run, key)
                label = "random" if key is StrengthGap.transfer_acc_random else method_label(run)
                ax.plot(d["x"], d["value"], marker="o", ms=3, label=label)
            ax.set_title("(a) accuracy of the reference model on δ_method")
            ax.set_ylabel("transfer accuracy")
            ax.set_xlabel("epoch")
            mark_co(ax, co, marks=event_marks(run))
            ax.legend()
        files = save(fig, out_dir, "strength_gap")
    return Figure(
        key="strength_gap", title="Perturbation strength", redraws="APART Fig. 2",
        caption="""Strength gap G = mean CE at x + δ_method minus mean CE at x + δ_PGD on the probe set, as APART eq. 2
        writes it (G ≤ 0 while PGD is the stronger attack; |G| explodes when the method's perturbation
        deteriorates; APART Fig. 2b plots the size of the gap) and, when a reference model was given, its
        accuracy on the method's perturbations and on random corners (higher means weaker); dashed: CO.
        Redraws APART Fig. 2.""",
        files=files, paper=paper.APART_FIG2, paper_source=paper.APART_FIG2_SOURCE)
