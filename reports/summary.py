"""The summary table over several runs: method, eps, seed, clean, FGSM and PGD-50-10
accuracy (FGSM far above PGD: the collapse's signature), AutoAttack where evaluated,
CO epoch if any, training time.
Written as CSV (``summary.csv``) and as HTML. A run without a final evaluation
(a monitored loop of the user's) shows the accuracies of its last probe event
(the probe PGD on the probe set), and ``pgd_attack`` / ``eval_n`` say so."""
from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from codiag import atomic
from codiag.runs import Run

from .base import co_point, fmt_eps, readable_callable

COLUMNS = ["run", "method", "method_args", "dataset", "model", "eps", "seed", "clean_acc", "fgsm_acc", "pgd_acc",
           "pgd_attack", "eval_n", "aa_acc", "co_epoch", "train_time_s", "status"]


def _final(run: Run) -> dict[str, float]:
    """Final evaluation: the trainer's ``eval`` rows, else run.json's ``final``."""
    out: dict[str, float] = {}
    final = run.meta.get("final")
    if isinstance(final, dict):
        out.update({k: v for k, v in final.items() if isinstance(v, (int, float))})
    m = run.metrics
    ev = m[m["probe"] == "eval"]
    for key, grp in ev.groupby("key"):
        out[str(key)] = float(grp.sort_values("step")["value"].iloc[-1])
    return out


def _last_probe_event(run: Run) -> dict[str, float]:
    """Clean, FGSM and PGD accuracy of the last full probe event (``robust_acc``), for runs without a
    final evaluation (a monitored loop of the user's), with the probe set's size."""
    m = run.metrics
    acc = m[(m["probe"] == "robust_acc") & m["key"].isin(["clean_acc", "fgsm_acc", "pgd_acc"])]
    if acc.empty:
        return {}
    # a light event and the epoch's event can share a step: the last one written is the full one
    sizes = m[(m["probe"] == "event") & (m["key"] == "probe_n")].groupby("step")["value"].last()
    steps = sorted(set(acc["step"]))
    if len(sizes):   # light events run on a slice: the last event on the whole probe set
        full = [s for s in steps if sizes.get(s, sizes.max()) == sizes.max()]
        steps = full or steps
    last = acc[acc["step"] == steps[-1]]
    out = {str(k): float(v) for k, v in zip(last["key"], last["value"])}
    n = (run.config.get("monitor") or {}).get("probe_set", {}).get("n")
    if isinstance(n, int):
        out["n"] = n
    return out


def _train_time(run: Run) -> float:
    t = run.meta.get("train_time_s")
    if isinstance(t, (int, float)):
        return float(t)
    try:
        start = dt.datetime.fromisoformat(run.meta["start_time"])
        end = dt.datetime.fromisoformat(run.meta["end_time"])
        return (end - start).total_seconds()
    except (KeyError, TypeError, ValueError):
        return math.nan


def summary_row(run: Run) -> dict[str, Any]:
    c = run.config
    final = _final(run)
    co = co_point(run)
    steps, restarts = c.get("eval_steps"), c.get("eval_restarts")
    if "pgd_acc" not in final and "clean_acc" not in final:
        final = _last_probe_event(run)
        pgd = (c.get("monitor") or {}).get("probe_pgd") or {}
        steps, restarts = (pgd.get("steps"), 1) if final else (None, None)
    args = c.get("method_args") or {}
    return {
        "run": run.name, "method": readable_callable(str(c.get("method", ""))),
        "method_args": " ".join(f"{k}={v}" for k, v in sorted(args.items())),
        "dataset": c.get("dataset", ""), "model": c.get("model", ""),
        "eps": fmt_eps(c.get("eps", "")), "seed": c.get("seed", ""),
        "clean_acc": final.get("clean_acc", math.nan), "fgsm_acc": final.get("fgsm_acc", math.nan),
        "pgd_acc": final.get("pgd_acc", math.nan),
        "pgd_attack": f"PGD-{steps}-{restarts}" if steps and "pgd_acc" in final else "",
        "eval_n": int(final["n"]) if "n" in final else "",
        "aa_acc": final.get("aa_acc", math.nan),
        "co_epoch": "" if co is None else co.epoch,
        "train_time_s": round(_train_time(run), 1), "status": run.status,
    }


def summary_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run, columns ``COLUMNS``."""
    return pd.DataFrame([summary_row(r) for r in runs], columns=COLUMNS)


def write_summary(runs: Sequence[Run], out_dir: Path) -> tuple[pd.DataFrame, Path]:
    """Write ``summary.csv`` (one row per run) and return the table and the path."""
    table = summary_table(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "summary.csv"
    atomic.write_text(path, table.to_csv(index=False, float_format="%.4f"))
    return table, path
