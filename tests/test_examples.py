"""The examples run as users run them: ``examples/wrap_your_loop.py`` on real data writes a run
directory that codiag reads back (a two-epoch, 1k-image version of its demo), and the package
API it uses stays callable whatever was imported before."""
from __future__ import annotations

import subprocess
import sys

from example_modules import load_example

from codiag.runs import load_run


def test_wrap_your_loop_writes_a_run_codiag_can_read(tmp_path, capsys):
    out = tmp_path / "run"
    rc = load_example("wrap_your_loop").main(["--epochs", "2", "--train-limit", "1000", "--no-report",
                                              "--out", str(out)])
    assert rc == 0
    run = load_run(out)
    acc = run.scalar("robust_acc", "pgd_acc")
    assert acc["epoch"].tolist() == [0, 1, 2]     # initial event, then one per epoch_end()
    assert acc["value"].between(0, 1).all()
    assert "CO epoch:" in capsys.readouterr().out


def test_methods_vs_co_verdict_applies_the_issue_criteria():
    verdict = load_example("methods_vs_co").verdict
    ok = {"fgsm": [{"pgd_acc": 0.0}, {"pgd_acc": 0.01}, {"pgd_acc": 0.3}],
          "zerograd": [{"pgd_acc": 0.3}, {"pgd_acc": 0.25}, {"pgd_acc": 0.4}]}
    assert verdict(ok) == []
    bad = {"fgsm": [{"pgd_acc": 0.0}, {"pgd_acc": 0.3}, {"pgd_acc": 0.3}],
           "zerograd": [{"pgd_acc": 0.3}, {"pgd_acc": 0.24}, {"pgd_acc": 0.4}]}
    assert verdict(bad) == ["fgsm collapsed in 1 seeds only", "zerograd: a seed ended below 25% PGD accuracy"]


def test_a_public_name_is_a_function_or_a_module_never_both():
    """``codiag.monitor`` and ``codiag.train`` are functions whose modules have other names, so importing
    any submodule cannot rebind them (a fresh interpreter, so the import order is the user's). The
    integrations import their frameworks (optional extras, seconds each) and are left to their own tests."""
    code = ("import codiag, importlib, pkgutil, types\n"
            "from codiag.trainer import TrainConfig\n"
            "from codiag.monitoring import Monitor\n"
            "for m in pkgutil.walk_packages(codiag.__path__, 'codiag.'):\n"
            "    if not m.name.startswith('codiag.integrations.'):\n"
            "        importlib.import_module(m.name)\n"
            "assert callable(codiag.monitor) and callable(codiag.train), (codiag.monitor, codiag.train)\n"
            "assert codiag.Monitor is Monitor and codiag.report is not None\n"
            "clash = [n for n in dir(codiag) if isinstance(getattr(codiag, n), types.FunctionType)\n"
            "         and importlib.util.find_spec('codiag.' + n) is not None]\n"
            "assert not clash, clash\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
