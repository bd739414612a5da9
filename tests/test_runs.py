"""The run directory: append-only rows, atomic files, lock, partial-write tolerance."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from codiag.errors import UsageError
from codiag.runs import FORMAT_VERSION, RunWriter, iter_runs, load_run


def test_roundtrip_scalars_arrays_events(tmp_path):
    with RunWriter(tmp_path / "r", {"eps": 0.2, "method": "fgsm"}) as w:
        w.log(0, 0, "robust_acc", "pgd_acc", torch.tensor(0.25))
        w.log_many(5, 1, "grad_align", {"mean": 0.5, "n": torch.tensor(3)})
        w.save_array("instance_grad_norm", 5, torch.arange(6.0))
        w.event("co_alarm", step=5, epoch=1, values={"pgd_acc": torch.tensor(0.0)})
    run = load_run(tmp_path / "r")
    assert run.config == {"eps": 0.2, "method": "fgsm"}
    assert run.meta["format_version"] == FORMAT_VERSION and run.status == "finished"
    assert run.meta["env"]["torch"] == torch.__version__
    assert list(run.metrics.columns) == ["step", "epoch", "probe", "key", "value"]
    assert run.scalar("grad_align", "mean")["value"].tolist() == [0.5]
    assert run.scalar("robust_acc", "pgd_acc")["value"].tolist() == [0.25]
    np.testing.assert_array_equal(run.arrays("instance_grad_norm")[5], np.arange(6.0))
    assert run.array_names() == ["instance_grad_norm"]
    alarm = run.events_of("co_alarm")
    assert alarm[0]["values"] == {"pgd_acc": 0.0} and alarm[0]["step"] == 5


def test_rows_reach_disk_at_flush_not_before(tmp_path):
    w = RunWriter(tmp_path / "r", {})
    w.log(1, 0, "p", "k", 1.0)
    assert load_run(tmp_path / "r").metrics.empty
    w.flush()
    assert len(load_run(tmp_path / "r").metrics) == 1
    w.close()


def test_second_writer_refused_while_first_alive(tmp_path):
    w = RunWriter(tmp_path / "r", {})
    # A live foreign pid in the lock file: the parent process of this test.
    (tmp_path / "r" / "run.lock").write_text(str(os.getppid()))
    with pytest.raises(UsageError, match="being written"):
        RunWriter(tmp_path / "r", {}, resume=True)
    (tmp_path / "r" / "run.lock").write_text(str(os.getpid()))
    w.close()
    assert not (tmp_path / "r" / "run.lock").exists()


def test_existing_run_not_overwritten_silently(tmp_path):
    RunWriter(tmp_path / "r", {"a": 1}).close()
    with pytest.raises(UsageError, match="already holds a run"):
        RunWriter(tmp_path / "r", {"a": 2})
    w = RunWriter(tmp_path / "r", {}, resume=True)
    w.log(3, 0, "p", "k", 2.0)
    w.close()
    run = load_run(tmp_path / "r")
    assert run.config == {"a": 1} and [e["kind"] for e in run.events].count("resume") == 1


def test_half_written_lines_are_ignored_and_resume_appends_cleanly_after_them(tmp_path):
    with RunWriter(tmp_path / "r", {}) as w:
        w.log(0, 0, "p", "k", 1.0)
    with open(tmp_path / "r" / "metrics.csv", "a") as f:
        f.write("7,1,p,k,0.3")          # a writer killed mid-line
    with open(tmp_path / "r" / "events.jsonl", "a") as f:
        f.write('{"kind": "co_al')
    run = load_run(tmp_path / "r")
    assert run.metrics["step"].tolist() == [0]
    assert [e["kind"] for e in run.events] == ["run_start", "run_end"]
    with RunWriter(tmp_path / "r", {}, resume=True) as w:
        w.log(8, 1, "p", "k", 2.0)
    run = load_run(tmp_path / "r")
    assert run.metrics["step"].tolist() == [0, 8]
    assert [e["kind"] for e in run.events] == ["run_start", "run_end", "resume", "run_end"]


def test_sigkill_mid_run_keeps_flushed_rows(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        from codiag.runs import RunWriter
        w = RunWriter({str(tmp_path / 'r')!r}, {{}})
        for i in range(5):
            w.log(i, 0, "p", "k", float(i))
            w.flush()
        w.log(99, 0, "p", "k", 9.0)  # buffered, never flushed
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -9
    run = load_run(tmp_path / "r")
    assert run.status == "running"
    assert run.metrics["step"].tolist() == [0, 1, 2, 3, 4]
    # the dead writer's lock is stale: a resume takes it over
    RunWriter(tmp_path / "r", {}, resume=True).close()


def test_load_run_errors_are_one_line(tmp_path):
    for bad, msg in ((tmp_path / "missing", "no such run"), (tmp_path, "no run.json")):
        with pytest.raises(UsageError, match=msg):
            load_run(bad)
    (tmp_path / "run.json").write_text("{")
    with pytest.raises(UsageError, match="unreadable"):
        load_run(tmp_path)


def test_iter_runs_expands_a_folder_of_runs(tmp_path):
    for name in ("a", "b"):
        RunWriter(tmp_path / name, {"name": name}).close()
    assert [r.config["name"] for r in iter_runs([tmp_path])] == ["a", "b"]


def test_run_json_is_valid_json_at_all_times(tmp_path):
    w = RunWriter(tmp_path / "r", {"x": 1})
    for i in range(20):
        w.update(progress=i)
        json.loads((tmp_path / "r" / "run.json").read_text())
    w.close()
    assert not list((tmp_path / "r").glob(".*.tmp"))
