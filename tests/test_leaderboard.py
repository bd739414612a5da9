"""The leaderboard of a sweep under the FastAT Benchmark's protocol and its table exports, the
``fastat-cifar10`` preset's definition, and the peak memory in run.json.

Real tiny runs: cnn4 on the first 300 Fashion-MNIST images (60 held out), 2 epochs, weight
averaging and the best checkpoint by PGD-10 on the held-out images, 2 methods x 1 eps x 2 seeds.
"""
from __future__ import annotations

import json

import pandas as pd
import pytest

import codiag
from codiag.cli import main
from codiag.fastat import FASTAT_ROSTER
from codiag.sweeps.grid import cell_config, make_cells, protocol_of, split_method_args
from codiag.sweeps.presets import SWEEP_PRESETS
from codiag.trainer import TrainConfig

TINY = dict(train_limit=300, val_split=60, epochs=2, eval_n=32, eval_steps=3, eval_restarts=1, probe_n=32,
            train_probe_n=32, probes="robust_acc", weight_averaging=0.9, select="best", label_smoothing=0.4,
            optimizer="sgd", lr=0.05, lr_schedule="onecycle")


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("lb") / "sweep"
    result = codiag.sweep("fgsm,fgsm_rs", "0.2", "0,1", out=out, jobs=1, echo=False, **TINY)
    assert result.done == result.total == 4
    return out


def test_run_json_records_peak_memory_and_the_three_models(swept):
    meta = json.loads((swept / "fgsm-eps0.2-seed0" / "run.json").read_text())
    assert meta["peak_memory"]["measure"] == "process_max_rss"     # the CPU: the process's max RSS
    assert meta["peak_memory"]["bytes"] > 50 * 2**20                # a process that imported torch
    assert {"averaged", "best"} <= set(meta["final"]) and "pgd_acc" in meta["final"]["best"]


def test_report_has_the_leaderboard_and_the_three_table_formats(swept, tmp_path, capsys):
    rep = tmp_path / "rep"
    assert main(["report", str(swept), "-o", str(rep), "--table", "latex"]) == 0
    printed = capsys.readouterr().out
    assert list(rep.rglob("leaderboard.png")) and list(rep.rglob("leaderboard.svg"))
    csv, md, tex = (next(rep.rglob(f"leaderboard.{s}")) for s in ("csv", "md", "tex"))
    table = pd.read_csv(csv)
    assert sorted(table["method"]) == ["fgsm", "fgsm_rs"] and (table["seeds"] == 2).all()
    # mean and std over the two seeds of each model's final PGD accuracy, read back from the runs
    for _, row in table.iterrows():
        for model, where in (("raw", ()), ("averaged", ("averaged",)), ("best", ("best",))):
            accs = []
            for seed in (0, 1):
                final = json.loads((swept / f"{row['method']}-eps0.2-seed{seed}" / "run.json").read_text())["final"]
                for key in where:
                    final = final[key]
                accs.append(final["pgd_acc"])
            assert row[f"{model}_pgd"] == pytest.approx(sum(accs) / 2, abs=1e-4)
            assert row[f"{model}_pgd_std"] == pytest.approx(abs(accs[0] - accs[1]) / 2, abs=1e-4)
    assert row["peak_memory_mib"] > 50 and row["train_time_s"] > 0
    assert md.read_text().startswith("| method") and "±" in md.read_text() and "best PGD" in md.read_text()
    latex = tex.read_text()
    assert "\\begin{tabular}" in latex and "$\\pm$" in latex and "FGSM-RS" in latex
    assert latex in printed and "process_max_rss" in latex.replace("\\_", "_")
    page = (rep / "index.html").read_text()
    assert "Leaderboard" in page
    assert "FastAT Benchmark (published" not in page       # Fashion-MNIST: no published numbers beside


def test_a_run_at_chance_is_counted_and_said_apart_from_collapse(swept, tmp_path):
    """A raw model at chance clean accuracy (a constant classifier: training diverged) is counted per
    method and named in a note, not in the collapse column."""
    import shutil

    from codiag.reports.leaderboard import leaderboard
    from codiag.runs import load_run

    copy = tmp_path / "sweep"
    shutil.copytree(swept, copy)
    names = [f"{m}-eps0.2-seed{s}" for m in ("fgsm", "fgsm_rs") for s in (0, 1)]
    for name in names:           # the tiny runs' accuracies are noise: set them (10 classes, chance 0.1)
        meta = json.loads((copy / name / "run.json").read_text())
        meta["final"]["clean_acc"] = 0.1 if name == "fgsm-eps0.2-seed1" else 0.16
        if name == "fgsm_rs-eps0.2-seed0":
            meta["config"]["dataset"] = "my_own_data"      # a dataset codiag does not know: ten classes
        (copy / name / "run.json").write_text(json.dumps(meta))
    fig = leaderboard([load_run(copy / n) for n in names], tmp_path / "out")
    shown = fig.table.set_index("method")
    assert shown.loc["FGSM", "at chance"] == "1/2" and shown.loc["FGSM-RS", "at chance"] == "0/2"
    assert shown.loc["FGSM", "collapsed"] == "0/2"
    assert [n for n in fig.notes if "chance" in n] == [
        "FGSM at eps 0.2 ended at chance clean accuracy in 1/2 seeds (a constant classifier: training diverged; "
        "not counted as CO)"]


def test_table_needs_a_sweep(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--table", "csv"]) == 2
    assert "--table needs one sweep directory" in capsys.readouterr().err


def test_fastat_preset_definition():
    preset = SWEEP_PRESETS["fastat-cifar10"]
    emb, pap = preset.scales["embedded"], preset.scales["paper"]
    roster = {e.codiag for e in FASTAT_ROSTER if e.codiag}
    assert set(pap.methods) == set(emb.methods) == roster and "sora" in roster and len(pap.methods) == 21
    assert pap.seeds == emb.seeds == (0, 1, 2) and pap.eps == ("8/255",) and preset.figures == ("leaderboard",)
    for spec in (emb, pap):
        protocol = protocol_of(spec.options, split_method_args(spec.method_args, spec.methods))
        cfgs = {c.name: TrainConfig.from_dict(cell_config(c, protocol, "x", device="cpu"))
                for c in make_cells(spec.methods, spec.eps, spec.seeds)}
        assert len(cfgs) == spec.runs == 63
        for cfg in cfgs.values():
            assert (cfg.lr_schedule, cfg.select, cfg.label_smoothing) == ("onecycle", "best", 0.4)
            assert cfg.val_split > 0 and cfg.weight_averaging is not None
    c = cfgs["gradalign-eps8_255-seed2"]        # the paper scale: the benchmark's CIFAR-10 protocol
    assert (c.dataset, c.epochs, c.optimizer, c.lr, c.weight_decay, c.batch_size) == ("cifar10", 100, "sgd", 0.1,
                                                                                        5e-4, 128)
    assert (c.weight_averaging, c.val_split, c.eval_steps, c.eval_restarts) == (0.9995, 1000, 50, 10)
    assert c.method_args["lam"] == 0.2 and cfgs["aaer-eps8_255-seed0"].method_args["lam3"] == 0.15
    assert preset.needs_data_root("paper") and not preset.needs_data_root("embedded")
    protocol = protocol_of(emb.options, split_method_args(emb.method_args, emb.methods))
    cell = {c.name: c for c in make_cells(emb.methods, emb.eps, emb.seeds)}
    embedded = {m: TrainConfig.from_dict(cell_config(cell[f"{m}-eps0.2-seed0"], protocol, "x", device="cpu"))
                for m in ("elle", "liet", "fgsm_rs_cs")}   # the recipe's own options; the rest: settings rows
    assert embedded["elle"].method_args["lam"] == 2000.0
    assert (embedded["liet"].method_args["lam"], embedded["liet"].method_args["ls"]) == (10.0, 0.3)
    assert embedded["fgsm_rs_cs"].method_args["step"] == 0.6
    assert (pap.options["model"], emb.options["model"]) == ("resnet18", "small_cnn_w16")   # BatchNorm at both scales


def test_the_benchmark_numbers_beside_ours_are_its_published_entries():
    from codiag.reports.fastat_published import published
    from codiag.reports.leaderboard import benchmark_beside, with_benchmark

    table = pd.DataFrame({"method": ["fgsm_rs", "sora", "pgd"]})
    bench = benchmark_beside(table)
    assert list(bench["benchmark_method"]) == ["fgsm_rs", "pgd_at_wa"]      # SORA is not in the benchmark
    pub = published().set_index("benchmark_method")
    out = with_benchmark(table, bench)
    assert out.loc[2, "benchmark_pgd50"] == pub.loc["pgd_at_wa", "pgd50_acc"] and out["benchmark_pgd50"].isna()[1]
    assert with_benchmark(table, bench.iloc[:0]) is table                     # another setting: nothing beside
