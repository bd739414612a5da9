"""Which directories codiag may write, and the one-writer lock of a run directory.

codiag writes into, overwrites or deletes only a new or empty directory or a codiag run
directory (one whose ``run.json`` is a codiag record); anything else is refused with one
line, ``--overwrite`` or not. Overwriting deletes only the files codiag writes.

One writer per run directory, in one process as across processes and machines sharing
the file system: ``run.lock`` holds the writer's pid under an exclusive ``flock``, which the
kernel drops when the writer dies (SIGKILL included). A second writer finds the lock held
and is refused; a lock file whose ``flock`` is free belongs to a writer that is gone.
"""
from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any

from . import atomic
from .errors import UsageError

FORMAT_VERSION = 1
LOCK = "run.lock"
#: what codiag writes in a run directory (the only names ``overwrite`` deletes)
OWN_FILES = ("run.json", "metrics.csv", "events.jsonl")
OWN_DIRS = ("arrays", "checkpoints", "report", "tensorboard")
_STEP_RE = re.compile(r"-STEP(\d{7,})\.npy$")

_held: set[str] = set()          # run directories this process holds the lock of
_held_guard = threading.Lock()


def read_meta(path: Path) -> dict[str, Any]:
    """run.json of ``path`` as a dict; UsageError (one line) if unreadable, not codiag's, or too new."""
    file = path / "run.json"
    try:
        meta = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"unreadable run.json in {path}: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {file}: {getattr(e, 'strerror', None) or e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("format_version"), int):
        raise UsageError(f"{file} is not a codiag run record (no format_version)")
    if meta["format_version"] > FORMAT_VERSION:
        raise UsageError(f"{file} has format_version {meta['format_version']}, newer than this codiag "
                         f"reads ({FORMAT_VERSION}): upgrade codiag")
    if not isinstance(meta.get("config", {}), dict):
        raise UsageError(f"{file}: config is not an object")
    return meta


def classify(path: Path) -> str:
    """"absent", "empty", "run" (a codiag run directory) or "foreign"; UsageError if not a directory."""
    try:
        if not path.exists() and not path.is_symlink():
            return "absent"
        is_dir = path.is_dir()
    except OSError as e:  # a name too long, a path through a file
        raise UsageError(f"cannot create the run directory {path}: {e.strerror}") from None
    if not is_dir:
        raise UsageError(f"{path} is not a directory")
    try:
        names = set(os.listdir(path))
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    if "run.json" in names:
        try:
            read_meta(path)
        except UsageError:
            return "foreign"
        return "run"
    # a run that died while starting leaves only its lock and an empty arrays/
    if names <= {LOCK, "arrays"} and not (path / "arrays").is_symlink() and \
            not any((path / "arrays").iterdir() if (path / "arrays").is_dir() else ()):
        return "empty"
    return "foreign"


def refuse_foreign(path: Path) -> UsageError:
    return UsageError(f"{path} holds files that are not a codiag run; codiag writes only into a new or "
                      "empty directory or its own run directory: choose another directory")


def check_run_dir(path: str | os.PathLike, resume: bool = False, overwrite: bool = False) -> str:
    """Everything about ``path`` that would stop a run, checked before any data is loaded.

    Creates the directory (so a read-only mount or a too-long name fails here) and returns
    its kind: "empty" or "run". UsageError (one line) otherwise.
    """
    if resume and overwrite:   # before anything is read, let alone deleted
        raise UsageError("resume=True continues a run and overwrite=True deletes it: pass one of them")
    path = Path(path)
    if not str(path).strip() or str(path) in (".", ""):
        raise UsageError("the run directory is empty; name a directory")
    kind = classify(path)
    if kind == "foreign":
        raise refuse_foreign(path)
    if kind == "run":
        meta = read_meta(path)
        state, pid = probe_lock(path)
        if state == "live":
            who = "this process already" if pid == os.getpid() else f"process {pid}"
            raise UsageError(f"{path} is being written by {who}; one writer per run directory")
        if not (resume or overwrite):
            if meta.get("status") == "running" and pid:
                raise UsageError(f"{path}: the writer, pid {pid}, is gone: resume=True or overwrite=True")
            raise UsageError(f"{path} already holds a run (status {meta.get('status')!r}): choose another "
                             "directory, or resume=True or overwrite=True")
        return kind
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the run directory {path}: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write into {path}: permission denied or read-only")
    return "empty"


# ------------------------------------------------------------------------------------------ lock
def _lock_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def probe_lock(path: Path) -> tuple[str, int | None]:
    """("live", pid) if a writer holds ``path``'s lock, ("gone", pid) if its writer died, ("none", None)."""
    try:
        fd = os.open(path / LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return "none", None
    except OSError:
        return "none", None
    try:
        pid = _lock_pid(fd)
        if str(path.resolve()) in _held:
            return "live", os.getpid()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return "live", pid
        fcntl.flock(fd, fcntl.LOCK_UN)
        return "gone", pid
    finally:
        os.close(fd)


class RunLock:
    """The exclusive lock of one run directory; ``previous_pid`` is the pid a dead writer left."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self.path = run_dir / LOCK
        self.key = str(run_dir.resolve())
        self.previous_pid: int | None = None
        with _held_guard:
            if self.key in _held:
                raise UsageError(f"{run_dir} is being written by this process already (pid {os.getpid()}); "
                                 "one writer per run directory")
            _held.add(self.key)
        try:
            self.fd = self._acquire()
        except BaseException:
            with _held_guard:
                _held.discard(self.key)
            raise

    def _acquire(self) -> int:
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise UsageError(f"cannot write into {self.dir}: {e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _lock_pid(fd)
                os.close(fd)
                raise UsageError(f"{self.dir} is being written by process {pid}; one writer per run "
                                 "directory") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous writer removed the file as we opened it: take the new one
                os.close(fd)
                continue
            self.previous_pid = _lock_pid(fd)
            with contextlib.suppress(OSError):  # the pid is for messages only; a full disk must not stop us
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        raise UsageError(f"could not lock {self.dir}")

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self.fd)
        finally:
            self.fd = -1
            with _held_guard:
                _held.discard(self.key)


# ------------------------------------------------------------------------------------------ files
def clear_run(path: Path) -> None:
    """Delete what codiag wrote in run directory ``path`` (``overwrite``); other files stay."""
    for name in OWN_FILES:
        (path / name).unlink(missing_ok=True)
    for name in OWN_DIRS:
        d = path / name
        if d.is_symlink() or d.is_file():
            d.unlink()
        elif d.is_dir():
            shutil.rmtree(d)


def drop_partial_line(file: Path) -> None:
    """Cut a half-written last line (a killed writer's) so that appends start on a fresh line."""
    if not file.exists():
        return
    size = file.stat().st_size
    if size == 0:
        return
    with open(file, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        pos = size
        while pos > 0:
            start = max(0, pos - 65536)
            f.seek(start)
            chunk = f.read(pos - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                f.truncate(start + i + 1)
                return
            pos = start
        f.truncate(0)


def rewind(path: Path, step: int) -> None:
    """Drop what was recorded after optimizer step ``step`` (rows, stamped events, arrays).

    A resumed run continues from its last checkpoint, at ``step``; what an interrupted
    run recorded after it is recorded again, once. The caller holds the lock.
    """
    metrics = path / "metrics.csv"
    if metrics.exists():
        lines = metrics.read_text().split("\n")
        kept = [lines[0]] if lines and lines[0] else []
        for line in lines[1:-1]:  # the part after the last newline is empty or half-written
            try:
                row = next(csv.reader([line]))
                if int(row[0]) <= step:
                    kept.append(line)
            except (ValueError, IndexError, StopIteration):
                continue
        atomic.write_text(metrics, "".join(f"{line}\n" for line in kept))
    events = path / "events.jsonl"
    if events.exists():
        out = []
        for line in events.read_text().split("\n")[:-1]:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            try:
                after = isinstance(rec, dict) and int(rec.get("step", -1) or 0) > step
            except (TypeError, ValueError):
                after = False
            if not after:
                out.append(line)
        atomic.write_text(events, "".join(f"{line}\n" for line in out))
    for f in (path / "arrays").glob("*.npy") if (path / "arrays").is_dir() else ():
        m = _STEP_RE.search(f.name)
        if m and int(m.group(1)) > step:
            f.unlink()
