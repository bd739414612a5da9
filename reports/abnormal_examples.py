"""Share of abnormal adversarial examples (loss lower after the attack step than at its start)
over training, on the probe set and, when the method counts them, on the training steps.
Redraws AAER Fig. 1 (the number of abnormal examples rises sharply at catastrophic overfitting)."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from codiag.probes.abnormal_examples import AbnormalExamples
from codiag.runs import Run

from .base import (
    Figure,
    co_point,
    curve,
    event_marks,
    mark_co,
    method_label,
    needs,
    recorded,
    save,
    style,
    twin_adv_acc,
)


@needs(AbnormalExamples.share)
def abnormal_examples(run: Run, out_dir: Path) -> Figure:
    """AAER Fig. 1: share of abnormal adversarial examples against training progress."""
    co = co_point(run)
    with style():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        df = curve(run, AbnormalExamples.share)
        ax.plot(df["x"], df["value"], marker="o", ms=3, label="probe set")
        if recorded(run, AbnormalExamples.train_share):
            d = curve(run, AbnormalExamples.train_share).dropna(subset=["value"])
            ax.plot(d["x"], d["value"], marker="s", ms=3, label="training steps since the last event")
        ax.set_xlabel("epoch")
        ax.set_ylabel("share of abnormal examples")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{method_label(run)}: abnormal adversarial examples (AAER)")
        mark_co(ax, co, marks=event_marks(run))
        twin_adv_acc(ax, run)
        ax.legend(loc="upper left", fontsize=7)
        files = save(fig, out_dir, "abnormal_examples")
    return Figure(
        key="abnormal_examples", title="Abnormal adversarial examples", redraws="AAER Fig. 1",
        caption=("Share of abnormal adversarial examples, whose loss after the method's attack step is "
                 "lower than at its starting point: on the probe set at each probe event and, for a "
                 "method that counts them during training (AAER, FGSM-PGI), among the training samples "
                 "seen since the previous event, at no extra forward pass. PGD accuracy on the right "
                 "axis; dashed: CO. Redraws AAER Fig. 1 (there: the number per epoch)."),
        files=files)
