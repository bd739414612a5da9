"""``SWEEP_DIR/sweep.json``: the index of a sweep (grid, protocol, codiag version), and the
per-cell claim that makes every run happen at most once at a time.

The index is rewritten temp-then-rename under a short lock (``sweep.json.lock``), so two
sweep commands on one directory merge their grids instead of losing one. A second
command with another grid adds its new cells; one with another protocol is refused,
because its runs would not be comparable with the ones already there.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from .. import atomic
from ..errors import UsageError
from ..runs import load_run
from ..version import __version__
from .grid import Cell, canonical, protocol_differences

FORMAT_VERSION = 1
INDEX = "sweep.json"
CLAIMS = ".claims"
LOGS = "logs"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, data: Any) -> None:
    atomic.write_text(path, json.dumps(data, indent=2, sort_keys=True), inside=path.parent)


def check_cell_paths(sweep_dir: Path, cell: Cell) -> None:
    """UsageError (one line) unless the cell's run directory and claim resolve inside ``sweep_dir``."""
    for path in (sweep_dir / cell.name / "run.json", sweep_dir / CLAIMS / f"{cell.name}.lock"):
        base, where = os.path.realpath(sweep_dir), os.path.realpath(path)
        if os.path.commonpath([base, where]) != base:
            raise UsageError(f"refusing the cell {cell.name}: {path} leads outside {sweep_dir} (a symbolic link?)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Claim:
    """An exclusive claim on one cell: ``SWEEP_DIR/.claims/NAME.lock`` created with O_EXCL,
    holding ``host pid``. A claim whose process is gone on this host is stale and taken
    over; a claim from another host is honoured (its liveness cannot be checked from
    here): remove the file by hand if that node died."""

    def __init__(self, sweep_dir: Path, name: str) -> None:
        self.root = sweep_dir
        self.path = sweep_dir / CLAIMS / f"{name}.lock"
        self.held = False

    def _read(self) -> str:
        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as f:
            return f.read(256)

    def holder(self) -> str | None:
        """Who holds the claim ("host pid"), or None when it is free or stale."""
        try:
            host, pid = self._read().split()
            pid_n = int(pid)
        except (OSError, ValueError):
            return None
        if host == socket.gethostname() and not _pid_alive(pid_n):
            return None
        return f"{host} {pid_n}"

    def _check_folder(self) -> None:
        folder = self.path.parent
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise UsageError(f"refusing {folder}: it is a symbolic link or a file, not the sweep's claims folder")

    def acquire(self) -> bool:
        self._check_folder()
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        self._check_folder()
        for _ in range(3):
            if self.path.is_symlink():
                raise UsageError(f"refusing the claim {self.path}: it is a symbolic link")
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o644)
            except FileExistsError:
                if self.path.is_symlink():
                    raise UsageError(f"refusing the claim {self.path}: it is a symbolic link") from None
                if self.holder() is not None:
                    return False
                self.path.unlink(missing_ok=True)   # stale: its process died
                continue
            os.fchmod(fd, 0o644)   # whatever the umask: other sweep commands read who holds it
            with os.fdopen(fd, "w") as f:
                f.write(f"{socket.gethostname()} {os.getpid()}")
            self.held = True
            return True
        return False

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class _IndexLock:
    """A short lock around the read-modify-write of sweep.json."""

    def __init__(self, sweep_dir: Path, timeout: float = 30.0) -> None:
        self.path = sweep_dir / f"{INDEX}.lock"
        self.timeout = timeout

    def __enter__(self) -> "_IndexLock":
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
                os.fchmod(fd, 0o600)
                os.close(fd)
                return self
            except FileExistsError:
                try:
                    if time.time() - self.path.stat().st_mtime > self.timeout:
                        self.path.unlink(missing_ok=True)   # left by a killed command
                        continue
                except FileNotFoundError:
                    continue
                if time.monotonic() > deadline:
                    raise UsageError(f"{self.path} is held by another sweep command; remove it if "
                                     "none is running") from None
                time.sleep(0.05)

    def __exit__(self, *exc: Any) -> None:
        self.path.unlink(missing_ok=True)


def _is_sweep_member(path: Path) -> bool:
    return path.name in (INDEX, f"{INDEX}.lock", CLAIMS, LOGS, "report") or path.name.startswith(".") \
        or (path / "run.json").exists() or (path.is_dir() and not any(path.iterdir()))


def open_index(sweep_dir: Path, protocol: Mapping[str, Any], cells: Sequence[Cell],
               extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Create or extend ``sweep.json`` with ``cells``; refuse another protocol, and a folder
    that holds anything but a sweep. Returns the index as written."""
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise UsageError(f"the sweep directory {sweep_dir} is a file, not a folder")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    protocol = canonical(dict(protocol))
    with _IndexLock(sweep_dir):
        path = sweep_dir / INDEX
        atomic.remove_stale_temps(sweep_dir)   # under the index lock: a killed command's half-written index
        if path.exists():
            index = _checked_index(path)
            diff = protocol_differences(index.get("protocol", {}), protocol)
            if diff:
                old, new = index.get("protocol", {}), protocol
                shown = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} here" for k in diff[:3])
                raise UsageError(f"{sweep_dir} holds a sweep with another protocol ({shown}); its runs "
                                 "would not be comparable: use another sweep directory (out=)")
        else:
            foreign = [p.name for p in sweep_dir.iterdir() if not _is_sweep_member(p)]
            if foreign:
                raise UsageError(f"{sweep_dir} is not a sweep directory (it holds {', '.join(sorted(foreign)[:3])}); "
                                 "choose an empty or new folder")
            index = {"format_version": FORMAT_VERSION, "protocol": protocol, "cells": [],
                     "created": _now(), "codiag": __version__}
        have = {c["name"] for c in index["cells"]}
        added = [c for c in cells if c.name not in have]
        index["cells"].extend(c.to_dict() for c in added)
        for c in index["cells"]:   # no run starts while one cell would lead outside the sweep directory
            check_cell_paths(sweep_dir, Cell.from_dict(c))
        index["updated"] = _now()
        versions = index.setdefault("codiag_versions", [index.get("codiag", __version__)])
        if not isinstance(versions, list):
            versions = index["codiag_versions"] = [str(versions)]
        if __version__ not in versions:
            versions.append(__version__)
        if extra:
            index.update({k: v for k, v in extra.items() if v is not None})
        _write_json(path, index)
    return index


def _checked_index(path: Path) -> dict[str, Any]:
    """sweep.json as written by codiag: every field of the type codiag writes and every cell
    valid (``Cell.from_dict``), before any path is built from it; UsageError (one line) otherwise."""
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"unreadable {path}: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if not isinstance(index, dict):
        raise UsageError(f"{path} is not a sweep index (not a JSON object)")
    version = index.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise UsageError(f"{path}: format_version is {str(version)[:40]!r}, not an integer")
    if version > FORMAT_VERSION:
        raise UsageError(f"{path} was written by a newer codiag (format {version})")
    for key, kind in (("protocol", dict), ("cells", list)):
        if not isinstance(index.get(key), kind):
            raise UsageError(f"{path}: {key} is {type(index.get(key)).__name__}, not {kind.__name__} as codiag "
                             "writes it")
    for i, c in enumerate(index["cells"]):
        try:
            Cell.from_dict(c)
        except UsageError as e:
            raise UsageError(f"{path}: cell {i + 1}: {e}") from None
    return index


def read_index(sweep_dir: Path) -> dict[str, Any] | None:
    """The index of ``sweep_dir``, or None when it is not a sweep directory."""
    path = Path(sweep_dir) / INDEX
    if not path.exists():
        return None
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"unreadable {path}: {e}") from None
    return index if isinstance(index, dict) else None


def cell_status(sweep_dir: Path, cell: Cell) -> str:
    """``finished``, ``new`` (no run yet), or the recorded status of an unfinished run
    (``running``, ``interrupted``, ``failed``)."""
    run_dir = sweep_dir / cell.name
    if not (run_dir / "run.json").exists():
        return "new"
    try:
        return load_run(run_dir).status
    except (UsageError, ValueError, OSError):
        return "unreadable"


def iter_cells(index: Mapping[str, Any]) -> Iterator[Cell]:
    for c in index.get("cells", []):
        yield Cell.from_dict(c)
