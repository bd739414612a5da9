"""``codiag reproduce``: the preset table, bad input, the analytic presets, the run cache,
and (when training works here) a quick real preset run that is then reused from the cache."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from example_modules import load_example

from codiag import reports
from codiag.cli import main
from codiag.commands.reproduce import cached
from codiag.methods.settings import settings_for
from codiag.reports.presets import PRESETS, QUICK, SCALES, SPECS
from codiag.reports.synthetic import write_synthetic_run
from codiag.trainer import TrainConfig

FASHION = Path("/usr/share/datasets/fashion-mnist")
CAN_TRAIN = all(importlib.util.find_spec(m) for m in ("codiag.data", "codiag.models", "codiag.attacks"))


def codiag(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_list_names_every_preset(capsys):
    rc, out, _ = codiag(capsys, "reproduce", "--list")
    assert rc == 0
    listed = {line.split()[0] for line in out.splitlines()[1:] if line.strip() and not line.startswith(" ")}
    assert set(PRESETS) <= listed
    assert "gradalign-fig11" in out and "--data-root" in out


def test_presets_refer_to_known_runs_figures_and_methods():
    from codiag.methods import METHODS
    for preset in PRESETS.values():
        assert set(preset.figures) <= set(reports.ALL_FIGURES), preset.name
        for scale in SCALES:
            for name in preset.runs[scale]:
                cfg = SPECS[scale][name].config
                assert cfg["method"] in METHODS, (preset.name, name)
                if scale == "paper" and cfg["model"] != "cnn4":
                    assert cfg["model"] in ("preact_resnet18", "resnet18") and cfg["dataset"] == "cifar10"
    fig11 = SPECS["embedded"][PRESETS["gradalign-fig11"].runs["embedded"][0]].config
    assert fig11["dataset"] == "cifar10" and fig11["model"] == "cnn4"
    assert fig11["eps"] == pytest.approx(10 / 255) and fig11["epochs"] == 30


def test_every_run_spec_is_a_valid_training_config():
    from codiag.methods import get_method
    for scale in SCALES:
        for name, spec in SPECS[scale].items():
            cfg = TrainConfig.from_dict({**spec.config, "out": "unused", "data_root": None})  # raises if invalid
            method = get_method(cfg.method, cfg.eps, seed=0, num_samples=10, **cfg.method_args)
            assert method.name == cfg.method, (scale, name)
            for key, value in cfg.method_args.items():   # every hyper-parameter reached the method
                assert getattr(method, key) == value, (scale, name, key)


@pytest.mark.parametrize("args, needle", [
    (["nosuchfigure"], "unknown preset"),
    ([], "name a preset"),
    (["gradalign-fig11"], "--data-root"),
    (["gradalign-fig11", "--data-root", "/nonexistent/data"], "/nonexistent/data"),
    (["zerograd-fig1", "--epochs", "0"], "--epochs"),
])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, args, needle):
    rc, _, err = codiag(capsys, "reproduce", *args, "--cache", str(tmp_path))
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]
    assert not any(tmp_path.iterdir())                  # nothing trained, nothing written


def test_analytic_preset_draws_its_figure_with_the_papers_numbers(capsys, tmp_path):
    rc, out, _ = codiag(capsys, "reproduce", "gradalign-fig2", "--cache", str(tmp_path))
    assert rc == 0
    fig = tmp_path / "embedded" / "reports" / "gradalign-fig2" / "figures" / "analytic"
    assert (fig / "lemma1.png").stat().st_size > 1000 and (fig / "lemma1.svg").stat().st_size > 1000
    assert "7.11/255" in out                            # ours
    assert "paper: GradAlign" in out and "7/255" in out  # the paper's, labelled


def test_cache_reuses_only_a_finished_run_with_the_same_config(tmp_path):
    spec = SPECS["embedded"]["fmnist-fgsm"].config
    cfg = {**spec, "out": "x", "device": "cpu", "progress": False}
    done = write_synthetic_run(tmp_path / "done", **{k: v for k, v in spec.items() if k != "method"})
    assert cached(done, cfg) == (True, "")
    ok, why = cached(done, {**cfg, "epochs": 7})
    assert not ok and "epochs" in why
    ok, why = cached(done, {**cfg, "method_args": {"step": 2.0}})
    assert not ok and "method_args" in why
    # a validated setting that changed since the run was trained (the preset itself names none)
    from codiag.methods import settings
    row = settings.Setting("fgsm", spec["dataset"], spec["eps"], {"step": 0.5}, "a test")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(settings, "SETTINGS", (row, *settings.SETTINGS))
        ok, why = cached(done, cfg)
    assert not ok and "method_args={}" in why and "'step': 0.5" in why
    half = write_synthetic_run(tmp_path / "half", close=False, **{k: v for k, v in spec.items() if k != "method"})
    ok, why = cached(half, cfg)
    assert not ok and "running" in why
    assert cached(tmp_path / "none", cfg) == (False, "not trained yet")


@pytest.mark.slow
@pytest.mark.skipif(not CAN_TRAIN, reason="codiag.data/models/attacks are not written yet")
@pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_quick_preset_trains_draws_and_is_reused(capsys, tmp_path):
    args = ("reproduce", "zerograd-fig1", "--quick", "--cache", str(tmp_path), "--device", "cpu", "-q")
    rc, out, err = codiag(capsys, *args)
    assert rc == 0, err
    run_dir = tmp_path / "embedded-quick" / "fmnist-fgsm_rs-a2"
    assert (run_dir / "run.json").exists() and "training fmnist-fgsm_rs-a2" in err
    page = tmp_path / "embedded-quick" / "reports" / "zerograd-fig1" / "index.html"
    assert "weight_update.png" in page.read_text()
    mtime = (run_dir / "metrics.csv").stat().st_mtime
    rc, out, err = codiag(capsys, *args)
    assert rc == 0 and "reusing cached run" in out
    assert (run_dir / "metrics.csv").stat().st_mtime == mtime
    assert QUICK["epochs"] == 2


def test_embedded_method_runs_use_the_settings_validated_for_eps_0_2():
    """The embedded presets, the example and the trainer read the one validated-settings table."""
    example = load_example("methods_vs_co")
    table = settings_for("fashion_mnist", 0.2)
    assert example.HPARAMS == table
    embedded = SPECS["embedded"]
    shared = [m for m in table if f"fmnist-{m}" in embedded]
    assert {"fgsm", "zerograd", "multigrad", "gradalign", "atas", "pgd10"} <= set(shared)
    for method in shared:
        cfg = embedded[f"fmnist-{method}"].config
        assert cfg["method"] == method and cfg["eps"] == 0.2
        assert {k: cfg["method_args"][k] for k in table[method]} == table[method], method
        resolved = TrainConfig.from_dict({k: v for k, v in cfg.items() if k != "method_args"})
        assert {k: resolved.method_args[k] for k in table[method]} == table[method], method


def _options_of(command: str) -> set[str]:
    from codiag.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {o for action in sub.choices[command]._actions for o in action.option_strings}


@pytest.mark.slow
@pytest.mark.skipif(not CAN_TRAIN, reason="training needs the data modules")
def test_sigterm_hint_names_options_reproduce_accepts(tmp_path):
    """`codiag reproduce` ended by SIGTERM while it trains: one line whose advice uses only what
    `codiag reproduce` accepts (it has no --resume: rerunning reuses the finished runs)."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-m", "codiag", "reproduce", "gradalign-fig4", "--quick", "--quiet",
                             "--cache", str(cache)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.monotonic() + 300
    while not list(cache.glob("*/*/metrics.csv")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    line = [ln for ln in err.splitlines() if "terminated" in ln]
    assert len(line) == 1 and "rerun the same command" in line[0], err
    named = set(re.findall(r"--[a-z][a-z-]*", line[0]))
    assert named <= _options_of("reproduce"), named - _options_of("reproduce")
