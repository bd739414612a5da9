"""The figure registry: which builder draws which figure, in page order."""
from __future__ import annotations

from typing import Callable, Mapping

from codiag.probes import PROBES

from .abnormal_examples import abnormal_examples
from .accuracy_vs_cost import accuracy_vs_cost
from .analytic import lemma1, lemma2
from .base import Builder, Figure
from .co_rate import co_rate
from .curves import overlay_curves, overlay_diagnostics, training_curves
from .feature_maps import feature_maps
from .filters import filter_evolution, filter_norms
from .grad_concentration import grad_concentration
from .grad_norm import grad_norm_hist, grad_norm_subsets
from .leaderboard import leaderboard
from .linear_approx import linear_approx
from .local_linearity import local_linearity
from .loss_surface import loss_surface
from .method_state import method_state
from .pert_align import pert_align
from .perturbation_delta import perturbation_delta
from .perturbation_norm import l1_table, perturbation_norm_hist
from .robust_vs_eps import robust_vs_eps
from .scorecard import detector_scorecard
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
    "local_linearity": local_linearity,
    "abnormal_examples": abnormal_examples,
    "pert_align": pert_align,
    "grad_concentration": grad_concentration,
}

#: key -> (builder, fewest runs it is drawn for)
MULTI_BUILDERS: dict[str, tuple[Callable[..., Figure], int]] = {
    "overlay_curves": (overlay_curves, 2),
    "overlay_diagnostics": (overlay_diagnostics, 2),
    "l1_table": (l1_table, 1),
    "sign_table": (sign_table, 2),
}

#: Figures of an eps sweep (``codiag sweep``): drawn for a sweep directory (``sweep.json``).
SWEEP_BUILDERS: dict[str, Callable[..., Figure]] = {
    "robust_vs_eps": robust_vs_eps,
    "co_rate": co_rate,
    "accuracy_vs_cost": accuracy_vs_cost,
    "detector_scorecard": detector_scorecard,
    "leaderboard": leaderboard,
}

ANALYTIC_BUILDERS: dict[str, Callable[..., Figure]] = {"lemma1": lemma1, "lemma2": lemma2}

ALL_FIGURES = (*RUN_BUILDERS, *MULTI_BUILDERS, *SWEEP_BUILDERS, *ANALYTIC_BUILDERS)


def undeclared_needs(builders: Mapping[str, Builder] | None = None) -> list[str]:
    """``"figure: output"`` for each output a figure needs that no registered probe declares
    (the run and across-run figures by default); empty when every need is declared."""
    if builders is None:
        builders = {**RUN_BUILDERS, **{k: fn for k, (fn, _) in MULTI_BUILDERS.items()}}
    declared = {id(out) for cls in PROBES.values() for out in [*cls.keys(), *cls.arrays()]}
    return [f"{key}: {out}" for key, fn in builders.items() for need in getattr(fn, "needs", ())
            for out in (need if isinstance(need, tuple) else (need,)) if id(out) not in declared]
