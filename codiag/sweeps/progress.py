"""What a sweep prints while its runs train, and the results table at its end.

Progress is read from the run directories, the one place every executor writes to (worker
processes, Ray tasks on other nodes of a shared file system): a thread of the sweep command
looks at the runs in training every few seconds and prints a line per run whose epoch or alarm
changed: its epoch, whether the online CO alarm fired (and at which epoch), and an estimate of
the time it has left from the pace of its epochs so far. Reading never writes, and a run
directory that is half written is simply read again at the next look.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

from .grid import Cell

_TAIL = 4096


def _last_epoch(metrics: Path) -> int | None:
    """The epoch of the last complete row of metrics.csv (read from its end: it can be large)."""
    try:
        with open(metrics, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - _TAIL))
            lines = f.read().decode("utf-8", "replace").split("\n")
    except OSError:
        return None
    for line in reversed(lines[:-1]):   # the part after the last newline may be half written
        fields = line.split(",")
        if len(fields) >= 2 and fields[1].strip().isdigit():
            return int(fields[1])
    return None


def _events(events: Path) -> tuple[int | None, int, int]:
    """(the first CO alarm's epoch, the guard's roll-backs, the epochs they send training back)."""
    try:
        lines = events.read_text(errors="replace").splitlines()
    except OSError:
        return None, 0, 0
    alarm, rollbacks, retrained = None, 0, 0
    for line in lines:
        if '"co_alarm"' not in line and '"rollback"' not in line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        if event.get("kind") == "co_alarm" and isinstance(event.get("epoch"), int) and alarm is None:
            alarm = event["epoch"]
        elif (event.get("kind") == "rollback" and "mitigation" in event       # the guard's, not ZeroGrad's
              and isinstance(event.get("epoch"), int) and isinstance(event.get("restored_epoch"), int)):
            rollbacks += 1
            retrained += max(0, event["epoch"] - event["restored_epoch"])
    return alarm, rollbacks, retrained


def run_progress(run_dir: Path, epochs: int) -> dict[str, Any] | None:
    """A training run's progress: {epoch, epochs, alarm_epoch, rollbacks, eta_s}, or None when it is not
    training. Epochs count training as it happened: a guard's roll-back adds the epochs it retrains."""
    try:
        meta = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("status") != "running":
        return None
    epoch = _last_epoch(run_dir / "metrics.csv") or 0
    alarm, rollbacks, retrained = _events(run_dir / "events.jsonl")
    epochs += retrained
    eta = math.nan
    try:
        started = _dt.datetime.fromisoformat(str(meta["start_time"]))
        elapsed = (_dt.datetime.now(_dt.timezone.utc) - started).total_seconds()
        if epoch > 0:
            eta = max(0.0, elapsed / epoch * (epochs - epoch))
    except (KeyError, TypeError, ValueError):
        pass
    return {"epoch": epoch, "epochs": epochs, "alarm_epoch": alarm, "rollbacks": rollbacks, "eta_s": eta}


def progress_line(name: str, p: dict[str, Any]) -> str:
    """``NAME: epoch 2/5, CO alarm at epoch 2, about 40 s left`` (``, 1 roll-back`` after the alarm
    where the guard acted)."""
    alarm = "no CO alarm" if p["alarm_epoch"] is None else f"CO alarm at epoch {p['alarm_epoch']}"
    if p.get("rollbacks"):
        alarm += f", {p['rollbacks']} roll-back{'s' if p['rollbacks'] > 1 else ''}"
    eta = "" if not math.isfinite(p["eta_s"]) else f", about {p['eta_s']:.0f} s left"
    return f"  {name}: epoch {p['epoch']}/{p['epochs']}, {alarm}{eta}"


class ProgressPrinter:
    """A daemon thread printing :func:`progress_line` for each training run of ``cells`` whose
    epoch or alarm changed, every ``every_s`` seconds, until :meth:`stop`."""

    def __init__(self, root: Path, cells: Sequence[Cell], epochs: int, say: Callable[[str], None],
                 every_s: float) -> None:
        self.root, self.cells, self.epochs, self.say, self.every_s = root, list(cells), epochs, say, every_s
        self._seen: dict[str, tuple[int, int | None]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="codiag-sweep-progress", daemon=True)

    def __enter__(self) -> "ProgressPrinter":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.look()

    def look(self) -> None:
        """Print the runs whose epoch or alarm changed since the last look."""
        for c in self.cells:
            p = run_progress(self.root / c.name, self.epochs)
            if p is None:
                continue
            state = (p["epoch"], p["alarm_epoch"])
            if self._seen.get(c.name) != state:
                self._seen[c.name] = state
                self.say(progress_line(c.name, p))


def results_table(run_dirs: Sequence[Path]) -> str:
    """Robust accuracy per method and eps over the finished runs (mean +/- std over seeds) and the
    CO rate (share of seeds the collapse label calls collapsed; share with an online alarm), as
    text; "" when no finished run has a final evaluation."""
    from ..reports.sweep_table import sweep_table  # pandas and the report code: at the end only
    from ..runs import load_run

    runs = []
    for d in run_dirs:
        try:
            run = load_run(d)
        except Exception:  # noqa: BLE001 - an unreadable run is left out of the table, not fatal
            continue
        if run.status == "finished":
            runs.append(run)
    if not runs:
        return ""
    df = sweep_table(runs)
    df = df[df["pgd_acc"].notna()]
    if df.empty:
        return ""
    rows = []
    for (method, _eps), g in df.groupby(["method", "eps"], sort=False):
        labelled = g["collapsed"].dropna().astype(float)
        rows.append({"method": method, "eps": g["eps_label"].iloc[0], "seeds": g["seed"].nunique(),
                     "clean": _pm(g["clean_acc"]), "PGD": _pm(g["pgd_acc"]),
                     "CO rate": f"{labelled.mean():.2f}" if len(labelled) else "-",
                     "alarm rate": f"{g['alarm'].astype(float).mean():.2f}"})
    import pandas as pd

    attack = next((a for a in df["pgd_attack"] if a), "PGD")
    text = pd.DataFrame(rows).to_string(index=False)
    return (f"results (final {attack} accuracy, mean +/- std over seeds; CO rate: collapse label, "
            f"alarm rate: online CO alarm):\n{text}")


def _pm(values: Any) -> str:
    v = [float(x) for x in values if isinstance(x, (int, float)) and math.isfinite(float(x))]
    if not v:
        return "-"
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / len(v))
    return f"{mean:.3f} +/- {std:.3f}"
