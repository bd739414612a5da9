"""The command line: every --help works; bad input exits 2 with one line, no traceback.

Most cases call ``codiag.cli.main`` in this process (an uncaught exception fails the test, as a
traceback would); one runs the real ``python -m codiag`` entry point.
"""
import subprocess
import sys

import pytest

from codiag.cli import COMMANDS, main


def codiag(capsys, *args):
    """(exit code, stdout, stderr) of ``codiag ARGS`` run in this process."""
    try:
        rc = main(list(args))
    except SystemExit as e:   # argparse: --help, usage errors
        rc = e.code if isinstance(e.code, int) else int(e.code is not None)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_the_entry_point_runs_as_a_program():
    p = subprocess.run([sys.executable, "-m", "codiag", "--help"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "usage:" in p.stdout and all(c in p.stdout for c in COMMANDS)


def test_import_and_help_do_not_load_the_plotting_libraries_or_torchvision():
    # each costs seconds at start-up (torchvision's package import loads torch._dynamo); they are
    # imported where a report is drawn or a torchvision dataset is read
    code = ("import sys, codiag, codiag.cli; codiag.cli.build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'matplotlib', 'seaborn', 'scipy', 'torchvision', 'ray'}))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


@pytest.mark.parametrize("args", [["--help"], *[[c, "--help"] for c in COMMANDS]])
def test_help(args, capsys):
    rc, out, err = codiag(capsys, *args)
    assert rc == 0, err
    assert "usage:" in out


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
    # the library names its arguments (data_root=DIR, select='best'); the CLI prints its flags
    (["train", "--dataset", "cifar100", "--epochs", "0"], "needs --data-root DIR (torchvision's layout) or --download"),
    (["train", "--select", "best", "--probes", "none", "--epochs", "0"], "--select best needs --val-split N"),
    (["train", "--guard", "n_fgsm", "--detector", "none", "--epochs", "0"],
     "--guard n_fgsm acts on the online CO alarm"),
    (["sweep", "--methods", "fgsm", "--eps", "0.1", "--ray-address", "127.0.0.1:1"],
     "--ray-address needs --executor ray"),
    (["sweep", "--methods", "fgsm", "--eps", "0.1", "-m", "lam=2"],
     "-m lam: no method of this sweep has a hyper-parameter 'lam'"),
])
def test_bad_input_one_line_exit_2(args, needle, tmp_path, capsys):
    out_args = ["--out", str(tmp_path / "r")] if args[0] in ("train", "demo", "sweep") else []
    rc, out, err = codiag(capsys, *args, *out_args)
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert needle in lines[0]
    assert "=True" not in lines[0] and "data_root=" not in lines[0] and "val_split=" not in lines[0]


def test_flag_words_spells_library_arguments_as_flags():
    from codiag.cli import flag_words
    assert flag_words("resume=True continues a run and overwrite=True deletes it") == \
        "--resume continues a run and --overwrite deletes it"
    assert flag_words("give data_root=DIR or download=True") == "give --data-root DIR or --download"
    assert flag_words("select='best' needs val_split=N or every='epoch'") == \
        "--select best needs --val-split N or --every epoch"
    assert flag_words("ray_address= needs executor='ray'; another sweep directory (out=)") == \
        "--ray-address needs --executor ray; another sweep directory (--out)"
    assert flag_words("the run directory is empty (out='')") == "the run directory is empty (--out '')"
    assert flag_words("method_args['fgsm.lam']: no such") == "-m fgsm.lam: no such"
    # not arguments, or switches that are off: left as they are
    assert flag_words("timeout=3 layout=x download=False") == "timeout=3 layout=x download=False"


def test_list_methods_names_the_registry(capsys):
    from codiag.methods import METHODS
    rc, out, _ = codiag(capsys, "train", "--list-methods")
    assert rc == 0
    listed = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert listed == set(METHODS)


def test_lr_peak_and_per_eps_settings_default_to_the_papers():
    import argparse

    from codiag.commands.train import add_training_options, config_from_args
    from codiag.trainer import TrainConfig

    def cfg(*argv: str) -> TrainConfig:
        p = argparse.ArgumentParser()
        add_training_options(p, TrainConfig())
        return config_from_args(p.parse_args(list(argv)))

    assert cfg("--method", "gradalign", "--dataset", "cifar10", "--eps", "8/255").lr_peak_at == 0.4
    assert cfg("--method", "zerograd", "--dataset", "cifar10", "--eps", "8/255").lr_peak_at == 0.5
    assert cfg("--method", "zerograd", "--lr-peak", "2/5", "--dataset", "cifar10").lr_peak_at == 0.4
    # the Fashion-MNIST settings were validated with the peak at 2/5
    assert cfg("--method", "zerograd").lr_peak_at == 0.4
    z16 = cfg("--method", "zerograd", "--dataset", "cifar10", "--eps", "16/255")
    assert z16.method_args == {"q": 0.6, "step": 1.5}
    assert cfg("--method", "zerograd", "--dataset", "cifar10", "--eps", "16/255", "-m", "q=0.5").method_args["q"] == 0.5
    assert cfg("--method", "gradalign", "--dataset", "cifar10", "--eps", "16/255").method_args == {"lam": 2.0}
