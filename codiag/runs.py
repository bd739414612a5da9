"""The run directory: the only channel between a training run and its reports.

Layout (docs/RUN_FORMAT.md)::

    run_dir/
      run.json        config, versions, device, seed, git commit, status, times
      metrics.csv     tidy rows: step, epoch, probe, key, value  (append-only)
      arrays/         NAME-STEPxxxxxxx.npy
      events.jsonl    CO alarms, roll-backs, non-finite losses, resumes
      checkpoints/    optional
      report/         written by ``codiag report``

Every write is append-and-flush or write-to-temp-then-rename, so a run killed
at any moment (SIGKILL included) still loads: the reader drops a half-written
last line. A lock file (``run.lock``, created with O_EXCL, holding the pid)
refuses a second writer while the first is alive.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import platform
import re
import socket
import subprocess
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import torch
import torchvision

from .errors import UsageError
from .version import __version__

FORMAT_VERSION = 1
METRIC_COLUMNS = ["step", "epoch", "probe", "key", "value"]
_ARRAY_RE = re.compile(r"^(?P<name>.+)-STEP(?P<step>\d{7,})\.npy$")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "git_commit": _git_commit(),
    }


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


class RunWriter:
    """Writer side of a run directory.

    ``log`` accepts Python numbers or 0-d tensors on any device and only buffers
    them: tensors are moved to the host together at ``flush`` (one transfer per
    device), so logging inside a training step never synchronises with the GPU.
    """

    def __init__(self, run_dir: str | os.PathLike, config: Mapping[str, Any] | None = None,
                 resume: bool = False, overwrite: bool = False) -> None:
        self.path = Path(run_dir)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "arrays").mkdir(exist_ok=True)
        self._lock = self.path / "run.lock"
        self._acquire_lock()
        self._rows: list[tuple[int, int, str, str, Any]] = []
        self._closed = False
        meta_path = self.path / "run.json"
        try:
            if meta_path.exists() and not (resume or overwrite):
                raise UsageError(f"{self.path} already holds a run; choose another directory, "
                                 "or resume/overwrite it")
            if overwrite:
                for name in ("metrics.csv", "events.jsonl", "run.json"):
                    (self.path / name).unlink(missing_ok=True)
                for f in (self.path / "arrays").glob("*.npy"):
                    f.unlink()
            resuming = resume and meta_path.exists()
            if resuming:
                self.meta = json.loads(meta_path.read_text())
                self.meta["status"] = "running"
                self.meta.setdefault("resumes", []).append(_now())
            else:
                self.meta = {
                    "format_version": FORMAT_VERSION,
                    "config": _to_jsonable(dict(config or {})),
                    "env": environment_info(),
                    "status": "running",
                    "start_time": _now(),
                    "end_time": None,
                }
            self._write_meta()
            new_csv = not (self.path / "metrics.csv").exists()
            self._csv = open(self.path / "metrics.csv", "a", newline="")
            if new_csv:
                self._csv.write(",".join(METRIC_COLUMNS) + "\n")
                self._csv.flush()
            self._events = open(self.path / "events.jsonl", "a")
            self.event("resume" if resuming else "run_start")
        except BaseException:
            self._lock.unlink(missing_ok=True)
            raise

    # -- lock -------------------------------------------------------------------------------
    def _acquire_lock(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self._lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(self._lock.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _pid_alive(pid):
                    raise UsageError(f"{self.path} is being written by process {pid} "
                                     f"(remove {self._lock} if that is wrong)") from None
                self._lock.unlink(missing_ok=True)  # stale: its writer died
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return
        raise UsageError(f"could not lock {self.path}")

    # -- writes -----------------------------------------------------------------------------
    def _write_meta(self) -> None:
        _atomic_write_text(self.path / "run.json", json.dumps(self.meta, indent=2, sort_keys=True))

    def update(self, **fields: Any) -> None:
        """Merge ``fields`` into run.json (write to temp, then rename)."""
        self.meta.update(_to_jsonable(fields))
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
        tmp = final.with_name(f".{final.name}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(array))
        os.replace(tmp, final)
        return final

    def event(self, kind: str, **fields: Any) -> None:
        """Append one JSON line to events.jsonl and flush it."""
        record = {"kind": kind, "time": _now(), **_to_jsonable(fields)}
        self._events.write(json.dumps(record) + "\n")
        self._events.flush()

    def close(self, status: str = "finished") -> None:
        """Flush everything, record the status and end time, release the lock."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
            self.event("run_end", status=status)
            self.meta["status"] = status
            self.meta["end_time"] = _now()
            self._write_meta()
        finally:
            self._csv.close()
            self._events.close()
            self._lock.unlink(missing_ok=True)

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("finished" if exc_type is None else
                   "interrupted" if issubclass(exc_type, KeyboardInterrupt) else "failed")


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
        self.meta: dict[str, Any] = json.loads((path / "run.json").read_text())
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
        """Tidy metrics: columns step, epoch, probe, key, value."""
        if self._metrics is None:
            lines = _complete_lines(self.path / "metrics.csv")
            if not lines:
                self._metrics = pd.DataFrame({c: pd.Series(dtype=t) for c, t in
                                              zip(METRIC_COLUMNS, ["int64", "int64", str, str, "float64"])})
            else:
                df = pd.read_csv(io.StringIO("\n".join(lines) + "\n"),
                                 dtype={"probe": str, "key": str})
                self._metrics = df.astype({"step": "int64", "epoch": "int64", "value": "float64"})
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
    try:
        return Run(path)
    except json.JSONDecodeError as e:
        raise UsageError(f"unreadable run.json in {path}: {e}") from None


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
