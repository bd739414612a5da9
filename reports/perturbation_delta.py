"""MSE between the method's perturbations of one fixed batch at consecutive probe
events, with the test adversarial accuracy. Redraws ZeroGrad Fig. 2."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from codiag.probes.perturbation_delta import PerturbationDelta
from codiag.runs import Run

from . import paper
from .base import BLUE, Figure, co_point, curve, event_marks, mark_co, method_label, needs, save, style, twin_adv_acc


@needs(PerturbationDelta.mse)
def perturbation_delta(run: Run, out_dir: Path) -> Figure:
    """ZeroGrad Fig. 2: perturbation MSE between consecutive events (blue) and PGD accuracy (red)."""
    df = curve(run, PerturbationDelta.mse)
    co = co_point(run)
    with style():
        fig, ax = plt.subplots(figsize=(6, 3.3))
        ax.plot(df["x"], df["value"], color=BLUE, marker="o", ms=3)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("MSE of perturbations, consecutive events", color=BLUE)
        ax.set_title(method_label(run))
        mark_co(ax, co, label=False, marks=event_marks(run))
        twin_adv_acc(ax, run)
        files = save(fig, out_dir, "perturbation_delta")
    return Figure(
        key="perturbation_delta", title="Perturbation change between events", redraws="ZeroGrad Fig. 2",
        caption="""Mean squared difference between the method's perturbations of one fixed probe batch (same random
        start) at consecutive probe events (blue, log scale), with the test PGD accuracy (red); dashed: CO.
        Redraws ZeroGrad Fig. 2 (top: FGSM-RS, bottom: with the 35% smallest gradient coordinates zeroed).""",
        files=files, paper=paper.ZEROGRAD_FIG2, paper_source=paper.ZEROGRAD_FIG2_SOURCE)
