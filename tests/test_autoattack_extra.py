"""AutoAttack is the optional extra ``codiag[autoattack]``: without torchattacks, asking for it is
one line that says how to install it, before any training."""
from __future__ import annotations

import sys

import pytest

from codiag import attacks
from codiag.cli import main
from codiag.errors import UsageError


def test_autoattack_without_torchattacks_is_one_line_saying_how_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "torchattacks", None)      # import torchattacks -> ImportError
    rc = main(["train", "--autoattack", "--epochs", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "pip install 'codiag[autoattack]'" in err[0], err
    assert not (tmp_path / "run").exists()                        # refused before training
    with pytest.raises(UsageError, match=r"codiag\[autoattack\]"):
        attacks.autoattack(None, None, None, 0.1)
