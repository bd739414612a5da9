"""The method's own scalar state over training; for APART its learned step sizes.
Redraws APART Fig. 3."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from codiag.probes.method_state import MethodState
from codiag.runs import Run

from . import paper
from .base import (
    Figure,
    NotApplicable,
    co_point,
    curve,
    event_marks,
    mark_co,
    method_label,
    needs,
    recorded,
    rows_of,
    save,
    style,
)


def _stateless(run: Run) -> bool:
    """A registered method that keeps no internal state (``Method.state`` not overridden: FGSM,
    FGSM-RS, PGD, ...): the ``method_state`` probe has nothing to record for it."""
    from codiag.methods import METHODS, Method

    cls = METHODS.get(str(run.config.get("method", "")))
    return cls is not None and cls.state is Method.state


def method_state(run: Run, out_dir: Path) -> Figure:
    """APART Fig. 3: learned step sizes per perturbation point (any method's scalar state); not
    applicable to a method without state."""
    if _stateless(run) and not recorded(run, MethodState.scalar):
        raise NotApplicable(f"method {run.config.get('method')} keeps no state")
    return _method_state(run, out_dir)


@needs(MethodState.scalar)
def _method_state(run: Run, out_dir: Path) -> Figure:
    keys = sorted(set(rows_of(run, MethodState.scalar)["key"]))
    apart = str(run.config.get("method", "")).startswith("apart")
    if apart and any(k.startswith("alpha_") for k in keys):
        keys = [k for k in keys if k.startswith("alpha_")]   # the learned step sizes
    co = co_point(run)
    with style():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key in keys:
            df = curve(run, MethodState.scalar, state=key)
            ax.plot(df["x"], df["value"], marker="o", ms=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel("step size" if apart else "value")
        ax.set_title(f"{method_label(run)}: {'learned step sizes' if apart else 'method state'}")
        mark_co(ax, co, marks=event_marks(run))
        ax.legend(fontsize=7, ncol=2)
        files = save(fig, out_dir, "method_state")
    return Figure(
        key="method_state", title="Learned step sizes" if apart else "Method state",
        redraws="APART Fig. 3",
        caption="""The method's own scalar state at each probe event: for APART, the learned step size of each
        perturbation point (input and block inputs). Redraws APART Fig. 3.""",
        files=files, paper=paper.APART_FIG3 if apart else None,
        paper_source=paper.APART_FIG3_SOURCE if apart else "")


method_state.needs = _method_state.needs   # type: ignore[attr-defined]
