"""Atomic file writes: every file codiag writes appears whole or not at all.

A file is written to a temporary name in its own directory and renamed over the
target (``os.replace``, atomic on POSIX), so a reader, a crash or a full disk never
leaves half a file under the real name; on any error the temporary file is removed
and the error re-raised. The rename replaces a symbolic link at the target rather
than writing through it; ``inside`` additionally refuses a target whose directory
resolves (through symlinks) outside a given root, so nothing planted in a run or
report directory can redirect a write elsewhere.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import UsageError

#: the temporary names :func:`atomic_path` makes (``tempfile.mkstemp``: 8 random characters)
_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that writers killed mid-write (SIGKILL, power loss) left in
    ``folder``: only plain files named as :func:`atomic_path` names them. The caller must be the
    folder's only writer (a run's lock), so none of them belongs to a write in progress."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if _TEMP_RE.match(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def check_inside(path: Path, root: Path) -> None:
    """UsageError unless ``path``'s directory, symlinks resolved, lies inside ``root`` (resolved)."""
    base = Path(os.path.realpath(root))
    where = Path(os.path.realpath(path.parent))
    if where != base and base not in where.parents:
        raise UsageError(f"refusing to write {path}: its folder leads outside {root} (a symbolic link?)")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, inside: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``.

    Use for writers that want a file name (``fig.savefig(tmp)``, ``torch.save(obj, tmp)``).
    """
    path = Path(path)
    if inside is not None:
        check_inside(path, Path(inside))
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes it private; other files of a run are world-readable
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and not e.filename:  # name the file the user cares about
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise


def write_bytes(path: str | os.PathLike, data: bytes, inside: str | os.PathLike | None = None) -> None:
    """Write ``data`` to ``path`` atomically (flushed to disk before the rename)."""
    with atomic_path(path, inside) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_text(path: str | os.PathLike, text: str, inside: str | os.PathLike | None = None) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"), inside)


def write_with(path: str | os.PathLike, writer: Callable[[Path], Any],
               inside: str | os.PathLike | None = None) -> None:
    """Call ``writer(tmp_path)`` and rename its file to ``path`` (e.g. ``lambda p: torch.save(obj, p)``)."""
    with atomic_path(path, inside) as tmp:
        writer(tmp)
