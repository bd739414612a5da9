"""docs/EXTENDING.md's worked examples run as written: its probe, figure and method, built from the
guide's own code blocks, record a short monitored run, draw into a report and train."""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import codiag
from codiag.methods import METHODS, get_method
from codiag.probes import PROBES
from codiag.reports.figures import RUN_BUILDERS

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "EXTENDING.md"


def blocks() -> dict[str, str]:
    """The guide's Python code blocks whose first line names their file, by that file."""
    found = re.findall(r"```python\n# (\S+\.py)\n(.*?)```", GUIDE.read_text(), flags=re.S)
    return {path: code for path, code in found}


def load(module: str, code: str, monkeypatch) -> types.ModuleType:
    """Execute a block as module ``module`` (so the next block can import it)."""
    mod = types.ModuleType(module)
    monkeypatch.setitem(sys.modules, module, mod)
    exec(compile(code, f"docs/EXTENDING.md:{module}", "exec"), mod.__dict__)
    return mod


@pytest.fixture
def registries(monkeypatch):
    """Whatever the guide's blocks register is gone after the test."""
    saved = dict(PROBES), dict(METHODS)
    yield
    for table, before in zip((PROBES, METHODS), saved):
        table.clear()
        table.update(before)


def test_the_guides_probe_and_figure_record_and_draw(tmp_path, monkeypatch, registries):
    code = blocks()
    assert set(code) == {"probes/logit_margin.py", "reports/logit_margin.py", "codiag/methods/gauss_fgsm.py"}
    load("codiag.probes.logit_margin", code["probes/logit_margin.py"], monkeypatch)
    figure = load("codiag.reports.logit_margin", code["reports/logit_margin.py"], monkeypatch)
    monkeypatch.setitem(RUN_BUILDERS, "logit_margin", figure.logit_margin)     # the registry line

    torch.manual_seed(0)
    train = codiag.load_dataset("fashion_mnist", train=True, limit=256)
    test = codiag.load_dataset("fashion_mnist", train=False, limit=64)
    model = codiag.build_model("cnn4", train.spec)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    with codiag.monitor(model, opt, tmp_path / "run", eps=0.1, probe_data=test, probe_n=32,
                        probes="robust_acc,logit_margin", strict=True) as mon:
        for x, y in codiag.make_loader(train, 64, shuffle=True, seed=0):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        mon.epoch_end()
    run = codiag.load_run(tmp_path / "run")
    pgd, clean = run.scalar("logit_margin", "pgd_margin"), run.scalar("logit_margin", "clean_margin")
    assert pgd["step"].tolist() == [0, 4] and (pgd["value"] < clean["value"]).all()   # PGD lowers the margin

    page = codiag.report(tmp_path / "run", tmp_path / "report", figures={"logit_margin"}, analytic=False)
    assert (tmp_path / "report" / "figures" / "run" / "logit_margin.png").is_file()
    assert "logit_margin.png" in page.read_text()


def test_the_guides_method_trains_inside_the_eps_ball(monkeypatch, registries):
    load("codiag.methods.gauss_fgsm", blocks()["codiag/methods/gauss_fgsm.py"], monkeypatch)
    method = get_method("gauss_fgsm", 0.1, sigma=0.25)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    delta = method.perturb(model, x, y)
    assert delta.abs().max() <= 0.1 + 1e-7 and ((x + delta) >= 0).all() and ((x + delta) <= 1).all()
    g = torch.Generator().manual_seed(1)
    again = torch.Generator().manual_seed(1)
    assert torch.equal(method.perturb(model, x, y, generator=g), method.perturb(model, x, y, generator=again))
    loss = method.train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y)
    assert torch.isfinite(loss)
