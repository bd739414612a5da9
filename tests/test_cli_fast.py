"""``codiag --help`` and every ``codiag CMD --help`` answer at once: parsing the command line loads no
torch (nor numpy, pandas or matplotlib); the command's own work imports them when it runs."""
from __future__ import annotations

import json
import subprocess
import sys

from codiag.cli import COMMANDS

HEAVY = ("torch", "numpy", "pandas", "matplotlib")

CHILD = f"""
import contextlib, io, json, sys
from codiag.cli import main
helps = {{}}
for argv in [[]] + [[c] for c in {list(COMMANDS)!r}]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main([*argv, "--help"])
        except SystemExit as e:
            assert e.code == 0, (argv, e.code)
    helps[" ".join(argv)] = out.getvalue()
print(json.dumps({{"helps": helps, "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def test_every_help_answers_without_loading_torch():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["loaded"] == []
    assert all(name in result["helps"][""] for name in COMMANDS)
    assert "--method" in result["helps"]["train"] and "--executor" in result["helps"]["sweep"]
    assert "--list-figures" in result["helps"]["report"] and "--list" in result["helps"]["reproduce"]


def test_codiag_help_takes_well_under_a_second_of_cpu():
    code = ("import resource, subprocess, sys\n"
            "subprocess.run([sys.executable, '-m', 'codiag', '--help'], check=True, stdout=subprocess.DEVNULL)\n"
            "r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
            "print(r.ru_utime + r.ru_stime)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) < 1.0, f"codiag --help took {float(done.stdout):.2f} s of CPU"


def test_import_codiag_is_lazy_and_every_public_name_still_resolves():
    code = ("import sys, codiag\n"
            f"assert not [m for m in {HEAVY!r} if m in sys.modules]\n"
            "names = [n for n in codiag.__all__ if n != 'report']\n"
            "assert all(getattr(codiag, n) is not None for n in names)\n"
            "assert 'torch' in sys.modules and callable(codiag.monitor) and codiag.monitor.__module__ "
            "== 'codiag.monitoring.core'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
