"""Eps sweeps with the local executor: the grid, sweep.json, exactly-once resumption of an
interrupted sweep, grid extension, protocol conflicts, the sweep report and the presets.

Real tiny runs: cnn4 on the first 256 Fashion-MNIST images, 1 epoch, evaluation on 32
test points; a real worker pool and a real SIGINT.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import codiag
from codiag.cli import main
from codiag.errors import UsageError
from codiag.sweeps.grid import Cell, eps_tag, make_cells
from codiag.sweeps.presets import SWEEP_PRESETS
from codiag.trainer import TrainConfig

TINY = dict(train_limit=256, epochs=1, eval_n=32, eval_steps=3, eval_restarts=1, probes="robust_acc,grad_align")
TINY_CLI = ["--train-limit", "256", "--epochs", "1", "--eval-n", "32", "--eval-steps", "3",
            "--eval-restarts", "1", "--probes", "robust_acc,grad_align", "-q"]


def run_starts(run_dir: Path) -> int:
    """How many times a run was started or resumed (its events)."""
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line]
    return sum(e["kind"] in ("run_start", "resume") for e in events)


def test_cells_names_and_bad_input():
    cells = make_cells("fgsm,n-fgsm", "8/255,0.1,8/255", "0,1")
    assert [c.name for c in cells][:3] == ["fgsm-eps8_255-seed0", "fgsm-eps8_255-seed1", "fgsm-eps0.1-seed0"]
    assert len(cells) == 8 and {c.method for c in cells} == {"fgsm", "n_fgsm"}
    assert eps_tag(0.2) == "0.2" and Cell("pgd10", 16 / 255, 3).name == "pgd10-eps16_255-seed3"
    guarded = make_cells("fgsm+guard,fgsm+guard-halve-step,fgsm+guard-n_fgsm", "0.25", "0")
    assert [c.name for c in guarded] == ["fgsm+guard-eps0.25-seed0", "fgsm+guard-halve-step-eps0.25-seed0",
                                         "fgsm+guard-n_fgsm-eps0.25-seed0"]
    assert [Cell.from_dict(c.to_dict()) for c in guarded] == guarded      # what sweep.json gives back
    for methods, eps, seeds in (("nope", "0.1", "0"), ("fgsm", "2", "0"), ("fgsm", "0.1", "x"), ("", "0.1", "0")):
        with pytest.raises(UsageError):
            make_cells(methods, eps, seeds)


def exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:           # argparse's own errors
        return int(e.code)


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    for extra in (["--methods", "fgsm", "--eps", "abc"], ["--methods", "fgsm", "--eps", "0.1", "-m", "lam=2"],
                  ["--methods", "fgsm", "--eps", "0.1", "--jobs", "0"], ["--methods", "nope", "--eps", "0.1"],
                  ["--methods", "fgsm", "--eps", "0.1", "--ray-address", "127.0.0.1:1"]):
        assert exit_code(["sweep", *extra, "--out", str(tmp_path / "s")]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
    (tmp_path / "mine.txt").write_text("not a sweep")
    assert exit_code(["sweep", "--methods", "fgsm", "--eps", "0.1", "--out", str(tmp_path), *TINY_CLI]) == 2
    assert "not a sweep directory" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "not a sweep" and not (tmp_path / "sweep.json").exists()


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A sweep interrupted by SIGINT while its second run trains, then resumed in-process: the
    finished run is not repeated, the interrupted one is completed."""
    out = tmp_path_factory.mktemp("sweep") / "s"
    cmd = [sys.executable, "-m", "codiag", "sweep", "--methods", "fgsm,pgd10", "--eps", "0.1,0.3",
           "--seeds", "0", "--jobs", "1", "--out", str(out), *TINY_CLI]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
                            # a suite started in the background ignores SIGINT: let the sweep see it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = out / "fgsm-eps0.1-seed0" / "run.json"
    second = out / "fgsm-eps0.3-seed0" / "run.json"      # cells run one after the other here
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not second.exists():   # the first is done, the second training
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)        # Ctrl-C
    log = proc.communicate(timeout=60)[0]
    statuses = {p.name: json.loads((p / "run.json").read_text())["status"]
                for p in out.iterdir() if (p / "run.json").exists()}
    first_meta = json.loads(first.read_text())
    result = codiag.sweep("fgsm,pgd10", "0.1,0.3", "0", out=out, jobs=1, **TINY)
    return out, log, statuses, first_meta, result


def test_interrupted_sweep_resumes_without_repeating(swept):
    out, log, statuses, first_meta, result = swept
    assert "0 of 4 done" in log and "interrupted" in log and statuses["fgsm-eps0.1-seed0"] == "finished"
    assert list(statuses.values()).count("finished") < 4, statuses
    assert result.done == result.total == 4 and not result.failed
    # the run finished before the interruption was not trained again
    assert json.loads((out / "fgsm-eps0.1-seed0" / "run.json").read_text())["start_time"] == first_meta["start_time"]
    assert run_starts(out / "fgsm-eps0.1-seed0") == 1
    assert all(json.loads((out / c.name / "run.json").read_text())["status"] == "finished" for c in result.cells)
    index = json.loads((out / "sweep.json").read_text())
    assert len(index["cells"]) == 4 and index["protocol"]["epochs"] == 1 and index["codiag"] == codiag.__version__


def test_rerun_skips_extension_adds_conflict_refused(swept, capsys):
    out, *_ = swept
    before = {p.name: run_starts(p) for p in out.iterdir() if (p / "run.json").exists()}
    again = codiag.sweep("fgsm,pgd10", "0.1,0.3", "0", out=out, jobs=1, **TINY)
    assert "4 of 4 done, 0 to run" in capsys.readouterr().out
    assert again.done == 4 and {p.name: run_starts(p) for p in out.iterdir() if (p / "run.json").exists()} == before
    # two new cells, on a pool of two worker processes
    bigger = codiag.sweep("fgsm", "0.1,0.2,0.25", "0", out=out, jobs=2, **TINY)
    assert bigger.total == 6 and bigger.done == 6
    assert {r["name"] for r in bigger.results} == {"fgsm-eps0.2-seed0", "fgsm-eps0.25-seed0"}
    assert all(r["status"] == "trained" and r["pid"] != os.getpid() for r in bigger.results)
    with pytest.raises(UsageError, match="another protocol"):
        codiag.sweep("fgsm", "0.1", "0", out=out, **{**TINY, "epochs": 2})


def test_a_finished_run_of_a_setting_that_changed_since_is_refused(swept, monkeypatch):
    """A validated setting that changed after a cell was trained (here: a new row for FGSM at eps
    0.1) is refused in one line naming the run, rather than mixing two settings in one table."""
    from codiag.methods import settings
    out, *_ = swept
    row = settings.Setting("fgsm", "fashion_mnist", 0.1, {"step": 0.5}, "a test")
    monkeypatch.setattr(settings, "SETTINGS", (*settings.SETTINGS, row))
    before = {p.name: run_starts(p) for p in out.iterdir() if (p / "run.json").exists()}
    with pytest.raises(UsageError, match=r"fgsm-eps0\.1-seed0 .*method_args=\{\}, .*\{'step': 0\.5\}"):
        codiag.sweep("fgsm,pgd10", "0.1,0.3", "0", out=out, jobs=1, **TINY)
    assert {p.name: run_starts(p) for p in out.iterdir() if (p / "run.json").exists()} == before


def test_sweep_report_draws_the_figures(swept, tmp_path):
    out, *_ = swept
    assert main(["report", str(out), "-o", str(tmp_path / "rep")]) == 0
    for key in ("robust_vs_eps", "co_rate", "accuracy_vs_cost", "detector_scorecard"):
        assert list((tmp_path / "rep").rglob(f"{key}.png")) and list((tmp_path / "rep").rglob(f"{key}.svg")), key
    table = pd.read_csv(tmp_path / "rep" / "sweep_summary.csv")
    assert len(table) == 6 and set(table["method"]) == {"fgsm", "pgd10"}
    assert table.loc[table["method"] == "fgsm", "cost_vs_fgsm"].groupby(table["eps"]).mean().round(6).eq(1).all()
    # the machine-independent cost, counted on the model: FGSM's attack and update, PGD-10's 10 steps and update
    evals = table.groupby("method")["grad_evals_per_step"].agg(["min", "max"])
    assert evals.loc["fgsm"].tolist() == [2, 2] and evals.loc["pgd10"].tolist() == [11, 11]
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "Detector scorecard" in page and "Accuracy vs training eps" in page


def test_presets_specs():
    preset = SWEEP_PRESETS["gradalign-fig1"]
    emb, pap = preset.scales["embedded"], preset.scales["paper"]
    wanted = {"fgsm", "fgsm_rs", "n_fgsm", "gradalign", "zerograd", "atas", "pgd10"}
    assert wanted <= set(emb.methods) and wanted <= set(pap.methods)
    assert len(emb.eps) >= 6 and len(emb.seeds) >= 3 and emb.options["dataset"] == "fashion_mnist"
    assert [round(float(eval(e)) * 255) for e in pap.eps] == list(range(1, 17)) and len(pap.seeds) == 5
    assert pap.options["model"] == "preact_resnet18" and pap.options["dataset"] == "cifar10"
    assert (pap.options["eval_steps"], pap.options["eval_restarts"]) == (50, 10)
    from codiag.sweeps.grid import cell_config, protocol_of, split_method_args
    for spec in (emb, pap):
        cells = make_cells(spec.methods, spec.eps, spec.seeds)
        assert len(cells) == spec.runs
        protocol = protocol_of(spec.options, split_method_args(spec.method_args, spec.methods))
        cfgs = {c.name: TrainConfig.from_dict(cell_config(c, protocol, "x", device="cpu")) for c in cells}
        ga16 = cfgs.get("gradalign-eps16_255-seed0")
        if ga16 is not None:       # the paper's lambda at 16/255 reaches the method (App. B, Table 2)
            from codiag.methods import get_method
            assert get_method("gradalign", ga16.eps, **ga16.method_args).lam == pytest.approx(2.0)
    assert cfgs["atas-eps8_255-seed4"].epochs == 30
    emb_cfg = TrainConfig.from_dict(cell_config(Cell("zerograd", 0.2, 0), protocol_of(emb.options, {}), "x"))
    assert emb_cfg.method_args["step"] == 0.75          # the validated setting at Fashion-MNIST eps 0.2


def test_reproduce_lists_the_sweep_preset(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("gradalign-fig1 "))
    assert "126" in line and "560" in line


def test_help_states_the_default_evaluation_cost(capsys):
    """The final evaluation dominates a short run's cost: `codiag sweep --help` says what it is by default."""
    d = TrainConfig()
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"PGD-{d.eval_steps} with {d.eval_restarts} restarts on {d.eval_n} test points" in text
    assert f"{d.eval_steps * d.eval_restarts * d.eval_n:,} per run" in text and "(default 1000; 0 skips it)" in text


@pytest.mark.slow
def test_sweep_prints_progress_and_a_results_table(tmp_path, capsys):
    """While a run trains the sweep prints its epoch, its alarm and the time left; at the end a
    table of robust accuracy per method and eps (mean +/- std over seeds) with the CO rate."""
    result = codiag.sweep("fgsm", "0.1", "0", out=tmp_path / "s", jobs=1, progress_s=0.05,
                          **{**TINY, "epochs": 2})
    assert result.done == 1
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("  fgsm-eps0.1-seed")]
    assert any(re.fullmatch(r"  fgsm-eps0\.1-seed0: epoch 1/2, (no CO alarm|CO alarm at epoch \d+), about \d+ s left",
                            ln) for ln in lines), out
    assert len(lines) == len(set(lines))        # a line only when a run's epoch or alarm changed
    head = out.index("results (final PGD-3-1 accuracy, mean +/- std over seeds")
    table = out[head:].splitlines()
    assert table[1].split() == ["method", "eps", "seeds", "clean", "PGD", "CO", "rate", "alarm", "rate"]
    row = table[2].split()
    assert row[:3] == ["fgsm", "0.1", "1"] and row[4] == row[7] == "+/-" and row[9] in ("0.00", "0.50", "1.00")
def test_progress_of_a_guarded_run_counts_the_epochs_its_roll_back_retrains(tmp_path):
    """After a roll-back the run trains past its schedule's last epoch (epochs count training as it
    happened): the progress line adds the retrained epochs and says that the guard rolled back."""
    import datetime
    import json

    from codiag.sweeps.progress import progress_line, run_progress

    run = tmp_path / "fgsm+guard-eps0.25-seed0"
    run.mkdir()
    started = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=70)
    (run / "run.json").write_text(json.dumps({"status": "running", "start_time": started.isoformat()}))
    (run / "metrics.csv").write_text("step,epoch,probe,key,value\n224,7,robust_acc,pgd_acc,0.3\n")
    (run / "events.jsonl").write_text("\n".join(json.dumps(e) for e in (
        {"kind": "co_alarm", "step": 96, "epoch": 3},
        {"kind": "rollback", "step": 96, "epoch": 3, "restored_step": 64, "restored_epoch": 2, "mitigation": "n_fgsm"},
        {"kind": "rollback", "epoch": 5, "restored_epoch": 4, "q_from": 0.35, "q_to": 0.5})) + "\n")  # ZeroGrad's
    p = run_progress(run, 6)
    assert (p["epoch"], p["epochs"], p["alarm_epoch"], p["rollbacks"]) == (7, 7, 3, 1)
    assert re.fullmatch(r"  x: epoch 7/7, CO alarm at epoch 3, 1 roll-back, about 0 s left", progress_line("x", p))


def test_a_killed_sweep_run_resumes_to_the_uninterrupted_rows(tmp_path):
    """SIGKILL a sweep just after its run's first checkpoint, sweep again: the resumed run's
    metrics.csv equals an uninterrupted run's row for row, values included (the probes that
    measure change since the previous event carry their state through resume.pt)."""
    opts = {**TINY, "epochs": 3, "eval_n": 0, "probes": "robust_acc,weight_update,perturbation_delta"}
    cli = ["--train-limit", "256", "--epochs", "3", "--eval-n", "0", "--eval-steps", "3", "--eval-restarts", "1",
           "--probes", "robust_acc,weight_update,perturbation_delta", "-q"]
    out = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-m", "codiag", "sweep", "--methods", "fgsm", "--eps", "0.1",
                             "--seeds", "0", "--jobs", "1", "--out", str(out), *cli],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    run = out / "fgsm-eps0.1-seed0"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (run / "checkpoints" / "resume.pt").exists() and proc.poll() is None:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "checkpoints" / "final.pt").exists(), "the run ended before it could be killed"
    resumed = codiag.sweep("fgsm", "0.1", "0", out=out, jobs=1, echo=False, **opts)
    assert [r["status"] for r in resumed.results] == ["resumed"]
    codiag.sweep("fgsm", "0.1", "0", out=tmp_path / "whole", jobs=1, echo=False, **opts)
    a, b = codiag.load_run(run), codiag.load_run(tmp_path / "whole" / run.name)
    assert a.scalar("weight_update", "l2_all")["epoch"].tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(a.metrics, b.metrics)


def test_workers_of_a_sweep_ended_by_sigterm_stop_and_their_runs_resume(tmp_path):
    """SIGTERM to the ``codiag sweep`` process alone (as a scheduler or ``kill`` sends it) while its two
    worker processes train: the workers end their runs "interrupted" and exit instead of training on
    orphaned; the same command then resumes both runs."""
    psutil = pytest.importorskip("psutil")
    cli = ["--train-limit", "256", "--epochs", "40", "--eval-n", "0", "--eval-steps", "3", "--eval-restarts", "1",
           "--probes", "robust_acc", "-q"]
    out = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-m", "codiag", "sweep", "--methods", "fgsm", "--eps", "0.1,0.3",
                             "--seeds", "0", "--jobs", "2", "--threads-per-run", "1", "--out", str(out), *cli],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    runs = [out / "fgsm-eps0.1-seed0", out / "fgsm-eps0.3-seed0"]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not all(
            (r / "checkpoints" / "resume.pt").exists() for r in runs):
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before both runs trained"
    workers = [c for c in psutil.Process(proc.pid).children(recursive=True)
               if "resource_tracker" not in " ".join(c.cmdline())]
    assert len(workers) == 2, [c.cmdline() for c in workers]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    gone, alive = psutil.wait_procs(workers, timeout=60)
    assert not alive, f"{len(alive)} worker(s) still training after their sweep ended"
    assert {json.loads((r / "run.json").read_text())["status"] for r in runs} == {"interrupted"}
    assert all(not (r / "checkpoints" / "final.pt").exists() for r in runs)
    resumed = codiag.sweep("fgsm", "0.1,0.3", "0", out=out, jobs=2, threads_per_run=1, echo=False, train_limit=256,
                           epochs=40, eval_n=0, eval_steps=3, eval_restarts=1, probes="robust_acc")
    assert [r["status"] for r in resumed.results] == ["resumed", "resumed"]
