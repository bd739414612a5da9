"""Runs that never lose data: resume, one writer, atomic files, one-line errors.

Every test drives the real thing: the real CLI entry point (``codiag.cli.main``), real
files, real signals, real processes; a full disk is a real ``RLIMIT_FSIZE``.
"""
from __future__ import annotations

import pytest

from codiag.cli import main
from codiag.errors import UsageError
from codiag.methods import METHODS, get_method


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """Run ``codiag ARGV`` in this process; return (exit status, stderr)."""
    try:
        rc = main(list(argv))
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    return rc, capsys.readouterr().err


def assert_one_line(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for f in fragments:
        assert f in lines[0], (f, err)


# ------------------------------------------------------------------------- bad input: one line, exit 2
# Each is refused before any data is read: the data root does not exist, so a check that
# ran after loading would report the missing data set instead.
NO_DATA = ("--dataset", "cifar10", "--data-root", "/nonexistent/codiag-data")
BAD_TRAIN = [
    (["--weight-decay", "-1"], "weight decay"),
    (["--optimizer", "sgd", "--momentum", "-5"], "momentum"),
    (["--seed", str(2**70)], "seed"),
    (["--method", "zerograd", "-m", "q=abc"], "q must be"),
    (["--method", "zerograd", "-m", "q=5"], "q must be"),
    (["--method", "multigrad", "-m", "n=0"], "n must be"),
    (["--method", "fgsm", "-m", "step=-2"], "step must be"),
    (["--method", "gradalign", "-m", "lam=NaN"], "lam must be"),
    (["--method", "zerograd_rollback", "-m", "qs=abc"], "qs must be"),
    (["--probes", ""], "no probe"),
    (["--probes", " , "], "no probe"),
    (["--out", ""], "empty"),
]


@pytest.mark.parametrize("args,fragment", BAD_TRAIN, ids=[" ".join(a) for a, _ in BAD_TRAIN])
def test_bad_train_input_is_one_line_and_exit_2_before_data_loads(capsys, args, fragment):
    rc, err = run_cli(capsys, "train", *NO_DATA, *args)
    assert rc == 2
    assert_one_line(err, fragment)
    assert "not found" not in err and "data-root" not in err


# ------------------------------------------------------------------------- method hyper-parameters
def test_every_method_declares_the_type_and_range_of_each_option():
    for name, cls in METHODS.items():
        declared = {k for klass in cls.__mro__ for k in (getattr(klass, "checks", {}) or {})}
        assert set(cls._all_defaults()) <= declared, (name, set(cls._all_defaults()) - declared)
        get_method(name, 8 / 255)  # the defaults pass their own checks


@pytest.mark.parametrize("name,option,value", [
    ("zerograd", "q", -0.1), ("zerograd", "q", "0.3"), ("multigrad", "n", 2.5), ("free", "m", True),
    ("pgd", "steps", 0), ("pgd", "random_start", "yes"), ("atas", "beta", 1.0), ("n_fgsm", "clip", 0.0),
    ("gradalign", "lam", float("inf")), ("grad_penalty", "ref_batch", -1), ("atta", "reset_every", -1),
    ("zerograd_rollback", "qs", []), ("fgsm", "seed", -1), ("fgsm", "num_samples", 0),
])
def test_method_refuses_meaningless_values_itself(name, option, value):
    with pytest.raises(UsageError, match=f"method '{name}': {option} must be"):
        get_method(name, 8 / 255, **{option: value})


def test_method_checks_give_canonical_types():
    m = get_method("multigrad", 0.1, n=4.0, step=1)
    assert type(m.n) is int and type(m.step) is float
    assert get_method("zerograd_rollback", 0.1, qs=0.3).qs == (0.3,)
