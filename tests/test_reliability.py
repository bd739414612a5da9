"""Runs that never lose data: resume, one writer, atomic files, one-line errors.

Every test drives the real thing: the real CLI entry point (``codiag.cli.main``), real
files, real signals, real processes; a full disk is a real ``RLIMIT_FSIZE``.
"""
from __future__ import annotations

import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import codiag
from codiag.cli import main
from codiag.data import load_dataset
from codiag.errors import UsageError
from codiag.methods import METHODS, get_method
from codiag.runs import RunWriter, load_run


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


# ------------------------------------------------------------------------- method state in a checkpoint
class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(torch.relu(x))


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), _Block(), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 10))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_state_survives_a_weights_only_checkpoint(name):
    """Two steps, a checkpoint through torch.save / torch.load(weights_only=True) into a fresh
    method, then the same further steps: identical to never having stopped."""
    g = torch.Generator().manual_seed(1)
    x, y, idx = torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g), torch.arange(16)
    model = _resnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = get_method(name, 0.1, seed=3, num_samples=16, epochs=4)
    for epoch in range(2):
        method.on_epoch_start(epoch)
        method.train_step(model, opt, x, y, idx)
        method.on_epoch_end(epoch, model, opt, False)
    buf = io.BytesIO()
    torch.save({"method": method.state_dict(), "model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model2 = _resnet()
    model2.load_state_dict(saved["model"])
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.05, momentum=0.9)
    opt2.load_state_dict(saved["opt"])
    method2 = get_method(name, 0.1, seed=3, num_samples=16, epochs=4)
    method2.load_state_dict(saved["method"])
    for m, o, net in ((method, opt, model), (method2, opt2, model2)):
        for epoch in range(2, 4):
            m.on_epoch_start(epoch)
            m.train_step(net, o, x, y, idx)
            m.on_epoch_end(epoch, net, o, False)
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), (name, k)


# ------------------------------------------------------------------------- resume after SIGKILL
TRAIN = ("--model", "cnn4", "--method", "fgsm", "--train-limit", "512", "--batch-size", "64", "--epochs", "3",
         "--probes", "robust_acc,weight_update,perturbation_delta", "--eval-n", "0",
         "--seed", "1", "--quiet")


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "final.pt", weights_only=True)


def test_killed_run_resumes_to_the_uninterrupted_weights_bit_for_bit(tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "codiag", "train", *TRAIN, "--out", str(killed)], env=env,
                            stderr=subprocess.DEVNULL)
    ckpt = killed / "checkpoints" / "resume.pt"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.kill()                                   # SIGKILL, just after the first epoch's checkpoint
    proc.wait()
    assert not (killed / "checkpoints" / "final.pt").exists(), "the run ended before it could be killed"
    assert load_run(killed).status == "running"

    # without --resume: refused, naming the dead writer
    rc, err = run_cli(capsys, "train", *TRAIN, "--out", str(killed))
    assert rc == 2
    assert_one_line(err, f"the writer, pid {proc.pid}, is gone: --resume or --overwrite")
    # different options: refused
    rc, err = run_cli(capsys, "train", *TRAIN, "--out", str(killed), "--resume", "--lr", "0.1")
    assert rc == 2
    assert_one_line(err, "lr=")

    assert run_cli(capsys, "train", *TRAIN, "--out", str(killed), "--resume")[0] == 0
    assert run_cli(capsys, "train", *TRAIN, "--out", str(tmp_path / "whole"))[0] == 0
    torch.set_num_threads(threads)

    resumed, whole = _weights(killed), _weights(tmp_path / "whole")
    assert resumed.keys() == whole.keys()
    for k in whole:
        assert torch.equal(resumed[k], whole[k]), k
    a, b = load_run(killed), load_run(tmp_path / "whole")
    assert a.status == "finished" and [e["kind"] for e in a.events].count("resume") == 1
    # each probe event recorded once, with the uninterrupted run's values: every row, the
    # change-since-the-last-event probes' first rows after the resume included
    assert a.scalar("weight_update", "l2_all")["epoch"].tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(a.metrics, b.metrics)
    assert not ckpt.exists() and not list(killed.rglob("*.tmp")) and not (killed / "run.lock").exists()


# ------------------------------------------------------------------------- never touch what is not ours
def test_foreign_directories_are_refused_even_with_overwrite(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.csv").write_text("a,b\n1,2\n")
    (mine / "notes.txt").write_text("keep me")
    for extra in ((), ("--overwrite",), ("--resume",)):
        rc, err = run_cli(capsys, "train", *NO_DATA, "--out", str(mine), *extra)
        assert rc == 2
        assert_one_line(err, "not a codiag run")
    assert (mine / "metrics.csv").read_text() == "a,b\n1,2\n" and (mine / "notes.txt").exists()
    assert sorted(p.name for p in mine.iterdir()) == ["metrics.csv", "notes.txt"]
    with pytest.raises(UsageError, match="not a codiag run"):
        RunWriter(mine, {}, overwrite=True)
    afile = tmp_path / "afile"
    afile.write_text("x")
    rc, err = run_cli(capsys, "train", *NO_DATA, "--out", str(afile))
    assert rc == 2 and afile.read_text() == "x"
    assert_one_line(err, "not a directory")


def test_existing_run_is_not_replaced_without_overwrite_and_overwrite_keeps_foreign_files(tmp_path, capsys):
    run = tmp_path / "run"
    with RunWriter(run, {"a": 1}) as w:
        w.log(0, 0, "p", "k", 1.0)
    (run / "mine.txt").write_text("user's")
    rc, err = run_cli(capsys, "demo", "--out", str(run), "--quick")
    assert rc == 2
    assert_one_line(err, "already holds a run")
    assert load_run(run).config == {"a": 1}
    RunWriter(run, {"a": 2}, overwrite=True).close()
    assert load_run(run).config == {"a": 2} and (run / "mine.txt").read_text() == "user's"


# ------------------------------------------------------------------------- one writer
def test_second_writer_refused_in_the_same_process(tmp_path):
    w = RunWriter(tmp_path / "r", {})
    try:
        with pytest.raises(UsageError, match="being written by this process"):
            RunWriter(tmp_path / "r", {}, resume=True)
        x = torch.zeros(2, 1, 4, 4)
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with pytest.raises(UsageError, match="being written by this process"):
            with codiag.monitor(model, opt, tmp_path / "r", eps=0.1, probe_data=(x, torch.zeros(2).long()),
                                probes="none", resume=True):
                pass
        assert (tmp_path / "r" / "run.lock").exists(), "the refused writer must not delete the first one's lock"
        w.log(1, 0, "p", "k", 2.0)
    finally:
        w.close()
    assert load_run(tmp_path / "r").metrics["step"].tolist() == [1]
    assert not (tmp_path / "r" / "run.lock").exists()


def test_second_writer_refused_across_processes_then_dead_writer_named(tmp_path):
    run = tmp_path / "r"
    code = f"from codiag.runs import RunWriter; w = RunWriter({str(run)!r}, {{}}); print('open', flush=True); input()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "open"
        with pytest.raises(UsageError, match=f"being written by process {proc.pid}"):
            RunWriter(run, {}, resume=True)
        with pytest.raises(UsageError, match=f"being written by process {proc.pid}"):
            RunWriter(run, {}, overwrite=True)
    finally:
        proc.kill()
        proc.wait()
    with pytest.raises(UsageError, match=f"the writer, pid {proc.pid}, is gone: resume=True or overwrite=True"):
        RunWriter(run, {})
    with RunWriter(run, {}, resume=True):
        pass
    assert load_run(run).events_of("resume")[0]["previous_pid"] == proc.pid


# ------------------------------------------------------------------------- signals and exits
def _tiny_monitor(run_dir: Path):
    """A linear model, its optimizer and a monitor on 8 random points (not started), and a training step."""
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 2, (8,))
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step() -> None:
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return codiag.monitor(model, opt, run_dir, eps=0.1, probe_data=(x, y), probes="none"), step


def _monitored(run_dir: Path, body) -> None:
    mon, step = _tiny_monitor(run_dir)
    with mon:
        step()
        mon.epoch_end()
        body()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("inherited", ["as found", "ignored"])
def test_sigterm_and_sigint_end_the_run_interrupted(tmp_path, signum, inherited):
    """Whatever disposition the process inherited: a suite run as a background job has SIGINT
    ignored, and the run must still end "interrupted", with the disposition put back after."""
    found = signal.getsignal(signum)
    if inherited == "ignored":
        signal.signal(signum, signal.SIG_IGN)
    try:
        before = signal.getsignal(signum)
        with pytest.raises(KeyboardInterrupt):
            _monitored(tmp_path / "r", lambda: os.kill(os.getpid(), signum) or time.sleep(5))
        after = signal.getsignal(signum)
    finally:
        signal.signal(signum, found)
    run = load_run(tmp_path / "r")
    assert run.status == "interrupted" and run.events[-1] == {**run.events[-1], "kind": "run_end",
                                                              "status": "interrupted"}
    assert not (tmp_path / "r" / "run.lock").exists()
    assert after is before      # the handler is the user's (or the inherited one) again


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_a_run_starts_ends_it_interrupted_with_its_run_end(tmp_path, monkeypatch, signum):
    """A real signal just after run.json lands, before metrics.csv and events.jsonl are open (a
    SIGTERM sent the moment metrics.csv appeared once left an "interrupted" run with no events):
    it is held until the run's files are open, then ends the run like any interruption."""
    from codiag import atomic
    write_text, calls = atomic.write_text, []

    def write_then_signal(path, text, **kw):   # the signal's timing, pinned to the narrowest window
        write_text(path, text, **kw)
        calls.append(json.loads(text)["status"])
        if len(calls) == 1:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(atomic, "write_text", write_then_signal)
    before = signal.getsignal(signum)
    with pytest.raises(KeyboardInterrupt):
        RunWriter(tmp_path / "r", {"method": "fgsm"})
    assert calls == ["running", "interrupted"]
    run = load_run(tmp_path / "r")
    assert run.status == "interrupted" and [e["kind"] for e in run.events] == ["run_start", "run_end"]
    assert not (tmp_path / "r" / "run.lock").exists() and signal.getsignal(signum) is before
    monkeypatch.undo()
    w = RunWriter(tmp_path / "r", resume=True)   # what is left is a run, resumable
    w.close("finished")
    assert load_run(tmp_path / "r").status == "finished"


def test_a_sigterm_while_a_run_closes_lets_it_finish_then_ends_the_program(tmp_path, monkeypatch):
    """A SIGTERM in the middle of close (here: while its last rows are flushed) is raised once the
    run has ended: the run is "finished" with its run_end event, not left "running"."""
    from codiag.errors import Terminated
    w = RunWriter(tmp_path / "r", {"method": "fgsm"})
    w.log(0, 0, "loss", "train", 1.0)
    flush = w.flush
    monkeypatch.setattr(w, "flush", lambda: flush() or os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(Terminated):
        w.close("finished")
    run = load_run(tmp_path / "r")
    assert run.status == "finished" and run.events[-1]["kind"] == "run_end" and len(run.metrics) == 1
    assert not (tmp_path / "r" / "run.lock").exists()


def test_a_sigterm_in_the_closing_event_ends_the_run_interrupted(tmp_path, monkeypatch):
    """A SIGTERM during the probe event that closing a run runs: the run ends "interrupted" (the
    program was stopped before the run ended as asked), not "finished" with its last event cut."""
    from codiag.errors import Terminated
    mon, step = _tiny_monitor(tmp_path / "r")
    mon.start()
    step()
    mon.epoch_end()
    step()   # a step after the epoch's event: closing runs one more event
    event = mon.probe_event
    monkeypatch.setattr(mon, "probe_event", lambda **kw: os.kill(os.getpid(), signal.SIGTERM) or event(**kw))
    with pytest.raises(Terminated):
        mon.close()
    run = load_run(tmp_path / "r")
    assert run.status == "interrupted" and run.events[-1] == {**run.events[-1], "kind": "run_end",
                                                              "status": "interrupted"}
    assert not (tmp_path / "r" / "run.lock").exists()


@pytest.mark.parametrize("code,status", [(0, "finished"), (None, "finished"), (3, "interrupted")])
def test_sys_exit_inside_the_block(tmp_path, code, status):
    with pytest.raises(SystemExit):
        _monitored(tmp_path / "r", lambda: sys.exit(code))
    assert load_run(tmp_path / "r").status == status


def test_terminated_cli_run_is_interrupted_and_says_resume(tmp_path):
    out = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "codiag", "train", *TRAIN, "--out", str(out)],
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.monotonic() + 300
    while not (out / "metrics.csv").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert_one_line(err, "terminated", "--resume")
    run = load_run(out)
    assert run.status == "interrupted" and run.events_of("run_end")[-1]["status"] == "interrupted"


# ------------------------------------------------------------------------- full disk, unwritable target
def test_full_disk_at_the_final_checkpoint_is_one_line_and_a_failed_closed_run(tmp_path, capsys):
    load_dataset("fashion_mnist", train=True, limit=64)   # the decompressed cache exists before the limit
    out = tmp_path / "r"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))   # files above 64 KiB: EFBIG
    try:                                                            # (cnn4's weights take 108 KiB)
        rc, err = run_cli(capsys, "train", "--epochs", "0", "--train-limit", "64", "--probes", "none",
                          "--eval-n", "0", "--quiet", "--out", str(out))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert rc == 2
    assert_one_line(err, "final.pt", "File too large")
    run = load_run(out)
    assert run.status == "failed" and run.events[-1]["kind"] == "run_end"
    assert not (out / "run.lock").exists() and not (out / "checkpoints" / "final.pt").exists()
    assert not [p for p in out.rglob("*") if p.name.startswith(".")], "temporary files left behind"


def test_full_disk_when_a_run_is_interrupted_leaves_run_json_interrupted(tmp_path):
    """No room for a new run.json when the run ends: its status is rewritten in place, in the room
    left after "running" when run.json was written, whatever the final status."""
    out = tmp_path / "r"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    with pytest.raises(KeyboardInterrupt):
        try:
            with RunWriter(out, {"lr": 0.1}):
                resource.setrlimit(resource.RLIMIT_FSIZE, ((out / "run.json").stat().st_size + 8, hard))
                raise KeyboardInterrupt
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    run = load_run(out)
    assert run.status == "interrupted" and run.events[-1] == {**run.events[-1], "kind": "run_end",
                                                              "status": "interrupted"}
    assert not (out / "run.lock").exists() and not [p for p in out.rglob("*") if p.name.startswith(".")]


def test_full_disk_before_run_json_is_one_line_and_leaves_nothing_behind(tmp_path, capsys):
    load_dataset("fashion_mnist", train=True, limit=64)   # the decompressed cache exists before the limit
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256, hard))   # run.json (~700 bytes) never fits
    try:
        with pytest.raises(OSError) as e:
            RunWriter(tmp_path / "w", {"lr": 0.1})
        model = nn.Linear(4, 3)
        with pytest.raises(OSError, match="run.json"):
            codiag.monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), tmp_path / "m", eps=0.1,
                           probe_data=(torch.rand(8, 4), torch.randint(0, 3, (8,))), probes="none").start()
        rc, err = run_cli(capsys, "train", "--epochs", "0", "--train-limit", "64", "--probes", "none",
                          "--eval-n", "0", "--quiet", "--out", str(tmp_path / "r"))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert e.value.filename == str(tmp_path / "w" / "run.json") and e.value.strerror == "File too large"
    assert rc == 2
    assert_one_line(err, str(tmp_path / "r" / "run.json"), "File too large")
    assert not any(tmp_path.iterdir()), "a run directory or arrays/ left behind"


def test_unwritable_or_impossible_out_is_one_line(tmp_path, capsys):
    for out in ("/sys/codiag-run", str(tmp_path / ("x" * 300))):
        rc, err = run_cli(capsys, "train", *NO_DATA, "--out", out)
        assert rc == 2
        assert_one_line(err, "cannot create the run directory")


# ------------------------------------------------------------------------- readers
def test_run_json_from_the_future_or_malformed_is_refused(tmp_path):
    RunWriter(tmp_path / "r", {}).close()
    meta = json.loads((tmp_path / "r" / "run.json").read_text())
    (tmp_path / "r" / "run.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(UsageError, match="format_version 99"):
        load_run(tmp_path / "r")
    (tmp_path / "r" / "run.json").write_text(json.dumps({**meta, "config": [1, 2]}))
    with pytest.raises(UsageError, match="config is not an object"):
        load_run(tmp_path / "r")


def test_malformed_metric_rows_are_skipped_with_one_warning_naming_file_and_line(tmp_path):
    with RunWriter(tmp_path / "r", {}) as w:
        w.log(0, 0, "p", "k", 1.0)
        w.log(1, 0, "p", "k", float("nan"))
    with open(tmp_path / "r" / "metrics.csv", "a") as f:
        f.write("2,0,p,k,oops\nthree,0,p,k,1.0\n4,0,p,k,4.0\n")
    with pytest.warns(RuntimeWarning, match=r"metrics\.csv: skipped 2 malformed row\(s\) at line\(s\) 4, 5") as rec:
        m = load_run(tmp_path / "r").metrics
    assert len(rec) == 1
    assert m["step"].tolist() == [0, 1, 4] and np.isnan(m["value"][1])


def test_no_weights_only_false_anywhere():
    root = Path(codiag.__file__).resolve().parent.parent
    for f in [*root.glob("codiag/**/*.py"), *root.glob("probes/*.py"), *root.glob("reports/*.py")]:
        for line in f.read_text().splitlines():
            if "torch.load(" in line and "torch.load(..." not in line:
                assert "weights_only=True" in line, (f, line)


# ------------------------------------------------------------------------- reports
def test_report_never_writes_through_a_planted_symlink(tmp_path, capsys):
    with RunWriter(tmp_path / "r", {"method": "fgsm", "eps": 0.2}) as w:
        for step in range(3):
            w.log(step, step, "robust_acc", "pgd_acc", 0.1 * step)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "r" / "report").mkdir()
    planted = tmp_path / "r" / "report" / "summary.csv"
    planted.symlink_to(victim)
    rc, err = run_cli(capsys, "report", str(tmp_path / "r"), "--no-analytic")
    assert rc == 2
    assert_one_line(err, "symbolic link")
    assert victim.read_text() == "precious"
    planted.unlink()
    assert run_cli(capsys, "report", str(tmp_path / "r"), "--no-analytic")[0] == 0
    assert (tmp_path / "r" / "report" / "summary.csv").is_file()
    assert not [p for p in (tmp_path / "r" / "report").rglob("*") if p.name.endswith(".tmp")]
    # a planted directory link leading out of the report: refused, nothing written there
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(tmp_path / "r" / "report" / "figures")
    (tmp_path / "r" / "report" / "figures").symlink_to(elsewhere, target_is_directory=True)
    rc, err = run_cli(capsys, "report", str(tmp_path / "r"), "--no-analytic")
    assert rc == 2
    assert_one_line(err, "symbolic link")
    assert not any(elsewhere.iterdir())


def test_report_and_reproduce_refuse_a_file_or_foreign_folder_as_output(tmp_path, capsys):
    RunWriter(tmp_path / "r", {}).close()
    afile = tmp_path / "afile"
    afile.write_text("x")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("mine")
    for args, fragment in ((("report", str(tmp_path / "r"), "-o", str(afile)), "not a directory"),
                           (("report", str(tmp_path / "r"), "-o", str(foreign)), "not a codiag report"),
                           (("reproduce", "gradalign-fig11", "--quick", "--cache", str(afile)), "not a directory")):
        rc, err = run_cli(capsys, *args)
        assert rc == 2
        assert_one_line(err, fragment)
    assert afile.read_text() == "x" and [p.name for p in foreign.iterdir()] == ["thesis.tex"]


def test_truncated_gz_is_one_line(tmp_path, monkeypatch, capsys):
    src = Path("/usr/share/datasets/fashion-mnist")
    root = tmp_path / "fm"
    root.mkdir()
    for f in src.glob("*.gz"):
        data = f.read_bytes()
        (root / f.name).write_bytes(data[: len(data) // 2] if "train-images" in f.name else data)
    monkeypatch.setenv("CODIAG_CACHE", str(tmp_path / "cache"))
    rc, err = run_cli(capsys, "train", "--data-root", str(root), "--epochs", "0", "--out", str(tmp_path / "r"))
    assert rc == 2
    assert_one_line(err, "cannot decompress", "train-images")
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.name.startswith(".")]


def test_a_malformed_line_with_an_unclosed_quote_hides_no_other_line(tmp_path):
    with RunWriter(tmp_path / "r", {}) as w:
        w.log(0, 0, "p", "k", 1.0)
    with open(tmp_path / "r" / "metrics.csv", "a") as f:
        f.write('1,0,"p,k,2.0\n2,0,p,k,3.0\n3,0,p,"k"x,4.0\n4,0,p,k,5.0,extra\n5,0,"p,q",k,6.0\n')
    with pytest.warns(RuntimeWarning, match=r"skipped 3 malformed row\(s\) at line\(s\) 3, 5, 6$"):
        m = load_run(tmp_path / "r").metrics
    assert m["step"].tolist() == [0, 2, 5] and m["value"].tolist() == [1.0, 3.0, 6.0]
    assert m["probe"].tolist() == ["p", "p", "p,q"]
