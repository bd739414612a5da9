"""``detector_scorecard``: the online CO alarm of this sweep's runs against the collapse label
(``sweep_table``): hits, misses, false alarms and latency per method, the same score the
detector's own benchmark reports on its corpus, here on the user's sweep.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import pandas as pd

from codiag.runs import Run

from .base import Figure, method_title, save, style
from .sweep_table import grid_table, scorecard

_OUTCOMES = ("hit", "miss", "false alarm", "quiet")
_COLORS = {"hit": "tab:green", "miss": "tab:red", "false alarm": "tab:orange", "quiet": "0.75"}


def detector_scorecard(runs: Sequence[Run], out_dir: Path) -> Figure:
    """Online alarm vs collapse label per method: hits, misses, false alarms, quiet runs."""
    df = grid_table(runs)
    card = scorecard(df)
    counts = (df[df["outcome"] != ""].groupby(["method", "outcome"]).size().unstack(fill_value=0)
              .reindex(columns=list(_OUTCOMES), fill_value=0))
    counts.index = [method_title(m) for m in counts.index]
    with style():
        fig, ax = plt.subplots(figsize=(5.6, 0.9 + 0.35 * len(counts)))
        left = pd.Series(0, index=counts.index)
        for o in _OUTCOMES:
            ax.barh(counts.index, counts[o], left=left, color=_COLORS[o], label=o)
            left = left + counts[o]
        ax.set_xlabel("runs")
        ax.invert_yaxis()
        ax.legend(fontsize=7, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0))
        files = save(fig, out_dir, "detector_scorecard")
    caption = ("The online CO alarm of every run against its collapse label (final PGD accuracy below "
               "max(0.05, 0.3 x its peak probe PGD accuracy, with clean and FGSM accuracy at least 0.2 "
               "above it)): "
               "hit = alarm on a collapsed run, miss = no alarm on one, false alarm = alarm on a run that "
               "kept its robustness or never had any. Latency: alarm epoch minus the first epoch from which "
               "the probe's PGD accuracy stayed below that bound with FGSM accuracy 0.2 above it.")
    return Figure("detector_scorecard", "Detector scorecard on this sweep", caption,
                  "detector benchmark (recall, false alarms, latency)", files, table=card.round(3))
