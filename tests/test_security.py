"""A run or sweep directory received from someone else is inert data.

Each test builds the hostile file as an attacker would (a crafted resume.pt, a crafted
sweep.json, a planted symbolic link) in a copy of a real, interrupted ``codiag train`` run,
runs the real command on it, and checks that nothing outside the directory is created,
changed or deleted, and that the refusal is one line.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import threading
import time
import uuid
from collections import deque
from pathlib import Path

import pytest
import torch

import codiag
from codiag import checkpoint
from codiag.cli import main
from codiag.errors import UsageError
from codiag.runs import load_run

#: a short zerograd_rollback run (its method state holds roll-back checkpoints)
TRAIN = ("--model", "cnn4", "--method", "zerograd_rollback", "--train-limit", "256", "--batch-size", "128",
         "--epochs", "3", "--probes", "none", "--eval-n", "0", "--detector", "none", "--seed", "1", "--quiet")


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    try:
        rc = main(list(argv))
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def assert_one_line(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for f in fragments:
        assert f in lines[0], (f, err)


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` with a hash of its content: equal snapshots, nothing touched."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """A real run ended by SIGTERM just after its first epoch's checkpoint: status
    "interrupted", checkpoints/resume.pt in place."""
    run = tmp_path_factory.mktemp("interrupted") / "run"
    ckpt = run / "checkpoints" / checkpoint.RESUME_FILE

    def stop_after_first_checkpoint() -> None:
        deadline = time.monotonic() + 300
        while not ckpt.exists() and time.monotonic() < deadline:
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGTERM)   # the monitor turns it into an "interrupted" end

    watcher = threading.Thread(target=stop_after_first_checkpoint, daemon=True)
    watcher.start()
    # enough epochs that the signal always lands before the end
    cfg = _config(run, epochs=200)
    with pytest.raises(KeyboardInterrupt):
        codiag.train(cfg)
    watcher.join()
    assert load_run(run).status == "interrupted" and ckpt.exists()
    return run


def _config(out: Path, epochs: int = 200) -> dict:
    return {"out": str(out), "model": "cnn4", "method": "zerograd_rollback", "train_limit": 256, "batch_size": 128,
            "epochs": epochs, "probes": "none", "eval_n": 0, "detector": "none", "seed": 1, "progress": False}


@pytest.fixture()
def victim(tmp_path, interrupted) -> tuple[Path, Path]:
    """(a copy of the interrupted run, an outside folder holding a file someone cares about)."""
    run = tmp_path / "run"
    shutil.copytree(interrupted, run)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("not codiag's")
    return run, outside


def _resume_cli(capsys, run: Path) -> tuple[int, str]:
    cfg = _config(run)
    args = ["train", "--out", str(run), "--resume", "--model", "cnn4", "--method", "zerograd_rollback",
            "--train-limit", "256", "--batch-size", "128", "--epochs", str(cfg["epochs"]), "--probes", "none",
            "--eval-n", "0", "--detector", "none", "--seed", "1", "--quiet"]
    return run_cli(capsys, *args)


def _edit_resume(run: Path, edit) -> None:
    file = run / "checkpoints" / checkpoint.RESUME_FILE
    state = torch.load(file, weights_only=True)
    edit(state)
    torch.save(state, file)


# ------------------------------------------------------------------------- checkpoints are data
def test_resume_pt_naming_torch_save_as_optimizer_class_writes_nothing(victim, capsys):
    run, outside = victim
    target = outside / "written-by-checkpoint"
    before = snapshot(outside)
    _edit_resume(run, lambda s: s["method"].update(planted={
        "__optimizer__": "torch.optim.sgd:torch.save", "params": [],
        "defaults": {"__dict__": [["f", str(target)]]}, "state": {}}))
    rc, err = _resume_cli(capsys, run)
    assert not target.exists() and snapshot(outside) == before
    assert rc == 2
    assert_one_line(err, "resume.pt", "torch.optim.sgd:torch.save", "does not rebuild")


@pytest.mark.parametrize("record", [
    {"__object__": "codiag.methods.sample_store:torch.save", "vars": {"__dict__": []}},
    {"__object__": "codiag.checkpoint:torch.save", "vars": {"__dict__": []}},
    {"__optimizer__": "torch.optim:SGD.__init__.__globals__", "params": [], "defaults": {"__dict__": []},
     "state": {}},
    {"__optimizer__": "torch.optim.sgd:SGD", "params": ["__class__"], "defaults": {"__dict__": []}, "state": {}},
])
def test_checkpoint_classes_come_from_an_allow_list_by_exact_name(record):
    class Owner:
        pass

    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.decode(record, Owner())


def test_registered_objects_and_torch_optimizers_still_round_trip():
    from codiag.methods.step_tally import StepTally

    class Owner:
        pass

    owner = Owner()
    owner.w = torch.zeros(3, requires_grad=True)
    owner.opt = torch.optim.Adam([owner.w], lr=0.1)
    owner.tally = StepTally()
    state = checkpoint.encode_attributes(owner)
    fresh = Owner()
    checkpoint.decode_attributes(fresh, state)
    assert isinstance(fresh.opt, torch.optim.Adam) and fresh.opt.param_groups[0]["params"][0] is fresh.w
    assert isinstance(fresh.tally, StepTally)

    class Unregistered:
        pass

    Unregistered.__module__ = "codiag.elsewhere"
    owner.other = Unregistered()
    with pytest.raises(TypeError, match="cannot checkpoint"):
        checkpoint.encode_attributes(owner)


def test_zerograd_rollback_state_naming_an_outside_file_deletes_and_writes_nothing(victim, capsys):
    run, outside = victim
    precious = outside / "precious.txt"
    before = snapshot(outside)

    def plant(state):
        state["method"]["checkpoint_dir"] = str(outside)
        state["method"]["_checkpoints"] = {"__deque__": [{"__tuple__": [e, str(precious)]} for e in range(3)],
                                           "maxlen": 3}
    _edit_resume(run, plant)
    rc, err = _resume_cli(capsys, run)
    assert precious.exists() and snapshot(outside) == before
    assert rc == 2
    assert_one_line(err, "resume.pt", "checkpoint_dir")


def test_zerograd_rollback_checkpoint_dir_lives_in_the_run_directory(tmp_path):
    with pytest.raises(UsageError, match="leads outside"):
        codiag.train({**_config(tmp_path / "r", epochs=1), "method_args": {"checkpoint_dir": str(tmp_path / "x")}})
    with pytest.raises(UsageError, match="leads outside"):
        codiag.train({**_config(tmp_path / "r", epochs=1), "method_args": {"checkpoint_dir": "../x"}})
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------- a resume belongs to its run
def test_resume_pt_of_another_run_is_refused(victim, capsys):
    run, _ = victim
    other = run.parent / "other"
    shutil.copytree(run, other)                 # the same options, but another run:
    meta = json.loads((other / "run.json").read_text())
    meta["run_id"] = uuid.uuid4().hex           # ... with its own identity
    (other / "run.json").write_text(json.dumps(meta))
    rows = (other / "metrics.csv").read_text()
    rc, err = _resume_cli(capsys, other)
    assert rc == 2
    assert_one_line(err, "resume.pt", "another run")
    assert (other / "metrics.csv").read_text() == rows


def test_resume_pt_written_with_other_options_is_refused(victim, capsys):
    run, _ = victim
    _edit_resume(run, lambda s: s.update(config_hash="0" * 64))
    rc, err = _resume_cli(capsys, run)
    assert rc == 2
    assert_one_line(err, "resume.pt", "other training options")


@pytest.mark.parametrize("damage", ["random", "truncated", "missing_key"])
def test_damaged_resume_pt_is_one_line_naming_it(victim, capsys, damage):
    run, _ = victim
    file = run / "checkpoints" / checkpoint.RESUME_FILE
    if damage == "random":
        file.write_bytes(os.urandom(4096))
    elif damage == "truncated":
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    else:
        _edit_resume(run, lambda s: s.pop("loader_epoch"))
    rc, err = _resume_cli(capsys, run)
    assert rc == 2
    assert_one_line(err, str(file), *(["'loader_epoch'"] if damage == "missing_key" else []))
    assert "weights_only" not in err and "Traceback" not in err


def test_resume_and_overwrite_together_are_refused_before_anything_is_deleted(victim):
    run, _ = victim
    before = snapshot(run)
    with pytest.raises(UsageError, match="resume=True .* overwrite=True"):
        codiag.train(_config(run), resume=True, overwrite=True)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(UsageError, match="resume=True .* overwrite=True"):
        codiag.monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), str(run), eps=0.1,
                       probe_data=(torch.rand(4, 2), torch.zeros(4, dtype=torch.long)), probes="none",
                       resume=True, overwrite=True)
    assert snapshot(run) == before


def test_clean_copy_resumes_and_a_killed_writers_temporary_checkpoint_is_removed(victim):
    run, _ = victim
    planted = run / "checkpoints" / ".resume.pt.k1ll3d_x.tmp"   # atomic.py's name for a write a kill cut
    planted.write_bytes(b"half a checkpoint")
    stray = run / "checkpoints" / "notes.txt"                   # not codiag's: stays
    stray.write_text("mine")
    cfg = _config(run)
    before = json.loads((run / "run.json").read_text())["run_id"]
    # the same run, shortened to its next epoch: options must match, so edit the record as a user cannot;
    # instead resume with the run's own options and stop it again right after the next checkpoint
    ckpt = run / "checkpoints" / checkpoint.RESUME_FILE
    mtime = ckpt.stat().st_mtime_ns

    def stop_after_next_checkpoint() -> None:
        deadline = time.monotonic() + 300
        while (not ckpt.exists() or ckpt.stat().st_mtime_ns == mtime) and time.monotonic() < deadline:
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGTERM)

    watcher = threading.Thread(target=stop_after_next_checkpoint, daemon=True)
    watcher.start()
    with pytest.raises(KeyboardInterrupt):
        codiag.train(cfg, resume=True)
    watcher.join()
    assert not planted.exists() and stray.read_text() == "mine"
    run_rec = load_run(run)
    assert run_rec.status == "interrupted" and run_rec.meta["run_id"] == before
    assert [e["kind"] for e in run_rec.events].count("resume") == 1
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2


def test_checkpoint_bytes_are_weights_only():
    buf = io.BytesIO()
    torch.save({"d": deque([1, 2])}, buf)
    buf.seek(0)
    with pytest.raises(Exception):  # noqa: B017 (torch's error type differs across versions)
        torch.load(buf, weights_only=True)   # a deque is not weights-only: encode() must tag it
    assert checkpoint.decode(checkpoint.encode(deque([1, 2], maxlen=3))) == deque([1, 2], maxlen=3)


# ------------------------------------------------------------------------- a sweep stays inside its directory
SWEEP_TINY = dict(train_limit=256, epochs=1, eval_n=32, eval_steps=3, eval_restarts=1, probes="none")


@pytest.fixture()
def sweep_area(tmp_path) -> tuple[Path, Path]:
    """(an area holding an existing sweep directory and a folder someone cares about, the sweep)."""
    from codiag.sweeps.grid import protocol_of
    from codiag.sweeps.index import open_index

    root = tmp_path / "area" / "sweep"
    open_index(root, protocol_of(SWEEP_TINY, {}), [])
    (tmp_path / "area" / "outside").mkdir()
    (tmp_path / "area" / "outside" / "precious.txt").write_text("not codiag's")
    return tmp_path / "area", root


def _edit_index(root: Path, edit) -> None:
    index = json.loads((root / "sweep.json").read_text())
    edit(index)
    (root / "sweep.json").write_text(json.dumps(index))


def _outside_of(area: Path) -> dict[str, str]:
    return {k: v for k, v in snapshot(area).items() if not k.startswith("sweep")}


@pytest.mark.parametrize("cell,fragment", [
    ({"name": "x", "method": "x/../../../escaped/fgsm", "eps": 0.1, "seed": 0}, "not a codiag method"),
    ({"method": "fgsm+guard-../../escaped", "eps": 0.1, "seed": 0}, "not a codiag method"),
    ({"method": "FGSM+guard", "eps": 0.1, "seed": 0}, "not a codiag method"),
    ({"name": "../escaped-eps0.1-seed0", "method": "fgsm", "eps": 0.1, "seed": 0}, "as codiag names it"),
    ({"method": "fgsm", "eps": 7, "seed": 0}, "eps must be"),
    ({"method": "fgsm", "eps": 0.1, "seed": -3}, "seed must be"),
])
def test_crafted_sweep_cell_is_refused_before_any_path_is_built(sweep_area, cell, fragment):
    area, root = sweep_area
    before = _outside_of(area)
    _edit_index(root, lambda ix: ix["cells"].append(cell))
    with pytest.raises(UsageError, match=fragment) as err:
        codiag.sweep("fgsm", "0.1", "0", out=root, jobs=1, echo=False, **SWEEP_TINY)
    assert "\n" not in str(err.value) and "sweep.json" in str(err.value)
    assert _outside_of(area) == before and not (root / "fgsm-eps0.1-seed0").exists()


@pytest.mark.parametrize("link", [".claims", ".claims/fgsm-eps0.1-seed0.lock", "fgsm-eps0.1-seed0"])
def test_sweep_refuses_symbolic_links_for_claims_and_runs(sweep_area, link):
    area, root = sweep_area
    target = area / "outside" / ("precious.txt" if link.endswith(".lock") else "")
    (root / link).parent.mkdir(exist_ok=True)
    (root / link).symlink_to(target)
    before = _outside_of(area)
    with pytest.raises(UsageError, match="symbolic link") as err:
        codiag.sweep("fgsm", "0.1", "0", out=root, jobs=1, echo=False, **SWEEP_TINY)
    assert "\n" not in str(err.value)
    assert _outside_of(area) == before


def test_claims_inside_the_sweep_are_refused_as_links_and_created_with_explicit_modes(sweep_area):
    from codiag.sweeps.index import Claim

    _, root = sweep_area
    (root / "elsewhere").mkdir()
    (root / ".claims").symlink_to(root / "elsewhere")       # inside the sweep, still not its claims folder
    with pytest.raises(UsageError, match="symbolic link"):
        Claim(root, "fgsm-eps0.1-seed0").acquire()
    (root / ".claims").unlink()
    old = os.umask(0o077)                                   # a strict umask must not hide who holds a claim
    try:
        with Claim(root, "fgsm-eps0.1-seed0") as claim:
            assert claim.acquire()
            assert (claim.path.stat().st_mode & 0o777) == 0o644
    finally:
        os.umask(old)


@pytest.mark.parametrize("edit,fragment", [
    (lambda ix: ix.update(cells={"fgsm": 1}), "cells is dict"),
    (lambda ix: ix.update(format_version="1"), "format_version"),
    (lambda ix: ix.update(protocol=["epochs", 1]), "protocol is list"),
    (lambda ix: ix["cells"].append({"method": "fgsm", "eps": 0.1, "seed": [1]}), "seed must be"),
    (lambda ix: ix["cells"].append({"method": "fgsm", "eps": "0.1", "seed": 0}), "eps must be"),
    (lambda ix: ix["cells"].append(["fgsm", 0.1, 0]), "not an object"),
])
def test_hand_edited_sweep_json_of_the_wrong_type_is_one_line(sweep_area, capsys, edit, fragment):
    _, root = sweep_area
    _edit_index(root, edit)
    rc, err = run_cli(capsys, "sweep", "--methods", "fgsm", "--eps", "0.1", "--out", str(root), "--epochs", "1",
                      "--train-limit", "256", "-q")
    assert rc == 2
    assert_one_line(err, "sweep.json", fragment)


# ------------------------------------------------------------------------- one-line errors, nothing left behind
def test_truncated_idx_file_is_reported_as_truncated_and_leaves_no_run_directory(tmp_path, capsys):
    import gzip

    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in Path("/usr/share/datasets/fashion-mnist").glob("*.gz"):
        data = gzip.decompress(f.read_bytes())
        (raw / f.name[:-3]).write_bytes(data[:100_000] if f.name.startswith("train-images") else data)
    out = tmp_path / "r"
    rc, err = run_cli(capsys, "train", "--data-root", str(tmp_path / "data"), "--epochs", "0", "--quiet",
                      "--out", str(out))
    assert rc == 2
    assert_one_line(err, "train-images-idx3-ubyte", "truncated")
    assert "not found" not in err and not out.exists()


def test_the_same_run_named_twice_in_a_report_is_drawn_once(interrupted):
    from codiag.reports.build import load_runs

    warnings: list[str] = []
    runs = load_runs([interrupted, f"{interrupted}/", interrupted / ".", interrupted.parent], warnings)
    assert len(runs) == 1 and not warnings


def test_zerograd_rollback_file_checkpoints_are_named_by_epoch_in_the_live_folder(tmp_path):
    from codiag.methods import get_method

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 10, (8,))
    ck = tmp_path / "run" / "ck"
    m = get_method("zerograd_rollback", 0.1, checkpoint_dir=str(ck), keep=2)
    for epoch in range(4):
        m.train_step(model, opt, x, y)
        m.on_epoch_end(epoch, model, opt, False)
    assert sorted(p.name for p in ck.iterdir()) == ["zerograd-rollback-0002.pt", "zerograd-rollback-0003.pt"]
    state = m.state_dict()
    assert "checkpoint_dir" not in state and str(ck) not in repr(state)
    fresh = get_method("zerograd_rollback", 0.1, checkpoint_dir=str(ck), keep=2)
    fresh.load_state_dict(torch.load(io.BytesIO(_saved(state)), weights_only=True))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    model.apply(lambda mod: torch.nn.init.zeros_(mod.weight) if isinstance(mod, torch.nn.Linear) else None)
    assert fresh.on_epoch_end(4, model, opt, True)          # rolls back to the end of epoch 3, from its file
    assert fresh.last_rollback["restored_epoch"] == 3
    assert all(torch.equal(model.state_dict()[k], weights[k]) for k in weights)


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_full_disk_at_the_first_array_write_leaves_run_json_failed(tmp_path):
    """The disk fills after the run started: the first array (a 51 KB filter snapshot) no longer
    fits, and neither does a new run.json; the run still ends "failed", not "running"."""
    import resource

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 512, 5), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(512 * 4 * 4, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    out = tmp_path / "r"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    with pytest.raises(OSError, match="File too large"):
        try:
            with codiag.monitor(model, opt, str(out), eps=0.1, probe_data=(x, y), probes="filters",
                                every="epoch") as mon:
                limit = (out / "run.json").stat().st_size + 24          # no room for a larger file
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                mon.epoch_end()
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    run = load_run(out)
    assert run.status == "failed" and not (out / "run.lock").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
