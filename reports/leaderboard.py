"""``leaderboard``: the FastAT Benchmark's leaderboard for a sweep (Pan & Yao 2026, its results
table): per method and eps, clean and PGD accuracy (the trainer's final PGD-k-r, PGD-50-10 by
default) and AutoAttack where evaluated, for the three models the protocol yields (run.json
``final``: the raw model at the end; ``final.averaged``: the weight average; ``final.best``:
the checkpoint chosen by ``--select best``), mean +/- standard deviation over seeds, with the
training time, the peak memory (run.json ``peak_memory``: CUDA's peak allocation on a GPU, the
process's max RSS on the CPU, labelled as such), the sweep's collapse label
(``sweep_table``) and the runs that ended at chance accuracy (a constant classifier: training
diverged, which is not catastrophic overfitting and which the collapse label leaves out). For
CIFAR-10 at eps 8/255 the benchmark's published numbers stand beside ours, labelled as the
benchmark's.

The table is also written as CSV, Markdown and LaTeX beside the figure (``leaderboard.csv``,
``.md``, ``.tex``); ``codiag report SWEEP --table latex`` prints one of them.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from codiag import atomic
from codiag.errors import UsageError
from codiag.runs import Run

from .base import Figure, MissingData, fmt_eps, method_title, save, style
from .fastat_published import SOURCE, benchmark_name, published
from .sweep_table import sweep_table

#: the protocol's three models: (name, where in run.json's ``final``)
MODELS = ("raw", "averaged", "best")
#: a raw model whose clean accuracy is at most chance plus this did not learn (a constant classifier)
AT_CHANCE_MARGIN = 0.05
#: the export formats of ``codiag report --table``, each with its file suffix
TABLE_FORMATS = {"csv": "csv", "markdown": "md", "latex": "tex"}


def _accs(run: Run) -> dict[str, float]:
    """``{model}_{clean,pgd,aa}`` of one run from run.json ``final`` (NaN where not evaluated)."""
    final = run.meta.get("final") if isinstance(run.meta.get("final"), dict) else {}
    out: dict[str, float] = {}
    for model in MODELS:
        rec = final if model == "raw" else final.get(model)
        rec = rec if isinstance(rec, dict) else {}
        for short, key in (("clean", "clean_acc"), ("pgd", "pgd_acc"), ("aa", "aa_acc")):
            v = rec.get(key)
            out[f"{model}_{short}"] = float(v) if isinstance(v, (int, float)) else math.nan
    return out


def _memory(run: Run) -> tuple[float, str]:
    """(peak memory in MiB, what was measured) from run.json ``peak_memory``."""
    pm = run.meta.get("peak_memory")
    if isinstance(pm, dict) and isinstance(pm.get("bytes"), (int, float)):
        return pm["bytes"] / 2**20, str(pm.get("measure", ""))
    return math.nan, ""


def _at_chance(run: Run, clean: float) -> bool:
    """The raw model ended at chance clean accuracy (1 / classes + AT_CHANCE_MARGIN)."""
    from codiag.data import dataset_spec

    try:
        classes = dataset_spec(str(run.config.get("dataset"))).num_classes
    except UsageError:          # a dataset codiag does not know (a user's own loop): ten classes
        classes = 10
    return math.isfinite(clean) and clean <= 1 / classes + AT_CHANCE_MARGIN


def per_run(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run: method, eps, seed, the three models' accuracies, time, memory, collapse, and
    whether the raw model ended at chance."""
    table = sweep_table(runs).set_index("run")
    rows = []
    for run in runs:
        s = table.loc[run.name]
        mem, measure = _memory(run)
        accs = _accs(run)
        rows.append({"method": s["method"], "eps": float(s["eps"]), "seed": s["seed"], **accs,
                     "train_time_s": float(s["train_time_s"]), "peak_memory_mib": mem, "memory_measure": measure,
                     "collapsed": s["collapsed"], "at_chance": _at_chance(run, accs["raw_clean"])})
    return pd.DataFrame(rows)


def leaderboard_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Per (method, eps): seeds, mean and std over seeds of every accuracy, time and memory, the
    collapsed runs, and (CIFAR-10 at 8/255) the benchmark's published numbers; sorted by the best
    model's PGD accuracy (the benchmark's ranking), then the raw model's."""
    df = per_run(runs)
    if df[[f"{m}_pgd" for m in MODELS]].isna().all().all():
        raise MissingData("no run has a final PGD evaluation (eval_n > 0)")
    rows = []
    for (method, eps), g in df.groupby(["method", "eps"], sort=False):
        row: dict[str, Any] = {"method": method, "eps": fmt_eps(eps), "seeds": int(g["seed"].nunique())}
        for model in MODELS:
            for short in ("clean", "pgd", "aa"):
                v = g[f"{model}_{short}"].dropna()
                row[f"{model}_{short}"] = float(v.mean()) if len(v) else math.nan
                row[f"{model}_{short}_std"] = float(v.std(ddof=0)) if len(v) else math.nan
        row["train_time_s"] = float(g["train_time_s"].mean())
        row["peak_memory_mib"] = float(g["peak_memory_mib"].mean())
        row["memory_measure"] = "/".join(sorted(set(g["memory_measure"]) - {""}))
        labelled = g["collapsed"].dropna()
        row["collapsed"] = f"{int(labelled.astype(bool).sum())}/{len(labelled)}" if len(labelled) else ""
        row["at_chance"] = f"{int(g['at_chance'].sum())}/{len(g)}"
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.sort_values(["best_pgd", "raw_pgd"], ascending=False, na_position="last",
                           kind="stable").reset_index(drop=True)


def _is_fastat_setting(runs: Sequence[Run]) -> bool:
    """CIFAR-10 at eps 8/255: the setting of the benchmark's published table."""
    return all(r.config.get("dataset") == "cifar10" and abs(float(r.config.get("eps", 0)) - 8 / 255) < 1e-6
               for r in runs)


def benchmark_beside(table: pd.DataFrame) -> pd.DataFrame:
    """The benchmark's published rows for the methods of ``table`` (in its order)."""
    pub = published().set_index("benchmark_method")
    rows = []
    for method in dict.fromkeys(table["method"]):
        name = benchmark_name(str(method))
        if name is not None and name in pub.index:
            rows.append({"method": method, "benchmark_method": name, **pub.loc[name].to_dict()})
    return pd.DataFrame(rows)


def _pm(mean: float, std: float, pct: bool) -> str:
    if not math.isfinite(mean):
        return "-"
    k = 100 if pct else 1
    return f"{k * mean:.1f} ± {k * std:.1f}" if math.isfinite(std) else f"{k * mean:.1f}"


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard as text cells: accuracies in percent, ``mean ± std`` over seeds; the AutoAttack
    columns only where some run evaluated it."""
    cols: dict[str, list[str]] = {"method": [method_title(m) for m in table["method"]],
                                  "eps": list(table["eps"]), "seeds": [str(s) for s in table["seeds"]]}
    for model in MODELS:
        shorts = ("clean", "pgd", "aa") if table[f"{model}_aa"].notna().any() else ("clean", "pgd")
        for short in shorts:
            cols[f"{model} {short.upper() if short != 'clean' else short}"] = [
                _pm(m, s, True) for m, s in zip(table[f"{model}_{short}"], table[f"{model}_{short}_std"])]
    cols["time (s)"] = [f"{t:.0f}" if math.isfinite(t) else "-" for t in table["train_time_s"]]
    measure = "/".join(sorted({m for m in table["memory_measure"] if m}))
    cols[f"peak memory (MiB, {measure or 'not recorded'})"] = [
        f"{v:.0f}" if math.isfinite(v) else "-" for v in table["peak_memory_mib"]]
    cols["collapsed"] = list(table["collapsed"])
    cols["at chance"] = list(table["at_chance"])
    for col, title in _BENCH_COLUMNS.items():
        if col in table:
            cols[title] = [f"{v:.1f}" if isinstance(v, float) and math.isfinite(v) else "-" for v in table[col]]
    return pd.DataFrame(cols)


#: the benchmark's published numbers added to the table (CIFAR-10 at 8/255): column -> heading
_BENCH_COLUMNS = {"benchmark_clean": "FastAT Benchmark (published): clean",
                  "benchmark_pgd50": "FastAT Benchmark (published): PGD-50",
                  "benchmark_aa": "FastAT Benchmark (published): AA"}


def with_benchmark(table: pd.DataFrame, bench: pd.DataFrame) -> pd.DataFrame:
    """``table`` with the benchmark's published clean, PGD-50 and AutoAttack accuracy (percent) of
    each method's benchmark entry (NaN where it has none), labelled as the benchmark's."""
    if not len(bench):
        return table
    pub = bench.set_index("method")
    out = table.copy()
    for col, src in (("benchmark_clean", "clean_acc"), ("benchmark_pgd50", "pgd50_acc"), ("benchmark_aa", "aa_acc")):
        out[col] = [float(pub.loc[m, src]) if m in pub.index else math.nan for m in out["method"]]
    return out


def export(table: pd.DataFrame, fmt: str) -> str:
    """The leaderboard as ``csv`` (numbers: mean and std columns), ``markdown`` or ``latex`` (a tabular)."""
    if fmt == "csv":
        return table.to_csv(index=False, float_format="%.4f")
    from tabulate import tabulate  # Markdown and LaTeX tables

    shown = display_table(table)
    if fmt == "markdown":
        return tabulate(shown, headers="keys", tablefmt="github", showindex=False) + "\n"
    if fmt == "latex":
        return tabulate(shown.map(lambda v: _latex_text_safe(v).replace("±", "$\\pm$")),
                        headers=[_latex_text_safe(c) for c in shown.columns], tablefmt="latex_raw",
                        showindex=False) + "\n"
    raise ValueError(f"unknown table format {fmt!r}")


def _latex_text_safe(text: Any) -> str:
    """Escape what LaTeX reads as markup in a cell, leaving the ``$\\pm$`` we put there."""
    s = str(text)
    for ch in ("&", "%", "#", "_"):
        s = s.replace(ch, "\\" + ch)
    return s


def _draw(table: pd.DataFrame, bench: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    labels = [method_title(m) + (f" @ {e}" if table["eps"].nunique() > 1 else "")
              + (f"  [collapsed {c}]" if c and not c.startswith("0/") else "")
              + (f"  [at chance {a}]" if not a.startswith("0/") else "")
              for m, e, c, a in zip(table["method"], table["eps"], table["collapsed"], table["at_chance"])]
    y = np.arange(len(table))[::-1]
    colors = {"raw": "tab:gray", "averaged": "tab:blue", "best": "tab:green"}
    h = 0.8 / len(MODELS)
    with style():
        fig, axes = plt.subplots(1, 2, figsize=(11, 0.42 * len(table) + 1.8), sharey=True)
        for ax, short, title in ((axes[0], "pgd", "(a) robust accuracy (final PGD)"),
                                 (axes[1], "clean", "(b) clean accuracy")):
            for i, model in enumerate(MODELS):
                mean, std = 100 * table[f"{model}_{short}"], 100 * table[f"{model}_{short}_std"]
                ax.barh(y + (1 - i) * h, mean.fillna(0), height=h, xerr=std.fillna(0), color=colors[model],
                        alpha=0.85, error_kw={"lw": 0.8, "capsize": 1.5},
                        label={"raw": "raw (last epoch)", "averaged": "weight average",
                               "best": "best checkpoint"}[model])
            if len(bench):
                col = "pgd50_acc" if short == "pgd" else "clean_acc"
                where = {m: yy for m, yy in zip(table["method"], y)}
                ax.scatter(bench[col], [where[m] for m in bench["method"]], marker="D", s=22, color="black",
                           zorder=5, label="FastAT Benchmark (published, CIFAR-10)")
            ax.set_xlim(0, 100)
            ax.set_xlabel("accuracy (%), mean +/- std over seeds")
            ax.set_title(title)
        axes[0].set_yticks(y)
        axes[0].set_yticklabels(labels, fontsize=7)
        axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        return save(fig, out_dir, "leaderboard")


def leaderboard(runs: Sequence[Run], out_dir: Path) -> Figure:
    """The leaderboard: clean and PGD accuracy of the raw, averaged and best models per method."""
    table = leaderboard_table(runs)
    bench = benchmark_beside(table) if _is_fastat_setting(runs) else pd.DataFrame()
    files = _draw(table, bench, out_dir)
    table = with_benchmark(table, bench)
    for fmt, suffix in TABLE_FORMATS.items():
        path = out_dir / f"leaderboard.{suffix}"
        atomic.write_text(path, export(table, fmt))
        files[suffix] = path
    notes = [f"{method_title(m)} at eps {e} collapsed in {c} seeds (the sweep's collapse label)"
             for m, e, c in zip(table["method"], table["eps"], table["collapsed"]) if c and not c.startswith("0/")]
    notes += [f"{method_title(m)} at eps {e} ended at chance clean accuracy in {a} seeds (a constant classifier: "
              "training diverged; not counted as CO)"
              for m, e, a in zip(table["method"], table["eps"], table["at_chance"]) if not a.startswith("0/")]
    if not table["memory_measure"].str.contains("cuda").any():
        notes.append("peak memory here is the process's max RSS on the CPU (not GPU memory)")
    return Figure(
        "leaderboard", "Leaderboard (FastAT Benchmark protocol)",
        "Per method: final clean and PGD accuracy (the trainer's PGD-k-r, PGD-50-10 by default) of the three "
        "models the protocol yields: the raw model after the last epoch (run.json final), the weight average "
        "(final.averaged, --weight-averaging) and the checkpoint chosen by PGD-10 on the held-out images "
        "(final.best, --val-split with --select best); bars are the mean over seeds, whiskers +/- one standard "
        "deviation; sorted by the best checkpoint's PGD accuracy, the benchmark's ranking. A method marked "
        "'collapsed k/n' had catastrophic overfitting in k of its n seeds by the sweep's collapse label; "
        "'at chance k/n' ended k seeds as a constant classifier (clean accuracy within 5 points of chance). The "
        "table adds AutoAttack where evaluated, training time and peak memory; it is also written as CSV, "
        "Markdown and LaTeX (leaderboard.csv, .md, .tex; codiag report SWEEP --table latex)."
        + (" Black diamonds: the FastAT Benchmark's published CIFAR-10 numbers (PGD-50, clean) of the same "
           "method, from its own runs (ResNet-18), set beside ours, not ours." if len(bench) else ""),
        "FastAT Benchmark (Pan & Yao 2026), results table", files, table=display_table(table),
        paper=bench if len(bench) else None, paper_source=SOURCE if len(bench) else "", notes=notes)
