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


def test_package_functions_stay_callable_after_their_submodules_are_imported():
    """``codiag.monitor`` and ``codiag.train`` share names with their submodules; importing a submodule
    must not turn the package attribute into the module (a fresh interpreter, so the order is the user's)."""
    code = ("import codiag\n"
            "from codiag.train import TrainConfig\n"
            "from codiag.monitor import Monitor\n"
            "import codiag.monitor, codiag.train\n"
            "assert callable(codiag.monitor) and callable(codiag.train), (codiag.monitor, codiag.train)\n"
            "assert codiag.train.__module__ == 'codiag.train' and codiag.Monitor is Monitor\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
