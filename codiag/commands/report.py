"""``codiag report RUN_DIR [RUN_DIR ...] [-o OUT]``: a static HTML report from recorded runs.

Reads only run directories (``codiag.runs.load_run``), never a live model. Writes
``OUT/index.html`` with PNG and SVG figures under ``OUT/figures/`` and the summary
table as ``OUT/summary.csv``. A missing or empty run directory is one clear line
(exit 2); a half-written run gives a partial report and a warning.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from codiag import reports

from ..errors import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write an HTML report with the papers' figures from run directories",
                       description="Turn recorded run directories into a static HTML report: training "
                       "curves and every diagnostic figure the runs recorded, the same curves overlaid "
                       "by method, a summary table (HTML and CSV), and GradAlign's analytic figures. "
                       "A folder that holds run directories is expanded one level.")
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="run directories written by codiag")
    p.add_argument("-o", "--out", default=None,
                   help="output folder (default: RUN_DIR/report for one run, ./codiag-report for several)")
    p.add_argument("--figures", default=None, metavar="KEY[,KEY...]",
                   help="draw only these figures (see --list-figures)")
    p.add_argument("--no-analytic", action="store_true", help="leave out the analytic figures (Lemma 1, 2)")
    p.add_argument("--title", default="codiag report", help="page title")
    p.add_argument("--list-figures", action="store_true", help="list figure keys and exit")
    p.add_argument("--table", choices=("csv", "markdown", "latex"), default=None,
                   help="for a sweep directory: print the leaderboard in this format (it is written as "
                   "leaderboard.csv, .md and .tex beside the figure either way)")
    p.set_defaults(func=run)


def parse_figures(text: str | None) -> set[str] | None:
    if text is None:
        return None
    keys = {k.strip() for k in text.split(",") if k.strip()}
    unknown = sorted(keys - set(reports.ALL_FIGURES))
    if unknown:
        raise UsageError(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(reports.ALL_FIGURES)}")
    return keys


def list_figures() -> None:
    groups = [("per run", reports.RUN_BUILDERS), ("across runs", {k: v[0] for k, v in reports.MULTI_BUILDERS.items()}),
              ("sweep (a codiag sweep directory)", reports.SWEEP_BUILDERS), ("analytic", reports.ANALYTIC_BUILDERS)]
    for title, builders in groups:
        print(f"{title}:")
        for key, fn in builders.items():
            doc = (fn.__doc__ or "").strip().split("\n")[0]
            probes = sorted({out.probe for need in getattr(fn, "needs", ())
                             for out in (need if isinstance(need, tuple) else (need,))})
            print(f"  {key:24s} {doc}" + (f" [probes: {', '.join(probes)}]" if probes else ""))


def run(args: argparse.Namespace) -> int:
    if args.list_figures:
        list_figures()
        return 0
    if not args.runs:
        raise UsageError("name at least one RUN_DIR (or --list-figures)")
    from codiag.reports.build import build, is_sweep  # here: it loads the plotting libraries (seconds)

    figures = parse_figures(args.figures)
    if args.table:
        if not is_sweep(args.runs):
            raise UsageError("--table needs one sweep directory (codiag sweep or codiag reproduce wrote sweep.json)")
        if figures is not None:
            figures.add("leaderboard")
    out = Path(args.out) if args.out else reports.default_out(args.runs)
    report = build(args.runs, out, figures=figures, analytic=not args.no_analytic, title=args.title,
                   echo=True)
    drawn = sum(len(v) for v in report.figures.values())
    for anchor, missing in report.missing.items():
        if missing and anchor not in ("summary", "comparison", "analytic"):
            print(f"note: {anchor}: not drawn (the page says why): {', '.join(k for k, _ in missing)}",
                  file=sys.stderr)
    print(f"report: {report.page} ({drawn} figures)")
    if report.summary_csv:
        print(f"summary: {report.summary_csv}")
    return print_table(report, args.table) if args.table else 0


def print_table(report, fmt: str) -> int:
    """Print the leaderboard drawn into ``report`` in ``fmt`` (1 when it was not drawn: the page says why)."""
    from codiag.reports.leaderboard import TABLE_FORMATS

    figure = next((f for figs in report.figures.values() for f in figs if f.key == "leaderboard"), None)
    if figure is None:
        why = next((r for items in report.missing.values() for k, r in items if k == "leaderboard"), "not drawn")
        print(f"error: no leaderboard table: {why}", file=sys.stderr)
        return 1
    path = figure.files[TABLE_FORMATS[fmt]]
    print(f"leaderboard ({fmt}): {path}")
    print(path.read_text(), end="")
    return 0
