"""Figure builders and the HTML report writer (issue 5).

Each module draws one kind of figure from recorded run directories (never a
live model) and names the paper figure it redraws. ``build_report`` turns run
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
=========================  =============================================

Across runs (``MULTI_BUILDERS``): overlay_curves, overlay_diagnostics (two or
more runs), l1_table (ZeroGrad Table 4), sign_table (ZeroGrad Table 10).
Analytic (``ANALYTIC_BUILDERS``): lemma1 (GradAlign Fig. 2), lemma2 (Fig. 9).
"""
from __future__ import annotations

from typing import Any, Callable

from .analytic import lemma1, lemma2
from .base import Figure, MissingData
from .curves import overlay_curves, overlay_diagnostics, training_curves
from .feature_maps import feature_maps
from .filters import filter_evolution, filter_norms
from .grad_norm import grad_norm_hist, grad_norm_subsets
from .linear_approx import linear_approx
from .loss_surface import loss_surface
from .method_state import method_state
from .perturbation_delta import perturbation_delta
from .perturbation_norm import l1_table, perturbation_norm_hist
from .sign_agreement import sign_agreement, sign_table
from .strength_gap import strength_gap
from .weight_update import weight_update

RUN_BUILDERS: dict[str, Callable[..., Figure]] = {
    "training_curves": training_curves,
    "weight_update": weight_update,
    "perturbation_delta": perturbation_delta,
    "strength_gap": strength_gap,
    "method_state": method_state,
    "grad_norm_hist": grad_norm_hist,
    "grad_norm_subsets": grad_norm_subsets,
    "perturbation_norm_hist": perturbation_norm_hist,
    "loss_surface": loss_surface,
    "filter_evolution": filter_evolution,
    "filter_norms": filter_norms,
    "feature_maps": feature_maps,
    "linear_approx": linear_approx,
    "sign_agreement": sign_agreement,
}

#: key -> (builder, fewest runs it is drawn for)
MULTI_BUILDERS: dict[str, tuple[Callable[..., Figure], int]] = {
    "overlay_curves": (overlay_curves, 2),
    "overlay_diagnostics": (overlay_diagnostics, 2),
    "l1_table": (l1_table, 1),
    "sign_table": (sign_table, 2),
}

ANALYTIC_BUILDERS: dict[str, Callable[..., Figure]] = {"lemma1": lemma1, "lemma2": lemma2}

ALL_FIGURES = (*RUN_BUILDERS, *MULTI_BUILDERS, *ANALYTIC_BUILDERS)


def build_report(*args: Any, **kwargs: Any):
    """See :func:`reports.build.build_report`."""
    from .build import build_report as _build
    return _build(*args, **kwargs)


__all__ = ["Figure", "MissingData", "RUN_BUILDERS", "MULTI_BUILDERS", "ANALYTIC_BUILDERS", "ALL_FIGURES",
           "build_report"]
