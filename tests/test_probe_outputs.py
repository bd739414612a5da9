"""Each probe declares its metric keys and arrays once, on its class: what it writes matches them,
and nothing undeclared can be written."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from codiag.methods import get_method
from codiag.probes import PROBES, output_table, resolve_probes
from codiag.probes.base import Key, Probe, ProbeContext, ProbeSet
from codiag.probes.robust_acc import RobustAcc
from codiag.reports.base import MissingData, needs
from codiag.reports.figures import MULTI_BUILDERS, RUN_BUILDERS, undeclared_needs
from codiag.runs import RunWriter, load_run
from codiag.tensors import eval_mode

EPS = 0.1


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def _written_by_every_probe() -> tuple[list[tuple[str, str]], list[str]]:
    """Run every registered probe at two events, a training step of ATAS in between, with a
    reference model, so that conditional outputs (transfer accuracy, ATAS's arrays) are written too."""
    g = torch.Generator().manual_seed(0)
    ps = ProbeSet(x=torch.rand(20, 1, 6, 6, generator=g), y=torch.randint(0, 3, (20,), generator=g),
                  index=torch.arange(20))
    model, reference = _model(0), _model(1)
    method = get_method("atas", EPS, num_samples=20, warmup_epochs=0)
    state: dict = {}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scalars, arrays = [], []
    for step in (0, 1):
        ctx = ProbeContext(model, EPS, step, step, ps, train_set=ps, method=method, attack=method.perturb,
                           reference_model=reference, state=state)
        with eval_mode(model), torch.enable_grad():
            for probe in resolve_probes("all", {"loss_surface": {"grid": 3}}):
                probe.run(ctx)
        scalars += [(p, k) for p, k, _ in ctx.rows.scalars]
        arrays += [n for n, _ in ctx.rows.arrays]
        method.train_step(model, opt, ps.x, ps.y, ps.index)    # moves the model, fills the method's state
    # a method that counts its training steps' losses (AAER) for abnormal_examples' per-step keys
    aaer, aaer_state = get_method("aaer", EPS), {}
    for step in (2, 3):
        ctx = ProbeContext(model, EPS, step, step, ps, method=aaer, attack=aaer.perturb, state=aaer_state)
        with eval_mode(model), torch.enable_grad():
            resolve_probes(["abnormal_examples"])[0].run(ctx)
        scalars += [(p, k) for p, k, _ in ctx.rows.scalars]
        aaer.train_step(model, opt, ps.x, ps.y)
    return scalars, arrays


def test_every_written_key_and_array_is_declared_by_its_probe_and_every_declaration_is_written():
    scalars, arrays = _written_by_every_probe()
    for probe, key in scalars:
        assert probe in PROBES, probe
        hits = [k for k in PROBES[probe].keys() if k.parse(key) is not None]
        assert len(hits) == 1, f"{probe}/{key} matches {len(hits)} declarations"
    all_arrays = [a for cls in PROBES.values() for a in cls.arrays()]
    for name in arrays:
        assert sum(a.parse(name) is not None for a in all_arrays) == 1, name
    for cls in PROBES.values():
        for key in cls.keys():
            assert any(p == key.probe and key.parse(k) is not None for p, k in scalars), f"{key} never written"
        for arr in cls.arrays():
            assert any(arr.parse(n) is not None for n in arrays), f"{arr} never written"


def test_declarations_know_their_probe_and_fill_in_patterns():
    assert RobustAcc.pgd_acc.pair == ("robust_acc", "pgd_acc")
    mse = PROBES["weight_update"].mse
    assert mse.format(param="fc.weight") == "mse/fc.weight"
    assert mse.parse("mse/fc.weight") == {"param": "fc.weight"} and mse.parse("mse_all") is None
    with pytest.raises(ValueError, match="param"):
        mse.format()
    names = [(o.probe, o.name) for cls in PROBES.values() for o in [*cls.keys(), *cls.arrays()]]
    assert len(names) == len(set(names))          # no declaration twice


def test_writing_an_undeclared_key_or_array_fails():
    class Sloppy(Probe):
        name = "sloppy"
        ok = Key("a declared key")

        def run(self, ctx):
            ctx.log(self.ok, 1.0)
            ctx.log("sloppy/undeclared", 2.0)

    ps = ProbeSet(x=torch.rand(4, 1, 6, 6), y=torch.zeros(4, dtype=torch.long))
    ctx = ProbeContext(_model(0), EPS, 0, 0, ps)
    with pytest.raises(TypeError, match="not a Key declared on a probe class"):
        Sloppy().run(ctx)
    assert ctx.rows.scalars == [("sloppy", "ok", 1.0)]
    with pytest.raises(TypeError, match="not a Key declared"):
        ctx.log(Key("made up on the spot"), 1.0)          # a Key on no class has no probe
    with pytest.raises(TypeError, match="not a Array declared"):
        ctx.save_array(RobustAcc.pgd_acc, np.zeros(3))     # a key is not an array


def test_every_figure_declares_needs_that_some_probe_declares():
    builders = {**RUN_BUILDERS, **{k: fn for k, (fn, _) in MULTI_BUILDERS.items()}}
    assert all(getattr(fn, "needs", ()) for fn in builders.values())
    assert undeclared_needs() == []

    @needs(Key("a key no probe declares", "made_up"))
    def orphan(run, out_dir):
        raise AssertionError("never drawn")

    assert undeclared_needs({"orphan": orphan}) == ["orphan: /made_up"]


def test_a_missing_need_names_the_probe_to_switch_on(tmp_path):
    w = RunWriter(tmp_path / "run", {"method": "fgsm", "eps": EPS})
    w.log(0, 0, *RobustAcc.pgd_acc.pair, 0.5)
    w.close()
    with pytest.raises(MissingData, match="switch on the probe sign_agreement"):
        RUN_BUILDERS["sign_agreement"](load_run(tmp_path / "run"), tmp_path / "out")


def test_the_docs_table_of_metric_keys_is_the_one_the_declarations_give():
    text = (Path(__file__).resolve().parents[1] / "docs" / "RUN_FORMAT.md").read_text()
    assert output_table() in text, "docs/RUN_FORMAT.md is stale: paste codiag.probes.output_table()"
