"""ELLE's local-linearity error of the loss over training, beside the PGD accuracy.
Redraws ELLE Fig. 2c (the error jumps by orders of magnitude at catastrophic overfitting)."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from codiag.probes.local_linearity import LocalLinearity
from codiag.runs import Run

from .base import Figure, co_point, curve, event_marks, mark_co, method_label, needs, save, style, twin_adv_acc


@needs(LocalLinearity.mse)
def local_linearity(run: Run, out_dir: Path) -> Figure:
    """ELLE Fig. 2c: E_lin on random triplets of the probe set (log scale) against training progress."""
    co = co_point(run)
    df = curve(run, LocalLinearity.mse)
    with style():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(df["x"], df["value"].clip(lower=1e-12), marker="o", ms=3, label=method_label(run))
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("E_lin (MSE on triplets)")
        ax.set_title("local-linearity error (ELLE)")
        mark_co(ax, co, marks=event_marks(run))
        twin_adv_acc(ax, run)
        ax.legend(loc="upper left")
        files = save(fig, out_dir, "local_linearity")
    return Figure(
        key="local_linearity", title="Local-linearity error", redraws="ELLE Fig. 2c",
        caption=("ELLE's local-linearity error of the loss on the probe set: for one random triplet "
                 "per point (x_a, x_b uniform in the ε-ball, x_c on the segment between them), the mean "
                 "squared gap between l(x_c) and the interpolation of l(x_a) and l(x_b); the same "
                 "triplets at every probe event. Log scale; PGD accuracy on the right axis; dashed: CO. "
                 "ELLE-A's rule (the `elle_a` detector) fires when this exceeds the mean plus two "
                 "standard deviations of its earlier values. Redraws ELLE Fig. 2c."),
        files=files)
