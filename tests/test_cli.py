"""The command line: every --help works; bad input exits 2 with one line, no traceback."""
import subprocess
import sys

import pytest

from codiag.cli import COMMANDS


def codiag(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "codiag", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("args", [["--help"], *[[c, "--help"] for c in COMMANDS]])
def test_help(args):
    p = codiag(*args)
    assert p.returncode == 0, p.stderr
    assert "usage:" in p.stdout


@pytest.mark.parametrize("args, needle", [
    (["train", "--bogus"], "unrecognized arguments"),
    (["frobnicate"], "invalid choice"),
    (["train", "--eps", "2"], "eps must lie in [0, 1]"),
    (["train", "--eps", "8/0"], "eps"),
    (["train", "--epochs", "-3"], "must not be negative"),
    (["demo", "--stop-after-co", "-1"], "must not be negative"),
    (["train", "--method", "nosuchmethod", "--epochs", "0"], "unknown method"),
    (["train", "--model", "nosuchmodel", "--epochs", "0"], "unknown model"),
    (["train", "--dataset", "imagenet", "--epochs", "0"], "unknown dataset"),
    (["train", "--every", "soon"], "--every"),
    (["train", "--dataset", "cifar10", "--data-root", "/nonexistent", "--epochs", "0"],
     "/nonexistent"),
    (["report", "/nonexistent/run"], "/nonexistent/run"),
])
def test_bad_input_one_line_exit_2(args, needle, tmp_path):
    p = codiag(*args, "--out", str(tmp_path / "r")) if args[0] in ("train", "demo") else codiag(*args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr
    assert needle in lines[0]


def test_list_methods_names_the_registry():
    from codiag.methods import METHODS
    p = codiag("train", "--list-methods")
    assert p.returncode == 0
    listed = {line.split()[0] for line in p.stdout.splitlines() if line.strip()}
    assert listed == set(METHODS)
