"""Shared test set-up: the real CIFAR-10 root, and the scheduling of the files.

``cifar_root``: the official CIFAR-10 files (``$CODIAG_CIFAR_ROOT``, by default
``../shared/data`` beside the repository); a test that needs them skips, naming the path,
where they are absent.

Scheduling: under ``pytest -n 2 --dist loadfile`` the longest files start first. xdist hands
out whole files, by default those with the most tests first; a file of one three-minute test
then starts last and the suite waits for it alone. Files of minutes are
listed here, longest first (``pytest --durations``), and go to the workers before the rest.
"""
from __future__ import annotations

import os
import secrets
import signal
from pathlib import Path

import pytest

CIFAR_ROOT = Path(os.environ.get("CODIAG_CIFAR_ROOT", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))

# Ray's token authentication, for every test that starts Ray: one token for the head node, its
# workers and the driver. Ray reads these when it is first imported (by any test file), so they
# are set before collection imports one.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))

LONGEST_FIRST = ("test_gradalign_cifar.py", "test_methods_co.py", "test_train.py")


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):     # xdist present: keep the collection order
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)   # stable: the order inside each file is kept


#: SIGTERM and SIGINT as the test session found them
SESSION_SIGNALS = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}


@pytest.fixture(autouse=True)
def _signal_handlers_restored():
    """Each test starts with SIGTERM and SIGINT as the session found them: a library started
    in-process (Ray's driver installs a SIGTERM handler and keeps it after ``ray.shutdown()``,
    also from a module-scoped fixture), which codiag rightly leaves alone, would otherwise meet
    the next test in that worker instead of the disposition that test was written for."""
    from codiag import runs
    if runs._sigterm_users == 0:   # not while a run of an earlier test is still open (its handlers)
        for s, handler in SESSION_SIGNALS.items():
            if handler is not None and signal.getsignal(s) is not handler:
                signal.signal(s, handler)
    yield


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    if not (CIFAR_ROOT / "cifar-10-batches-py").is_dir():
        pytest.skip(f"CIFAR-10 not under {CIFAR_ROOT} (set CODIAG_CIFAR_ROOT)")
    return CIFAR_ROOT
