"""Turn run directories into the report: figures per run, comparisons across runs,
analytic figures, the summary table (HTML + CSV) and ``index.html``."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from codiag.errors import UsageError
from codiag.runs import Run, load_run

from .base import Figure, MissingData, NotApplicable, run_label, slug
from .figures import ANALYTIC_BUILDERS, MULTI_BUILDERS, RUN_BUILDERS, SWEEP_BUILDERS
from .html import Section, esc, table_html, write_page
from .summary import write_summary
from .sweep_table import sweep_table


@dataclass
class Report:
    """What was written: the page, the summary CSV, the figures drawn, and the warnings."""

    page: Path
    summary_csv: Path | None
    figures: dict[str, list[Figure]] = field(default_factory=dict)   # section anchor -> figures
    missing: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _debug() -> bool:
    return os.environ.get("CODIAG_DEBUG", "") not in ("", "0")


def _draw(key: str, fn: Callable[[], Figure], sec: Section, warnings: list[str], where: str) -> None:
    try:
        sec.figures.append(fn())
    except NotApplicable:
        return
    except MissingData as e:
        sec.missing.append((key, str(e)))
    except Exception as e:  # one broken figure must not lose the whole report
        if _debug():
            raise
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        sec.missing.append((key, f"could not be drawn ({msg})"))
        warnings.append(f"{where}: figure {key} could not be drawn ({msg})")


def load_runs(paths: Iterable[str | os.PathLike], warnings: list[str]) -> list[Run]:
    """Load every run directory that can be loaded (a folder of runs expands one level);
    the others become warnings. UsageError (one line) when none loads."""
    runs: list[Run] = []
    errors: list[str] = []
    seen: set[str] = set()   # one run named twice (``run run/``, a sweep and one of its runs) is drawn once
    for p in paths:
        p = Path(p)
        kids = sorted(q for q in p.iterdir() if (q / "run.json").exists()) \
            if p.is_dir() and not (p / "run.json").exists() else []
        for q in kids or [p]:
            if os.path.realpath(q) in seen:
                continue
            seen.add(os.path.realpath(q))
            try:
                run = load_run(q)
                _ = run.metrics, run.events   # parse now, so a broken file is reported here
            except UsageError as e:
                errors.append(str(e))
                continue
            except Exception as e:
                errors.append(f"unreadable run directory {q}: {type(e).__name__}: {e}".splitlines()[0])
                continue
            runs.append(run)
    if not runs and errors:
        raise UsageError(errors[0] if len(errors) == 1 else f"{errors[0]} (and {len(errors) - 1} more)")
    warnings.extend(f"skipped: {e}" for e in errors)
    return runs


def _run_warnings(run: Run) -> list[str]:
    out = []
    if run.status != "finished":
        out.append(f"run {run.path} is not finished (status {run.status!r}); the report shows what "
                   "was recorded so far")
    if run.metrics.empty:
        out.append(f"run {run.path} has no metric rows yet (metrics.csv missing or empty)")
    errors = run.meta.get("probe_errors") or {}
    firsts = {e.get("probe"): e for e in reversed(run.events_of("probe_error"))}
    for probe, count in sorted(errors.items()):
        first = firsts.get(probe, {})
        out.append(f"run {run.path}: probe {probe} failed {count} time{'s' if count != 1 else ''}"
                   + (f" (first at step {first.get('step')}: {first.get('error')})" if first else ""))
    firsts = {e.get("sink"): e for e in reversed(run.events_of("sink_error"))}
    for sink, count in sorted((run.meta.get("sink_errors") or {}).items()):
        first = firsts.get(sink, {})
        out.append(f"run {run.path}: sink {sink} failed {count} time{'s' if count != 1 else ''}"
                   + (f" (first: {first.get('error')})" if first else "") + "; the run directory is complete")
    bad = run.events_of("nonfinite_loss")
    if bad:
        step = min(int(e.get("step", 0)) for e in bad)
        keys = ", ".join(sorted({f"{e.get('probe')}/{e.get('key')}" for e in bad}))
        out.append(f"run {run.path}: this run diverged at step {step} (non-finite {keys})")
    return out


def _summary_sections(runs: Sequence[Run], out: Path, keep: Callable[[str], bool],
                      warnings: list[str]) -> tuple[list[Section], Path]:
    """The summary table and the figures drawn across runs."""
    table, summary_csv = write_summary(runs, out)
    evaluated = any(r.meta.get("final") or (r.metrics["probe"] == "eval").any() for r in runs)
    source = ("the final evaluation (PGD-k-r on the first n test points) where a run has one, else "
              "the last probe event (the probe PGD on the n probe points)" if evaluated else
              "those of the last probe event (the probe PGD on the n probe points; these runs have no "
              "final evaluation)")
    intro = (f'<p>One row per run; <a href="summary.csv">summary.csv</a>. Accuracies are {source}; '
             "CO epoch is where the detector found the collapse.</p>" +
             table_html(table, "summary (ours)", "ours"))
    sections = [Section("summary", "Summary", intro=intro)]
    comp = Section("comparison", "Across runs")
    for key, (fn, min_runs) in MULTI_BUILDERS.items():
        if keep(key) and len(runs) >= min_runs:
            _draw(key, lambda fn=fn: fn(runs, out / "figures" / "comparison"), comp, warnings, "comparison")
    if comp.figures or comp.missing:
        sections.append(comp)
    return sections, summary_csv


def _run_sections(runs: Sequence[Run], out: Path, keep: Callable[[str], bool], warnings: list[str],
                  per_run: Iterable[str] | None) -> list[Section]:
    """One section per run with every per-run figure it allows."""
    sections: list[Section] = []
    used: set[str] = set()
    sectioned = set(per_run) if per_run is not None else None
    for run in runs:
        if sectioned is not None and run.name not in sectioned:
            continue
        warnings.extend(_run_warnings(run))
        anchor = slug(run.name)
        while anchor in used or anchor in ("summary", "comparison", "analytic"):
            anchor += "_"
        used.add(anchor)
        intro = f'<p class="note">{esc(run.path)} · status {esc(run.status)}</p>'
        stand_in = (run.config.get("monitor") or {}).get("probe_stand_in")
        if stand_in:
            intro += ('<p class="warn">Stand-in perturbation: the probes of the method\'s perturbation '
                      "(strength gap, perturbation change, sign agreement, perturbation norm) do not see "
                      f"the one it trains with: {esc(stand_in)}.</p>")
        sec = Section(anchor, f"Run {run.name} ({run_label(run)})", config=run.config, intro=intro)
        for key, fn in RUN_BUILDERS.items():
            if keep(key):
                _draw(key, lambda fn=fn, run=run, anchor=anchor: fn(run, out / "figures" / anchor), sec,
                      warnings, f"run {run.name}")
        sections.append(sec)
    return sections


def is_sweep(run_dirs: Sequence[str | os.PathLike]) -> bool:
    """Whether the report is of one sweep directory (``codiag sweep`` wrote ``sweep.json``)."""
    return len(run_dirs) == 1 and (Path(run_dirs[0]) / "sweep.json").exists()


def _sweep_sections(runs: Sequence[Run], out: Path, keep: Callable[[str], bool],
                    warnings: list[str]) -> tuple[list[Section], Path | None]:
    """The sweep figures and ``sweep_summary.csv`` (one row per run: final accuracies, cost
    relative to FGSM, alarm, collapse label, outcome), with the detector scorecard."""
    sec = Section("sweep", "Eps sweep")
    for key, fn in SWEEP_BUILDERS.items():
        if keep(key):
            _draw(key, lambda fn=fn: fn(runs, out / "figures" / "sweep"), sec, warnings, "sweep")
    try:
        table = sweep_table(runs)
    except MissingData:
        return [sec], None     # no table, so no word about it
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sweep_summary.csv"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    table.to_csv(tmp, index=False, float_format="%.4f")
    os.replace(tmp, path)
    sec.intro = ('<p>One row per run in <a href="sweep_summary.csv">sweep_summary.csv</a>: final '
                 "accuracies, training time relative to FGSM at the same eps, gradient evaluations per "
                 "training step, the online CO alarm and the collapse label (see the scorecard's caption); the "
                 "guard's roll-backs, runs it saved, the best checkpoint's accuracies and the first early "
                 "warning's epoch.</p>")
    return [sec], path


def _analytic_section(out: Path, keep: Callable[[str], bool], warnings: list[str]) -> Section:
    sec = Section("analytic", "Analytic figures (no run needed)",
                  intro='<p class="note">Computed from the lemmas by Monte Carlo; they do not '
                        "depend on the runs above.</p>")
    for key, fn in ANALYTIC_BUILDERS.items():
        if keep(key):
            _draw(key, lambda fn=fn: fn(out / "figures" / "analytic"), sec, warnings, "analytic")
    return sec


def report_dir(out: Path) -> Path:
    """``out``, checked and created: a new or empty directory or a codiag report, with no symbolic
    link inside that leads out of it (every file is then written by temp-and-rename, which
    replaces a link at the target instead of writing through it). UsageError otherwise."""
    if out.is_symlink():
        raise UsageError(f"refusing to write the report into {out}: it is a symbolic link")
    if out.exists() and not out.is_dir():
        raise UsageError(f"the report folder {out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()):
        page = out / "index.html"
        ours = page.is_file() and not page.is_symlink() and "codiag" in page.read_text(errors="replace")[:2000]
        if not ours and not (out.parent / "run.json").is_file():
            raise UsageError(f"{out} holds files that are not a codiag report: choose another folder (-o)")
        root = os.path.realpath(out)
        for folder, dirs, files in os.walk(out):
            for name in dirs + files:
                p = os.path.join(folder, name)
                target = os.path.realpath(p)
                if os.path.islink(p) and os.path.commonpath([root, target]) != root:
                    raise UsageError(f"refusing to write the report: {p} is a symbolic link leading "
                                     f"outside {out}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the report folder {out}: {e.strerror}") from None
    return out


def build(run_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
          figures: Iterable[str] | None = None, analytic: bool = True, title: str = "codiag report",
          echo: bool = False, runs: Sequence[Run] | None = None,
          per_run: Iterable[str] | None = None) -> Report:
    """Draw every figure the runs allow (or only ``figures``, a set of builder keys) into
    ``out_dir``; ``runs`` gives already loaded runs instead of ``run_dirs``; ``per_run``
    limits the per-run sections to the runs of these names. With ``echo``, warnings are
    printed to stderr. A sweep directory (``codiag sweep``) gets the sweep figures and
    ``sweep_summary.csv`` instead of the across-run overlays, and no per-run sections unless
    ``per_run`` names some."""
    warnings: list[str] = []
    sweep = is_sweep(run_dirs) if runs is None else False
    if runs is None:
        runs = load_runs(run_dirs, warnings)
    out = report_dir(Path(out_dir))
    wanted = set(figures) if figures is not None else None

    def keep(key: str) -> bool:
        return wanted is None or key in wanted

    sections: list[Section] = []
    summary_csv = None
    if sweep and runs:
        sections, summary_csv = _summary_sections(runs, out, lambda k: False, warnings)
        sweep_secs, _ = _sweep_sections(runs, out, keep, warnings)
        sections[1:1] = sweep_secs
        per_run = () if per_run is None else per_run
    elif runs:
        sections, summary_csv = _summary_sections(runs, out, keep, warnings)
    sections += _run_sections(runs, out, keep, warnings, per_run)
    if analytic and not sweep:
        sec = _analytic_section(out, keep, warnings)
        if sec.figures or sec.missing:
            sections.append(sec)
    if not sections:
        raise UsageError("nothing to report: no run loaded and no analytic figure asked for")
    page = write_page(out, sections, warnings, title=title)
    if echo:
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
    return Report(page=page, summary_csv=summary_csv,
                  figures={s.anchor: s.figures for s in sections},
                  missing={s.anchor: s.missing for s in sections}, warnings=warnings)
