"""The table behind the sweep figures: one row per run of an eps sweep (GradAlign Fig. 1, 8),
with its final accuracies, its cost relative to FGSM at the same eps, the online CO alarm
and a collapse label, and the detector scorecard that compares the two.

Collapse label (independent of the alarm: it reads the final evaluation, not the rules):
a run *collapsed* when its final PGD accuracy (the trainer's PGD-k-r evaluation) is below
``max(0.05, 0.3 x peak)``, ``peak`` being the highest PGD accuracy the ``robust_acc`` probe
recorded during training (0 when it did not run), while its clean accuracy stays at least
0.2 above the PGD accuracy and its FGSM accuracy at least 0.2 above it too: the model learned
the task and beats its single-step attack but not PGD (GradAlign Sec. 4 and Fig. 1: clean
and FGSM accuracy hold, PGD accuracy goes to ~0). A model that learned nothing (clean close
to PGD accuracy) or never became robust (FGSM accuracy as low as PGD) is not a collapse; a
run without a final FGSM accuracy gets no label. Its *collapse epoch* is the first probe
event, among those from which the probe's PGD accuracy stays below that bound, whose FGSM
accuracy is at least 0.2 above its PGD accuracy (the signature); so a run that collapsed in
its first epoch, before its PGD accuracy ever had a peak, gets that epoch, not the epoch of
the measurement at initialisation. Latency = alarm epoch - collapse epoch.

Saving the run: ``rollbacks`` counts the guard's (``codiag train --guard``) roll-backs, a
guarded run's method reads ``METHOD+guard`` (so the sweep shows it beside the plain method),
``saved`` marks a run that rolled back and did not collapse by the label, ``best_*`` are the
accuracies of its best checkpoint (run.json's ``best``: the probe event with the highest PGD
accuracy), and ``warning_epoch`` the epoch of its first early ``warning`` event (empty without).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from codiag.probes.robust_acc import RobustAcc
from codiag.runs import Run

from .base import MissingData, fmt_eps
from .summary import summary_row

COLLAPSE_ABS = 0.05
COLLAPSE_REL = 0.3
MIN_CLEAN_GAP = 0.2
MIN_FGSM_GAP = 0.2

COLUMNS = ["run", "method", "method_args", "dataset", "model", "eps", "eps_label", "seed", "clean_acc",
           "fgsm_acc", "pgd_acc", "aa_acc", "pgd_attack", "eval_n", "train_time_s", "cost_vs_fgsm",
           "grad_evals_per_step", "alarm",
           "alarm_epoch", "peak_probe_pgd", "collapsed", "collapse_epoch", "outcome", "latency_epochs",
           "status", "warning_epoch", "rollbacks", "saved", "best_epoch", "best_pgd_acc", "best_fgsm_acc",
           "best_clean_acc"]


def method_label(config: dict[str, Any], method: str) -> str:
    """``METHOD+guard`` for a run trained with ``--guard`` (``METHOD+guard-POLICY`` unless the policy is auto)."""
    guard = config.get("guard")
    if not guard:
        return method
    return f"{method}+guard" if guard == "auto" else f"{method}+guard-{guard}"


def rescue_fields(run: Run, collapsed: bool | None) -> dict[str, Any]:
    """The columns of the guard, the best checkpoint and the early warning."""
    warnings = run.events_of("warning")
    rollbacks = len(run.events_of("rollback"))
    best = run.meta.get("best") or {}
    return {"warning_epoch": int(warnings[0]["epoch"]) if warnings and warnings[0].get("epoch") is not None
            else None,
            "rollbacks": rollbacks, "saved": bool(rollbacks) and collapsed is False,
            "best_epoch": best.get("epoch"), "best_pgd_acc": best.get("pgd_acc", math.nan),
            "best_fgsm_acc": best.get("fgsm_acc", math.nan), "best_clean_acc": best.get("clean_acc", math.nan)}


def _probe_acc(run: Run) -> pd.DataFrame:
    """The ``robust_acc`` probe's PGD and FGSM accuracy per event (the last one written at a step:
    the full event after a light one), rows with a finite PGD accuracy."""
    pgd = run.scalar(*RobustAcc.pgd_acc.pair).drop_duplicates("step", keep="last")
    fgsm = run.scalar(*RobustAcc.fgsm_acc.pair).drop_duplicates("step", keep="last")
    df = pgd[["step", "epoch", "value"]].rename(columns={"value": "pgd"})
    df = df.merge(fgsm[["step", "value"]].rename(columns={"value": "fgsm"}), on="step", how="left")
    return df[np.isfinite(df["pgd"].to_numpy(dtype=float))].reset_index(drop=True)


def collapse_label(run: Run, final_pgd: float, final_clean: float,
                   final_fgsm: float) -> tuple[bool | None, float, int | None]:
    """(collapsed, probe peak, collapse epoch); collapsed is None without a final evaluation."""
    df = _probe_acc(run)
    peak = float(df["pgd"].max()) if len(df) else 0.0
    if not all(math.isfinite(v) for v in (final_pgd, final_clean, final_fgsm)):
        return None, peak, None
    bound = max(COLLAPSE_ABS, COLLAPSE_REL * peak)
    collapsed = bool(final_pgd < bound and final_clean - final_pgd >= MIN_CLEAN_GAP
                     and final_fgsm - final_pgd >= MIN_FGSM_GAP)
    epoch = None
    if collapsed and len(df):
        above = np.flatnonzero(df["pgd"].to_numpy() >= bound)
        after = df.iloc[above[-1] + 1:] if len(above) else df
        signature = after[(after["fgsm"] - after["pgd"]) >= MIN_FGSM_GAP]
        first = signature if len(signature) else after
        epoch = int(first["epoch"].iloc[0]) if len(first) else int(df["epoch"].iloc[-1])
    return collapsed, peak, epoch


def _grad_evals(run: Run) -> float:
    """Gradient evaluations per training step, counted by the trainer (run.json ``cost``; NaN
    for a run that did not count them)."""
    cost = run.meta.get("cost")
    value = cost.get("grad_evals_per_step") if isinstance(cost, dict) else None
    return float(value) if isinstance(value, (int, float)) else math.nan


def sweep_row(run: Run) -> dict[str, Any]:
    """One run's row (``COLUMNS``, without ``cost_vs_fgsm``, which needs the other runs)."""
    s = summary_row(run)
    eps = float(run.config.get("eps", math.nan))
    pgd, clean, fgsm = float(s["pgd_acc"]), float(s["clean_acc"]), float(s["fgsm_acc"])
    alarms = run.events_of("co_alarm")
    alarm_epoch = int(alarms[0]["epoch"]) if alarms and alarms[0].get("epoch") is not None else None
    collapsed, peak, collapse_epoch = collapse_label(run, pgd, clean, fgsm)
    if collapsed is None:
        outcome = ""
    else:
        outcome = {(True, True): "hit", (True, False): "miss", (False, True): "false alarm",
                   (False, False): "quiet"}[(bool(collapsed), bool(alarms))]
    latency = alarm_epoch - collapse_epoch if alarm_epoch is not None and collapse_epoch is not None \
        and collapsed else None
    return {"run": run.name, "method": method_label(run.config, s["method"]), "method_args": s["method_args"],
            "dataset": s["dataset"],
            "model": s["model"], "eps": eps, "eps_label": fmt_eps(eps), "seed": s["seed"],
            "clean_acc": s["clean_acc"], "fgsm_acc": s["fgsm_acc"], "pgd_acc": pgd, "aa_acc": s["aa_acc"],
            "pgd_attack": s["pgd_attack"],
            "eval_n": s["eval_n"], "train_time_s": s["train_time_s"], "cost_vs_fgsm": math.nan,
            "grad_evals_per_step": _grad_evals(run),
            "alarm": bool(alarms), "alarm_epoch": alarm_epoch, "peak_probe_pgd": round(peak, 4),
            "collapsed": collapsed, "collapse_epoch": collapse_epoch, "outcome": outcome,
            "latency_epochs": latency, "status": s["status"], **rescue_fields(run, collapsed)}


def sweep_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run, sorted by method, eps, seed; ``cost_vs_fgsm`` is the run's training
    time over the mean training time of the FGSM runs at the same eps (NaN without them)."""
    if not runs:
        raise MissingData("no runs")
    df = pd.DataFrame([sweep_row(r) for r in runs], columns=COLUMNS)
    fgsm = df[df["method"] == "fgsm"].groupby("eps")["train_time_s"].mean()
    df["cost_vs_fgsm"] = [t / fgsm[e] if e in fgsm.index and fgsm[e] > 0 else math.nan
                          for t, e in zip(df["train_time_s"], df["eps"])]
    return df.sort_values(["method", "eps", "seed"], kind="stable").reset_index(drop=True)


def grid_table(runs: Sequence[Run]) -> pd.DataFrame:
    """The sweep table, refused (MissingData) unless the runs form an eps sweep: at least two
    eps values, every run with a final evaluation."""
    df = sweep_table(runs)
    if df["eps"].nunique() < 2:
        raise MissingData("an eps sweep needs runs at two or more eps values (codiag sweep)")
    if df["pgd_acc"].isna().all():
        raise MissingData("no run has a final PGD evaluation (eval_n > 0)")
    return df


def scorecard(df: pd.DataFrame) -> pd.DataFrame:
    """The online alarm against the collapse label, per method and over all runs: collapsed
    runs, recall (hits / collapsed), false alarms (alarms on runs that did not collapse),
    and the mean latency in epochs."""
    labelled = df[df["collapsed"].notna()]
    rows = []
    for name, grp in [*labelled.groupby("method"), ("all", labelled)]:
        collapsed = grp["collapsed"].astype(bool)
        hits = int((collapsed & grp["alarm"]).sum())
        lat = pd.to_numeric(grp.loc[collapsed & grp["alarm"], "latency_epochs"], errors="coerce").dropna()
        rows.append({"method": name, "runs": len(grp), "collapsed": int(collapsed.sum()),
                     "alarms": int(grp["alarm"].sum()),
                     "hits": hits, "recall": hits / collapsed.sum() if collapsed.sum() else math.nan,
                     "false_alarms": int((~collapsed & grp["alarm"]).sum()),
                     "mean_latency_epochs": float(lat.mean()) if len(lat) else math.nan})
    return pd.DataFrame(rows)
