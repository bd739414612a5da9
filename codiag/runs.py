"""The run directory: the only channel between a training run and its reports.

Layout (docs/RUN_FORMAT.md)::

    run_dir/
      run.json        config, versions, device, seed, git commit, status, times
      metrics.csv     tidy rows: step, epoch, probe, key, value  (append-only)
      arrays/         NAME-STEPxxxxxxx.npy
      events.jsonl    CO alarms, roll-backs, non-finite losses, resumes
      checkpoints/    optional
      report/         written by ``codiag report``

Every write is append-and-flush or write-to-temp-then-rename (``codiag.atomic``),
so a run killed at any moment (SIGKILL included) still loads: the reader drops a
half-written last line and skips malformed rows with a warning. ``run.lock``
(``codiag.rundir``) refuses a second writer while the first is alive, in this
process as in any other; a directory that is not a codiag run is never written.
"""
from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import importlib.metadata
import io
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import threading
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import pandas as pd
import torch

from . import atomic
from .errors import Terminated, UsageError
from .rundir import (
    FORMAT_VERSION,
    RunLock,
    check_run_dir,
    classify,
    clear_run,
    drop_partial_line,
    read_meta,
    refuse_foreign,
)
from .version import __version__

METRIC_COLUMNS = ["step", "epoch", "probe", "key", "value"]
_ARRAY_RE = re.compile(r"^(?P<name>.+)-STEP(?P<step>\d{7,})\.npy$")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _git_commit() -> str | None:
    """The commit of the code that ran (codiag's checkout), if it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment_info() -> dict[str, Any]:
    """Package versions and machine facts recorded in run.json."""


    return {
        "codiag": __version__,
        "torch": torch.__version__,
        "torchvision": importlib.metadata.version("torchvision"),   # without importing it (seconds)
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "git_commit": _git_commit(),
    }


def to_jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


_RUNNING = '\n  "status": "running"'   # as json.dumps(indent=2) writes run.json's top-level status
_STATUS_ROOM = len('\n  "status": "interrupted"')


class RunWriter:
    """Writer side of a run directory.

    ``log`` accepts Python numbers or 0-d tensors on any device and only buffers
    them: tensors are moved to the host together at ``flush`` (one transfer per
    device), so logging inside a training step never synchronises with the GPU.

    Opening takes the directory's lock (``codiag.rundir``: one writer, refused
    directories that are not runs); ``resume`` appends to an existing run after
    cutting a half-written last line, ``overwrite`` deletes only codiag's files.
    While open, SIGTERM raises :class:`~codiag.errors.Terminated` (a
    KeyboardInterrupt) in the main thread, so the run ends "interrupted" with its
    ``run_end`` event rather than being killed with status "running".
    """

    def __init__(self, run_dir: str | os.PathLike, config: Mapping[str, Any] | None = None,
                 resume: bool = False, overwrite: bool = False) -> None:
        self.path = Path(run_dir)
        self._closed = True
        existed = os.path.lexists(self.path)   # (a too-long name is check_run_dir's to report)
        check_run_dir(self.path, resume, overwrite)
        self._lock = RunLock(self.path)
        self._rows: list[tuple[int, int, str, str, Any]] = []
        self._csv = self._events = None
        #: called with (kind, record) after each event is written (the monitor's trackers)
        self.observers: list[Callable[[str, dict[str, Any]], None]] = []
        meta_written, had_arrays = False, True
        self._holds_signals = False
        try:
            with _signals_held():   # a signal in the middle of the start is raised at its end
                # before the first file is written: a SIGTERM from here on ends the run "interrupted"
                self._holds_signals = _sigterm_raises(True)
                kind = classify(self.path)  # again, under the lock
                if kind == "foreign":
                    raise refuse_foreign(self.path)
                if kind == "run" and not (resume or overwrite):
                    raise UsageError(f"{self.path} already holds a run: choose another directory, "
                                     "or resume=True or overwrite=True")
                if overwrite and kind == "run":
                    clear_run(self.path)
                if kind == "run":   # under the lock: what a killed writer left half-written goes
                    for folder in (self.path, self.path / "checkpoints", self.path / "arrays"):
                        atomic.remove_stale_temps(folder)
                had_arrays = (self.path / "arrays").is_dir()
                (self.path / "arrays").mkdir(exist_ok=True)
                resuming = resume and kind == "run"
                if resuming:
                    self.meta = read_meta(self.path)
                    self.meta["status"] = "running"
                    self.meta.setdefault("resumes", []).append(_now())
                    for name in ("metrics.csv", "events.jsonl"):
                        drop_partial_line(self.path / name)
                else:
                    self.meta = {
                        "format_version": FORMAT_VERSION,
                        "run_id": uuid.uuid4().hex,   # a resume.pt names the run it belongs to
                        "config": to_jsonable(dict(config or {})),
                        "env": environment_info(),
                        "status": "running",
                        "start_time": _now(),
                        "end_time": None,
                    }
                meta_written = True   # first: a failure may come once run.json is renamed into place
                try:
                    self._write_meta()
                except OSError as e:   # a full disk: one line naming the file
                    raise OSError(e.errno, e.strerror, str(self.path / "run.json")) from None
                csv_path = self.path / "metrics.csv"
                new_csv = not csv_path.exists() or csv_path.stat().st_size == 0
                self._csv = open(csv_path, "a", newline="")
                if new_csv:
                    self._csv.write(",".join(METRIC_COLUMNS) + "\n")
                    self._csv.flush()
                self._events = open(self.path / "events.jsonl", "a")
                previous = {"previous_pid": self._lock.previous_pid} if resuming and self._lock.previous_pid else {}
                self.event("resume" if resuming else "run_start", **previous)
        except BaseException as e:
            status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            if self._csv is not None and self._events is not None:   # the run exists: close it as such
                self._closed = False
                self.close(status)
                raise
            with _signals_held(raise_after=False):   # the start's own error is the one to see
                self._abandon(status, meta_written, made=[p for p, had in ((self.path / "arrays", had_arrays),
                                                                           (self.path, existed)) if not had])
            raise
        self._closed = False

    def _release_signals(self) -> None:
        """Give back this writer's hold on the signal handlers, once (a writer closed by a
        finalizer, in whatever thread, must not release another writer's hold)."""
        if self._holds_signals:
            self._holds_signals = False
            _sigterm_raises(False)

    def _abandon(self, status: str, meta_written: bool, made: list[Path]) -> None:
        """Undo a start that failed before the run's files were open: a run.json that says
        "running" gets ``status``; with no run.json, the folders ``made`` here go again."""
        for f in (self._csv, self._events):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        if meta_written and (self.path / "run.json").exists():   # it says "running": not for long
            self.meta.update(status=status, end_time=_now())
            try:
                self._write_meta()
            except OSError:
                self._patch_status(status)
        self._lock.release()
        if not (self.path / "run.json").exists():   # no run was started: leave nothing new behind
            with contextlib.suppress(OSError):
                for folder in made:   # only if empty: never what another process put there since
                    folder.rmdir()
        self._release_signals()

    # -- writes -----------------------------------------------------------------------------
    def _write_meta(self) -> None:
        text = json.dumps(self.meta, indent=2, sort_keys=True)
        # "running" is written with room for any final status, which _patch_status may write in place
        text = text.replace(_RUNNING, _RUNNING.ljust(_STATUS_ROOM), 1)
        atomic.write_text(self.path / "run.json", text)

    def _patch_status(self, status: str) -> None:
        """Last resort when run.json cannot be rewritten (a full disk has no room for the new file):
        overwrite its status in place, in the room ``_write_meta`` left after "running", so that no
        run that ended stays "running"."""
        new = f'\n  "status": {json.dumps(status)}'.encode()
        with contextlib.suppress(OSError), open(self.path / "run.json", "r+b") as f:
            text = f.read()
            for old in (_RUNNING.ljust(_STATUS_ROOM).encode(), _RUNNING.encode()):   # the latter: older codiag
                at = text.find(old)
                if at >= 0 and len(new) <= len(old):
                    f.seek(at)
                    f.write(new.ljust(len(old)))   # JSON allows the trailing spaces
                    f.flush()
                    os.fsync(f.fileno())
                    return

    def update(self, **fields: Any) -> None:
        """Merge ``fields`` into run.json (write to temp, then rename)."""
        self.meta.update(to_jsonable(fields))
        self._write_meta()

    def log(self, step: int, epoch: int, probe: str, key: str, value: Any) -> None:
        """Buffer one metric row; ``value`` may be a number or a 0-d tensor on any device."""
        self._rows.append((int(step), int(epoch), probe, key, value))

    def log_many(self, step: int, epoch: int, probe: str, mapping: Mapping[str, Any]) -> None:
        for key, value in mapping.items():
            self.log(step, epoch, probe, key, value)

    def flush(self) -> None:
        """Append the buffered rows to metrics.csv and flush the file to the OS."""
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        values = host_values([r[4] for r in rows])
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        for (step, epoch, probe, key, _), value in zip(rows, values):
            w.writerow((step, epoch, probe, key, repr(float(value))))
        self._csv.write(buf.getvalue())
        self._csv.flush()

    def save_array(self, name: str, step: int, array: Any) -> Path:
        """Write ``arrays/NAME-STEPxxxxxxx.npy`` (temp file, then rename)."""
        if "/" in name or name.startswith("."):
            raise ValueError(f"bad array name {name!r}")
        if isinstance(array, torch.Tensor):
            array = array.detach().cpu().numpy()
        final = self.path / "arrays" / f"{name}-STEP{int(step):07d}.npy"
        buf = io.BytesIO()
        np.save(buf, np.asarray(array))
        atomic.write_bytes(final, buf.getvalue(), inside=self.path)
        return final

    def event(self, kind: str, **fields: Any) -> None:
        """Append one JSON line to events.jsonl and flush it."""
        record = {"kind": kind, "time": _now(), **to_jsonable(fields)}
        self._events.write(json.dumps(record) + "\n")
        self._events.flush()
        for observe in self.observers:
            observe(kind, record)

    def close(self, status: str = "finished") -> None:
        """Flush everything, record the status and end time, release the lock.

        The lock is released and the files closed whatever fails; a write error
        (a full disk) turns the status into "failed" and is raised only if the run
        was otherwise finishing (else the error already under way is the one to see).
        """
        if self._closed:
            return
        # a signal that lands while the run ends is raised once it has ended, and only if it was
        # finishing (an interruption or failure under way already stops the program)
        with _signals_held(raise_after=status == "finished" and sys.exc_info()[0] is None):
            self._close(status)

    def _close(self, status: str) -> None:
        self._closed = True
        error: BaseException | None = None
        try:
            try:
                self.flush()
                self.event("run_end", status=status)
            except OSError as e:
                error, status = e, "failed"
            self.meta["status"] = status
            self.meta["end_time"] = _now()
            try:
                self._write_meta()
            except OSError as e:
                error = error or e
                self._patch_status(status)
        finally:
            self._let_go()
        if error is not None and status in ("finished", "failed") and sys.exc_info()[0] is None:
            raise error

    def _let_go(self) -> None:
        """Close the files, release the lock and the signal handlers, whatever fails."""
        for f in (self._csv, self._events):
            with contextlib.suppress(OSError):
                f.close()
        self._lock.release()
        self._release_signals()

    def detach(self) -> None:
        """Leave the run as a killed writer leaves it (status "running", no ``run_end`` event, the
        buffered rows flushed) and give up this process's hold on it: its files, lock and signal
        handlers. For synthetic runs that stand for a killed one."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
        finally:
            self._let_go()

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(exit_status(exc_type, exc))


def exit_status(exc_type: type[BaseException] | None, exc: BaseException | None) -> str:
    """The status of a run whose block ended with ``exc``: "finished", "interrupted" or "failed".

    ``sys.exit(0)`` (or ``sys.exit()``) inside the block is a normal end; another exit
    code, Ctrl-C (SIGINT) and SIGTERM are interruptions; any other exception a failure.
    """
    if exc_type is None:
        return "finished"
    if issubclass(exc_type, SystemExit):
        return "finished" if getattr(exc, "code", None) in (None, 0) else "interrupted"
    if issubclass(exc_type, KeyboardInterrupt):
        return "interrupted"
    return "failed"


_sigterm_users = 0
_previous_handlers: dict[int, Any] = {}


def open_writers() -> int:
    """How many run writers of this process hold the SIGTERM handler (opened in the main thread)."""
    return _sigterm_users


_held = 0                    # depth of _signals_held blocks open in the main thread
_held_signals: list[int] = []   # what arrived meanwhile


def _interruption(signum: int) -> KeyboardInterrupt:
    return Terminated(signum) if signum == signal.SIGTERM else KeyboardInterrupt()


def _raise_or_hold(signum: int, frame: Any) -> None:
    """Our SIGTERM and SIGINT handler: raise, unless a run is being opened or closed."""
    if _held:
        _held_signals.append(signum)
        return
    raise _interruption(signum)


@contextlib.contextmanager
def _signals_held(raise_after: bool = True) -> Iterator[None]:
    """Hold SIGTERM and SIGINT (where our handler has them) until the block ends, then raise the
    first that arrived, if ``raise_after`` and the block itself raised nothing.

    Opening or closing a run writes several files in turn; a signal raised between two of them
    would leave a run with no ``run_end`` event, or one still "running" (a SIGTERM sent the
    moment metrics.csv appeared did that). Handlers run only in the main thread, so only its
    blocks hold them.
    """
    global _held
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        arrived = [] if _held else _held_signals[:]
        if not _held:
            _held_signals.clear()
    if arrived and raise_after:
        raise _interruption(arrived[0])


def _sigterm_raises(on: bool) -> bool:
    """While any writer is open, SIGTERM raises Terminated and SIGINT KeyboardInterrupt.

    Only where nobody else handles them (Python's own SIGINT handler counts as nobody): a
    handler of the user's is left alone. SIGINT is taken also where the process inherited it
    ignored (a test suite or a training started as a background job), so Ctrl-C or ``kill -INT``
    ends the run "interrupted" whatever the shell did; both dispositions are put back at the
    last close.
    Handlers can be set only in the main thread: a writer opened elsewhere holds nothing
    (returns False), and a last close outside it leaves the handlers to the next close there.
    Returns whether this call took a hold, which the caller gives back once.
    """
    global _sigterm_users
    main = threading.current_thread() is threading.main_thread()
    if on:
        if not main:
            return False
        _sigterm_users += 1
        for signum in (signal.SIGTERM, signal.SIGINT):   # at every open: someone may have reset them since
            current = signal.getsignal(signum)
            if current in (signal.SIG_DFL, signal.SIG_IGN, signal.default_int_handler, None):
                _previous_handlers.setdefault(signum, current)
                signal.signal(signum, _raise_or_hold)
        return True
    if _sigterm_users > 0:
        _sigterm_users -= 1
    if _sigterm_users == 0 and main:
        for signum, previous in list(_previous_handlers.items()):
            if signal.getsignal(signum) is _raise_or_hold and previous is not None:
                signal.signal(signum, previous)
        _previous_handlers.clear()
    return False


def host_values(values: list[Any]) -> list[float]:
    """Convert numbers and 0-d tensors to floats with one host transfer per device."""
    out: list[Any] = list(values)
    by_device: dict[torch.device, list[int]] = {}
    for i, v in enumerate(values):
        if isinstance(v, torch.Tensor):
            by_device.setdefault(v.device, []).append(i)
        else:
            out[i] = float(v)
    for idx in by_device.values():
        stacked = torch.stack([values[i].detach().reshape(()).float() for i in idx]).cpu().tolist()
        for i, v in zip(idx, stacked):
            out[i] = float(v)
    return out


# ---------------------------------------------------------------------------------------------
# Reader side
# ---------------------------------------------------------------------------------------------
def _complete_lines(path: Path) -> list[str]:
    """The lines of a file that were written completely (a killed writer may leave half a line)."""
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")
    return lines[:-1]  # the part after the last newline is empty or half-written


class Run:
    """A recorded run, read from its directory only (reports never see a live model)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.meta: dict[str, Any] = read_meta(path)
        self.config: dict[str, Any] = self.meta.get("config", {})
        self._metrics: pd.DataFrame | None = None
        self._events: list[dict[str, Any]] | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        return self.meta.get("status", "unknown")

    @property
    def metrics(self) -> pd.DataFrame:
        """Tidy metrics: columns step, epoch, probe, key, value.

        Malformed rows (a hand edit, a foreign writer) are skipped with one warning
        that names the file and the lines; the rest of the run stays readable.
        """
        if self._metrics is None:
            self._metrics = read_metrics(self.path / "metrics.csv")
        return self._metrics

    @property
    def events(self) -> list[dict[str, Any]]:
        if self._events is None:
            out = []
            for line in _complete_lines(self.path / "events.jsonl"):
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue
            self._events = out
        return self._events

    def scalar(self, probe: str, key: str) -> pd.DataFrame:
        """One curve: rows (step, epoch, value) sorted by step."""
        m = self.metrics
        sel = m[(m["probe"] == probe) & (m["key"] == key)]
        return sel[["step", "epoch", "value"]].sort_values("step").reset_index(drop=True)

    def has(self, probe: str, key: str | None = None) -> bool:
        m = self.metrics
        sel = m["probe"] == probe
        if key is not None:
            sel &= m["key"] == key
        return bool(sel.any())

    def array_names(self) -> list[str]:
        names = set()
        for f in (self.path / "arrays").glob("*.npy"):
            m = _ARRAY_RE.match(f.name)
            if m:
                names.add(m.group("name"))
        return sorted(names)

    def arrays(self, name: str) -> dict[int, np.ndarray]:
        """All snapshots of one array, keyed by the step they were recorded at."""
        out = {}
        for f in (self.path / "arrays").glob(f"{glob_escape(name)}-STEP*.npy"):
            m = _ARRAY_RE.match(f.name)
            if m and m.group("name") == name:
                out[int(m.group("step"))] = np.load(f, allow_pickle=False)
        return dict(sorted(out.items()))

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("kind") == kind]

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, status={self.status!r})"


def read_metrics(file: Path) -> pd.DataFrame:
    """metrics.csv as a typed frame; malformed rows skipped with one warning naming file and lines."""
    lines = _complete_lines(file)
    rows: list[tuple[int, int, str, str, float]] = []
    bad: list[int] = []
    if lines and lines[0].strip() != ",".join(METRIC_COLUMNS):
        raise UsageError(f"{file}: not a codiag metrics file (header {lines[0][:60]!r})")
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:   # one line at a time: an unclosed quote must not swallow the lines after it
            (step, epoch, probe, key, value), = csv.reader([line], strict=True)
            rows.append((int(step), int(epoch), probe, key, float(value)))
        except (ValueError, csv.Error):
            bad.append(number)
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        warnings.warn(f"{file}: skipped {len(bad)} malformed row(s) at line(s) {shown}", RuntimeWarning,
                      stacklevel=3)
    df = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    return df.astype({"step": "int64", "epoch": "int64", "probe": object, "key": object, "value": "float64"})


def glob_escape(name: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", name)


def load_run(run_dir: str | os.PathLike) -> Run:
    """Open a run directory for reading; UsageError (one line) if it is not one."""
    path = Path(run_dir)
    if not path.exists():
        raise UsageError(f"no such run directory: {path}")
    if not path.is_dir():
        raise UsageError(f"not a directory: {path}")
    if not (path / "run.json").exists():
        raise UsageError(f"not a codiag run directory (no run.json): {path}")
    return Run(path)


def iter_runs(paths: Iterable[str | os.PathLike]) -> list[Run]:
    """Load several runs; a directory holding runs (not itself one) is expanded one level."""
    runs = []
    for p in paths:
        p = Path(p)
        if p.is_dir() and not (p / "run.json").exists():
            kids = sorted(q for q in p.iterdir() if (q / "run.json").exists())
            if kids:
                runs.extend(load_run(q) for q in kids)
                continue
        runs.append(load_run(p))
    return runs
