"""Figure builders and the HTML report writer.

Each module draws one kind of figure from recorded run directories (never a
live model) and names the paper figure it redraws. ``report`` turns run
directories into ``index.html`` with PNG/SVG figures and ``summary.csv``.

Per-run builders (``RUN_BUILDERS``), in page order:

=========================  =============================================
key                        redraws
=========================  =============================================
training_curves            GradAlign Fig. 4, 11
weight_update              ZeroGrad Fig. 1
perturbation_delta         ZeroGrad Fig. 2
strength_gap               APART Fig. 2
method_state               APART Fig. 3
grad_norm_hist             ATAS Fig. 6
grad_norm_subsets          ATAS Fig. 10
perturbation_norm_hist     ATAS Fig. 11
loss_surface               ATAS Fig. 2
filter_evolution           GradAlign Fig. 5, 12
filter_norms               GradAlign Fig. 6
feature_maps               GradAlign Fig. 7, 13
linear_approx              GradAlign Fig. 10
sign_agreement             ZeroGrad Table 10
local_linearity            ELLE Fig. 2c
abnormal_examples          AAER Fig. 1
pert_align                 SORA (ICML 2026) PertAlign
grad_concentration         lp-FGSM (Mehouachi & Jabari 2025)
=========================  =============================================

Across runs (``MULTI_BUILDERS``): overlay_curves, overlay_diagnostics (two or
more runs), l1_table (ZeroGrad Table 4), sign_table (ZeroGrad Table 10).
Analytic (``ANALYTIC_BUILDERS``): lemma1 (GradAlign Fig. 2), lemma2 (Fig. 9).
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

#: re-exported name -> its module, imported on first use: the figure modules load matplotlib,
#: seaborn and scipy (seconds), which the command line's parser and the presets do not need
_LAZY = {"Figure": "base", "MissingData": "base", "Report": "build",
         **{name: "figures" for name in ("ALL_FIGURES", "ANALYTIC_BUILDERS", "MULTI_BUILDERS",
                                         "RUN_BUILDERS", "SWEEP_BUILDERS")}}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def report(run_dirs: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike | None = None, *,
           figures: Iterable[str] | None = None, analytic: bool = True, title: str = "codiag report",
           echo: bool = False) -> Path:
    """Write the HTML report of ``run_dirs`` (one run directory, several, or folders of runs) and
    return the path of its ``index.html``: the function behind ``codiag report``.

    ``out`` defaults to ``RUN_DIR/report`` for one run and ``./codiag-report`` for several.
    """
    from .build import build

    dirs = [run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else list(run_dirs)
    out = default_out(dirs) if out is None else out
    return build(dirs, out, figures=figures, analytic=analytic, title=title, echo=echo).page


def default_out(run_dirs: Sequence[str | os.PathLike]) -> Path:
    """``RUN_DIR/report`` for one run directory or one sweep directory, ``./codiag-report``
    otherwise."""
    if len(run_dirs) == 1 and ((Path(run_dirs[0]) / "run.json").exists()
                               or (Path(run_dirs[0]) / "sweep.json").exists()):
        return Path(run_dirs[0]) / "report"
    return Path("codiag-report")


__all__ = ["ALL_FIGURES", "ANALYTIC_BUILDERS", "MULTI_BUILDERS", "RUN_BUILDERS", "SWEEP_BUILDERS", "Figure",
           "MissingData", "Report", "default_out", "report"]
