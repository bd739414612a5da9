"""How concentrated the input gradient is over training: lp-FGSM's participation ratio and
entropy gap (Mehouachi & Jabari 2025)."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from codiag.probes.grad_concentration import GradConcentration
from codiag.runs import Run

from .base import Figure, co_point, curve, event_marks, mark_co, method_label, needs, save, style


@needs(GradConcentration.participation)
def grad_concentration(run: Run, out_dir: Path) -> Figure:
    """(a) participation ratio / d, (b) entropy gap of the clean input gradient."""
    co = co_point(run)
    with style():
        fig, axes = plt.subplots(1, 2, figsize=(10.4, 3.4))
        for ax, key, title, ylabel in (
                (axes[0], GradConcentration.participation, "(a) participation ratio", "(‖g‖₁ / ‖g‖₂)² / d"),
                (axes[1], GradConcentration.entropy_gap, "(b) entropy gap", "log d − H(|g| / ‖g‖₁)")):
            df = curve(run, key)
            ax.plot(df["x"], df["value"], marker="o", ms=3, label=method_label(run))
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            mark_co(ax, co, marks=event_marks(run))
            ax.legend()
        files = save(fig, out_dir, "grad_concentration")
    return Figure(
        key="grad_concentration", title="Input-gradient concentration", redraws="lp-FGSM (Mehouachi & Jabari 2025)",
        caption="""Concentration of the clean input gradient g on the probe set: (a) the participation ratio
        (‖g‖₁/‖g‖₂)² divided by the input dimension d (1 for a flat gradient, 1/d for one coordinate), the
        squared ratio of the L-inf FGSM's first-order gain to an L2 attack's of the same volume; (b) the
        entropy gap log d − H(|g|/‖g‖₁) (0 for a flat gradient). lp-FGSM ties catastrophic overfitting
        to gradients concentrating in few coordinates under the L-inf constraint; dashed line: CO.""",
        files=files)
