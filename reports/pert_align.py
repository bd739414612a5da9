"""PertAlign over training (SORA, ICML 2026): the alignment of the attack's gradient at its
start with the training loss's gradient at x + delta, beside GradAlign's gradient alignment
where the run recorded it."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from codiag.probes.grad_align import GradAlign
from codiag.probes.pert_align import PertAlign
from codiag.runs import Run

from .base import Figure, co_point, curve, event_marks, mark_co, method_label, needs, recorded, save, style


@needs(PertAlign.mean)
def pert_align(run: Run, out_dir: Path) -> Figure:
    """SORA's PertAlign curve (probe set, FGSM-RS step), GradAlign's alignment beside it."""
    co = co_point(run)
    with style():
        fig, ax = plt.subplots(figsize=(5.2, 3.4))
        df = curve(run, PertAlign.mean)
        ax.plot(df["x"], df["value"], marker="o", ms=3, label=f"PertAlign, {method_label(run)}")
        if recorded(run, GradAlign.mean):
            g = curve(run, GradAlign.mean)
            ax.plot(g["x"], g["value"], marker="s", ms=3, ls="--", label="gradient alignment (GradAlign eq. 5)")
        ax.set_ylim(min(-0.05, float(df["value"].min()) - 0.05), 1.05)
        ax.set_xlabel("epoch")
        ax.set_ylabel("cosine")
        ax.set_title("PertAlign: cos(∇L(x + η), ∇L(x + δ))")
        mark_co(ax, co, marks=event_marks(run))
        ax.legend()
        files = save(fig, out_dir, "pert_align")
    return Figure(
        key="pert_align", title="Perturbation alignment (PertAlign)", redraws="SORA (ICML 2026) PertAlign",
        caption="""PertAlign on the probe set at each event: the mean cosine between the input gradient at an
        FGSM-RS start x + η (η uniform in the eps-ball) and the gradient at the point one step of 1.25 eps
        reaches, x + δ; the dashed curve, where recorded, is GradAlign's alignment of the clean and a noisy
        gradient. SORA reports PertAlign falling before catastrophic overfitting; dashed vertical line: CO.""",
        files=files)
