"""What every figure builder shares: the Figure record, saving PNG + SVG, the style,
the training-progress axis and the catastrophic-overfitting (CO) point of a run.

A *builder* is a function ``build(run, out_dir) -> Figure`` (one run) or
``build(runs, out_dir) -> Figure`` (several runs). It reads only the run
directory (``codiag.runs.Run``), never a live model. It declares the probe
outputs it reads with :func:`needs` (the report checks them first and names
the probe to switch on), and raises :class:`MissingData` with a one-line
reason for anything else it lacks; the report then lists the figure as "not
drawn" with that reason.
"""
from __future__ import annotations

import contextlib
import functools
import math
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from codiag import atomic
from codiag.data import dataset_spec
from codiag.detector import detect_co
from codiag.errors import UsageError
from codiag.probes.outputs import Array, Key, Output
from codiag.probes.robust_acc import RobustAcc
from codiag.runs import Run  # noqa: E402

#: Colours used consistently: ours vs the paper's reference values.
CO_COLOR = "0.35"
#: the guard's roll-backs (and ZeroGrad's), its ``collapsed`` and the early warnings: (colour, line style)
MARK_STYLES = {"rollback": ("#2a9d8f", ":"), "collapsed": ("#9b2226", ":"), "warning": ("#e9a23b", "-.")}
BLUE, RED = "tab:blue", "tab:red"


class MissingData(Exception):
    """The run does not hold what a figure needs (the message says what)."""


class NotApplicable(MissingData):
    """The figure cannot exist for this run whatever was switched on (a method without internal
    state has no state to draw): the page leaves it out without a note."""


@dataclass
class Figure:
    """One drawn figure: its files, caption, the paper figure it redraws, and numbers.

    ``table`` holds numbers shown beside the figure (ours), ``paper`` the paper's
    numbers for the same quantities, always labelled as the paper's.
    """

    key: str
    title: str
    caption: str
    redraws: str
    files: dict[str, Path]
    table: pd.DataFrame | None = None
    paper: pd.DataFrame | None = None
    paper_source: str = ""
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # captions are written as indented triple-quoted text: one line of prose on the page
        self.caption = " ".join(self.caption.split())


Builder = Callable[..., Figure]


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Seaborn's paper style, without touching global matplotlib state."""
    with plt.rc_context({"svg.fonttype": "path", "figure.dpi": 100, "savefig.dpi": 110,
                         "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
                         "xtick.labelsize": 8, "ytick.labelsize": 8}):
        with sns.axes_style("whitegrid"):
            yield


def save(fig: "plt.Figure", out_dir: Path, stem: str) -> dict[str, Path]:
    """Write ``stem.png`` and ``stem.svg`` under ``out_dir`` and close the figure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    if fig.get_layout_engine() is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                fig.tight_layout()
            except (ValueError, RuntimeError):
                pass
    for ext in ("png", "svg"):
        path = out_dir / f"{stem}.{ext}"
        with atomic.atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext)
        files[ext] = path
    plt.close(fig)
    return files


def slug(text: str) -> str:
    """A file-name-safe version of ``text``."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_.")
    return s or "run"


def fmt_eps(eps: Any) -> str:
    """0.2 for short decimals, 8/255 for other multiples of 1/255, else the number."""
    try:
        e = float(eps)
    except (TypeError, ValueError):
        return str(eps)
    if len(f"{e:g}") <= 5:
        return f"{e:g}"
    k = e * 255
    if abs(k - round(k)) < 1e-6 and round(k) > 0:
        return f"{int(round(k))}/255"
    return f"{e:g}"


#: the papers' names of the registered methods, for legends and axes (the tables keep registry names)
METHOD_TITLES = {
    "fgsm": "FGSM", "fgsm_rs": "FGSM-RS", "fgsm_reduced": "FGSM (reduced step)", "n_fgsm": "N-FGSM",
    "gradalign": "GradAlign", "zerograd": "ZeroGrad", "zerograd_rollback": "ZeroGrad (roll-back)",
    "multigrad": "MultiGrad", "pgd": "PGD", "pgd10": "PGD-10", "pgd2": "PGD-2", "atas": "ATAS", "atta": "ATTA",
    "apart": "APART", "apart_simple": "APART (simplified)", "elle": "ELLE", "elle_a": "ELLE-A", "aaer": "AAER",
    "fgsm_pgi": "FGSM-PGI", "gat": "GAT", "free": "Free-AT", "cure": "CURE", "grad_clip": "gradient clipping",
    "grad_penalty": "gradient penalty", "sora": "SORA", "nuat": "NuAT", "fgsm_mep": "FGSM-MEP",
    "fgsm_mep_cs": "FGSM-MEP-CS", "fgsm_rs_cs": "FGSM-RS-CS", "fgsm_uap": "FGSM-UAP", "fgsm_cuap": "FGSM-CUAP",
    "fgsm_fuap": "FGSM-FUAP", "liet": "LIET", "ssat": "SSAT", "fgsm_pco": "FGSM-PCO",
}


def readable_callable(name: str) -> str:
    """A recorded callable's name for people: ``main.<locals>.<lambda>`` -> ``lambda in main``,
    ``Trainer.fit.<locals>.attack`` -> ``Trainer.fit: attack`` (a page would show ``<lambda>`` as
    an unknown HTML tag, i.e. nothing)."""
    text = str(name)
    if "<lambda>" not in text and "<locals>" not in text:
        return text
    owner, _, own = text.rpartition(".<locals>.")
    if not _:
        owner, own = "", text
    owner = owner.replace(".<locals>.", ".")
    own = "lambda" if own == "<lambda>" else own.replace("<lambda>", "lambda")
    return f"{own} in {owner}" if owner and own == "lambda" else f"{owner}: {own}" if owner else own


def method_title(name: str) -> str:
    """The paper's name of a registered method, else the recorded name made readable."""
    return METHOD_TITLES.get(str(name), readable_callable(name))


def run_label(run: Run) -> str:
    """Short label: method, eps, seed."""
    c = run.config
    parts = [readable_callable(str(c.get("method", "?")))]
    if "eps" in c:
        parts.append(f"eps {fmt_eps(c['eps'])}")
    if "seed" in c:
        parts.append(f"seed {c['seed']}")
    return ", ".join(parts)


def method_label(run: Run) -> str:
    """Method name with its non-default hyper-parameters, e.g. ``fgsm_rs (step=2)``."""
    c = run.config
    args = c.get("method_args") or {}
    name = readable_callable(str(c.get("method", "?")))
    if args:
        name += " (" + ", ".join(f"{k}={v}" for k, v in sorted(args.items())) + ")"
    return name


# ---------------------------------------------------------------------------------------------
# Reading curves
# ---------------------------------------------------------------------------------------------
def steps_per_epoch(run: Run) -> int | None:
    """Optimizer steps per epoch from the recorded config (trainer runs), else None."""
    c = run.config
    n, b = c.get("train_size"), c.get("batch_size")
    if isinstance(n, int) and isinstance(b, int) and n > 0 and b > 0:
        return math.ceil(n / b)
    spe = c.get("steps_per_epoch") or run.meta.get("steps_per_epoch")
    return int(spe) if isinstance(spe, (int, float)) and spe > 0 else None


def progress(run: Run, df: pd.DataFrame) -> np.ndarray:
    """Training progress in epochs for rows with step/epoch columns (fractional when
    probes ran every N steps)."""
    spe = steps_per_epoch(run)
    if spe:
        return df["step"].to_numpy(dtype=float) / spe
    return df["epoch"].to_numpy(dtype=float)


def curve(run: Run, key: Key, **fields: Any) -> pd.DataFrame:
    """Columns step, epoch, x (progress in epochs), value of a declared key; last row per step."""
    df = run.scalar(key.probe, key.format(**fields))
    df = df.drop_duplicates("step", keep="last").reset_index(drop=True)
    df["x"] = progress(run, df)
    return df


def rows_of(run: Run, key: Key) -> pd.DataFrame:
    """The metrics rows of every concrete key a (pattern) declaration covers."""
    m = run.metrics
    sel = m[m["probe"] == key.probe]
    return sel[[key.parse(k) is not None for k in sel["key"].astype(str)]]


def recorded(run: Run, out: Output) -> bool:
    """Whether the run holds rows of a declared key, or snapshots of a declared array."""
    if isinstance(out, Key):
        return not rows_of(run, out).empty
    return any(out.parse(name) is not None for name in run.array_names())


Need = Output | tuple[Output, ...]


def needs(*outputs: Need) -> Callable[[Builder], Builder]:
    """Declare what a figure reads: each entry a probe's :class:`Key` or :class:`Array`, or a
    tuple of alternatives (any one will do). The figure raises :class:`MissingData` naming
    the probe to switch on when no run given holds a need; ``fn.needs`` lists them."""
    def mark(fn: Builder) -> Builder:
        @functools.wraps(fn)
        def checked(run_or_runs: Run | Sequence[Run], *args: Any, **kwargs: Any) -> Figure:
            runs = [run_or_runs] if isinstance(run_or_runs, Run) else list(run_or_runs)
            why = unmet(runs, outputs)
            if why:
                raise MissingData(why)
            return fn(run_or_runs, *args, **kwargs)

        checked.needs = outputs
        return checked
    return mark


def unmet(runs: Sequence[Run], outputs: Sequence[Need]) -> str | None:
    """Why a figure needing ``outputs`` cannot be drawn from ``runs`` (None: some run holds each)."""
    for need in outputs:
        alternatives = need if isinstance(need, tuple) else (need,)
        if not any(recorded(run, out) for run in runs for out in alternatives):
            what = " or ".join(f"'{out}'" for out in alternatives)
            probes = sorted({out.probe for out in alternatives})
            return (f"no {what} recorded: switch on the probe {' or '.join(probes)} "
                    f"(monitor probes=[..., {probes[0]!r}], or --probes)")
    return None


def need_array(run: Run, array: Array, **fields: Any) -> dict[int, np.ndarray]:
    """All snapshots of a declared array; MissingData if there are none."""
    arrays = run.arrays(array.format(**fields))
    if not arrays:
        raise MissingData(f"no '{array}' arrays recorded (probe {array.probe})")
    return arrays


def x_of_step(run: Run, step: int) -> float:
    """Progress (epochs) of an optimizer step."""
    spe = steps_per_epoch(run)
    if spe:
        return step / spe
    m = run.metrics
    rows = m[m["step"] == step]
    return float(rows["epoch"].iloc[0]) if len(rows) else float(step)


# ---------------------------------------------------------------------------------------------
# The CO point
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class COPoint:
    """Where catastrophic overfitting happened: the first probe event after the collapse."""

    step: int
    epoch: int
    x: float
    source: str          # "detector", "alarm" or "fallback"
    reason: str = ""
    #: (x, kind) of the run's ``rollback``, ``collapsed`` and ``warning`` events (:func:`event_marks`)
    marks: tuple[tuple[float, str], ...] = ()


def event_marks(run: Run) -> tuple[tuple[float, str], ...]:
    """Where the run rolled back, gave up (``collapsed``) or was warned, in epochs of progress."""
    return tuple((x_of_step(run, int(e["step"])), e["kind"]) for e in run.events
                 if e.get("kind") in MARK_STYLES and e.get("step") is not None)


def co_point(run: Run) -> COPoint | None:
    """The run's CO point: codiag.detector.detect_co on the metrics, else the first
    ``co_alarm`` event, else a simple fallback rule on PGD accuracy; with the run's
    roll-backs and warnings (:func:`event_marks`). A run the guard rolled back has its CO
    point at the alarm it acted on even where the metrics show no collapse (it recovered)."""
    point = _co_point(run)
    marks = event_marks(run)
    return replace(point, marks=marks) if point is not None and marks else point


def _co_point(run: Run) -> COPoint | None:
    m = run.metrics
    rolled_back = any(e.get("kind") == "rollback" for e in run.events)
    if len(m):
        try:
            co = detect_co(m)
        except Exception:  # a detector bug must not break the report: use the events
            co = False
        if co:
            return _co_from(run, co, "detector")
        if co is None and not rolled_back:
            return None
    alarms = run.events_of("co_alarm")
    if alarms:
        return _co_from(run, alarms[0], "alarm")
    return _fallback_co(run)


def _co_from(run: Run, record: dict[str, Any], source: str) -> COPoint:
    step = record.get("step")
    epoch = record.get("epoch")
    m = run.metrics
    if step is None and epoch is not None:
        rows = m[(m["epoch"] == int(epoch)) & (m["probe"] == RobustAcc.pgd_acc.probe)]
        step = int(rows["step"].min()) if len(rows) else 0
    if epoch is None and step is not None:
        rows = m[m["step"] == int(step)]
        epoch = int(rows["epoch"].iloc[0]) if len(rows) else 0
    step, epoch = int(step or 0), int(epoch or 0)
    return COPoint(step, epoch, x_of_step(run, step), source, str(record.get("reason", "")))


def _fallback_co(run: Run) -> COPoint | None:
    """First event whose PGD accuracy is below half the best so far and 0.1 lower
    (only used when the detector fails on the run's metrics)."""
    df = run.scalar(*RobustAcc.pgd_acc.pair).drop_duplicates("step", keep="last")
    best = -math.inf
    for row in df.itertuples():
        if best > 0 and row.value < 0.5 * best and row.value < best - 0.1:
            return COPoint(int(row.step), int(row.epoch), x_of_step(run, int(row.step)), "fallback",
                           "PGD accuracy fell below half its best")
        best = max(best, row.value)
    return None


def mark_co(ax: "plt.Axes", co: COPoint | None, label: bool = True,
            marks: Sequence[tuple[float, str]] | None = None) -> None:
    """A dashed vertical line at the CO point; dotted ones at roll-backs, dash-dotted at warnings.

    ``marks``: the run's (x, kind) marks (:func:`event_marks`), drawn whether or not the run has a
    CO point (a run warned but never collapsed shows its warning); None: those of ``co``."""
    if co is not None:
        ax.axvline(co.x, color=CO_COLOR, ls="--", lw=1, label="CO" if label else None)
    if marks is None:
        marks = () if co is None else co.marks
    seen: set[str] = set()
    for x, kind in marks:
        color, ls = MARK_STYLES[kind]
        ax.axvline(x, color=color, ls=ls, lw=1.2, label=kind if label and kind not in seen else None)
        seen.add(kind)


def before_after(df: pd.DataFrame, co: COPoint | None) -> tuple[pd.Series | None, pd.Series | None]:
    """The rows of a curve just before the CO event and at it (None when absent)."""
    if co is None or df.empty:
        return None, None
    before = df[df["step"] < co.step]
    after = df[df["step"] >= co.step]
    return (before.iloc[-1] if len(before) else None), (after.iloc[0] if len(after) else None)


def pick_snapshots(steps: Sequence[int], co: COPoint | None, k: int = 6) -> list[int]:
    """Up to ``k`` snapshot steps spread over training, always including the first, the
    last, and the ones just before and at the CO point."""
    steps = sorted(steps)
    if len(steps) <= k:
        return steps
    chosen = {steps[0], steps[-1]}
    if co is not None:
        before = [s for s in steps if s < co.step]
        after = [s for s in steps if s >= co.step]
        if before:
            chosen.add(before[-1])
        if after:
            chosen.add(after[0])
    idx = np.linspace(0, len(steps) - 1, k).round().astype(int)
    for i in idx:
        if len(chosen) >= k:
            break
        chosen.add(steps[i])
    return sorted(chosen)


def twin_adv_acc(ax: "plt.Axes", run: Run) -> None:
    """Test adversarial (PGD) accuracy on a right-hand axis, in red (ZeroGrad Fig. 1, 2)."""
    df = curve(run, RobustAcc.pgd_acc)
    if df.empty:
        return
    ax2 = ax.twinx()
    ax2.plot(df["x"], df["value"], color=RED, marker=".", lw=1.2, label="PGD accuracy")
    ax2.set_ylabel("test PGD accuracy", color=RED)
    ax2.tick_params(axis="y", colors=RED)
    ax2.grid(False)
    ax2.set_ylim(bottom=0)


def input_dim(run: Run) -> int | None:
    """Number of input coordinates d of the run's dataset."""
    name = run.config.get("dataset")
    try:
        spec = dataset_spec(name)
    except UsageError:
        return None
    return int(spec.channels * spec.size * spec.size)


def value_at(df: pd.DataFrame, x: float) -> pd.Series | None:
    """The row of a curve whose progress is closest to ``x`` epochs."""
    if df.empty:
        return None
    return df.iloc[int(np.argmin(np.abs(df["x"].to_numpy() - x)))]
