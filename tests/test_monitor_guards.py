"""codiag.monitor refuses, or says in one line, what would otherwise give wrong results quietly.

A resume onto a run written with other settings, a scalar ``loss_fn``, standardized model
inputs beside [0, 1] probe data, a monitor dropped without ``close()``, a forked child,
``eps`` and ``run_dir`` that mean nothing; and the datasets that yield dicts (``batch_fn``).
Tiny models on seeded tensors, a few optimizer steps each.
"""
from __future__ import annotations

import os
import signal
import time
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from codiag.errors import UsageError
from codiag.monitoring import monitor
from codiag.runs import load_run

EPS = 0.1


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 36, 3))


def tensors(n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


# -- a resume belongs to its settings ---------------------------------------------------------------
@pytest.mark.parametrize("change,named", [({"eps": 0.2}, "eps=0.1 there, 0.2 here"),
                                          ({"probes": ["robust_acc", "weight_update"]}, "probes="),
                                          ({"config": {"lr": 0.5}}, "lr=0.1 there, 0.5 here")])
def test_resume_with_other_eps_probes_or_config_is_refused_naming_the_difference(tmp_path, change, named):
    x, y = tensors()
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    base = {"eps": EPS, "probe_data": (x, y), "probes": ["robust_acc"], "probe_n": 8, "config": {"lr": 0.1}}
    with monitor(model, opt, tmp_path / "r", **base) as mon:
        opt.step()
        mon.epoch_end()
    before = {f: (tmp_path / "r" / f).read_bytes() for f in ("run.json", "metrics.csv", "events.jsonl")}
    with pytest.raises(UsageError) as err:
        monitor(model, opt, tmp_path / "r", **{**base, **change}, resume=True).start()
    assert named in one_line(err) and "resume=True" in str(err.value)
    assert {f: (tmp_path / "r" / f).read_bytes() for f in before} == before   # nothing written
    with monitor(model, opt, tmp_path / "r", **base, resume=True) as mon:   # its own settings: resumed
        assert mon.step == 1
    assert load_run(tmp_path / "r").status == "finished"


# -- arguments that mean nothing: one line naming the argument ---------------------------------------
def test_eps_as_a_fraction_string_is_read_and_none_or_a_bad_run_dir_are_one_line(tmp_path):
    x, y = tensors()
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = monitor(model, opt, tmp_path / "r", eps="8/255", probe_data=(x, y), probes=["robust_acc"], probe_n=8)
    assert mon.eps == 8 / 255
    for kwargs, named in (({"eps": None}, "eps"), ({"eps": "abc"}, "eps"), ({"eps": 0}, "eps"),
                          ({"eps": True}, "eps"), ({"run_dir": None}, "run_dir"), ({"run_dir": ""}, "run_dir")):
        args = {"run_dir": tmp_path / "x", "eps": EPS, **kwargs}
        with pytest.raises(UsageError) as err:
            monitor(model, opt, probe_data=(x, y), **args)
        assert one_line(err).startswith(f"monitor: {named}")
    assert not (tmp_path / "x").exists()


def test_library_errors_name_the_library_arguments_and_the_cli_its_flags(tmp_path, capsys):
    from codiag.cli import main

    x, y = tensors()
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor(model, opt, tmp_path / "r", eps=EPS, probe_data=(x, y), probes=["robust_acc"], probe_n=8).start().close()
    with pytest.raises(UsageError) as err:
        monitor(model, opt, tmp_path / "r", eps=EPS, probe_data=(x, y), probes=["robust_acc"], probe_n=8).start()
    assert "resume=True or overwrite=True" in one_line(err) and "--" not in str(err.value)
    assert main(["train", "--out", str(tmp_path / "r"), "--dataset", "cifar10", "--data-root", str(tmp_path)]) == 2
    assert "--resume or --overwrite" in capsys.readouterr().err


# -- a loss_fn that reduces ----------------------------------------------------------------------------
def test_a_scalar_loss_fn_is_refused_at_step_0(tmp_path):
    x, y = tensors()
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(UsageError) as err:
        with monitor(model, opt, tmp_path / "r", eps=EPS, probe_data=(x, y), probe_n=8,
                     loss_fn=lambda logits, y: F.cross_entropy(logits, y)):
            pass
    assert "loss_fn returned ()" in one_line(err) and "reduction='none'" in str(err.value)
    assert load_run(tmp_path / "r").status == "failed"
    with monitor(model, opt, tmp_path / "ok", eps=EPS, probe_data=(x, y), probe_n=8,
                 loss_fn=lambda logits, y: F.cross_entropy(logits, y, reduction="none")):
        pass
    assert load_run(tmp_path / "ok").events_of("probe_error") == []


# -- the output_fn hint is written for the model's output ----------------------------------------------
class DictNet(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, self.net = kind, tiny()

    def forward(self, x):
        logits = self.net(x)
        if self.kind == "dict":
            return {"features": x.flatten(1), "logits": logits}
        return logits, x


@pytest.mark.parametrize("kind,hint", [("dict", "output_fn=lambda out: out['logits']"),
                                       ("tuple", "output_fn=lambda out: out[0]")])
def test_the_output_fn_hint_matches_the_output(tmp_path, kind, hint):
    x, y = tensors()
    model = DictNet(kind)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(UsageError) as err:
        monitor(model, opt, tmp_path / "r", eps=EPS, probe_data=(x, y), probe_n=8).start()
    assert hint in one_line(err)


# -- datasets that yield dicts -------------------------------------------------------------------------
class DictDataset(torch.utils.data.Dataset):
    """Items as Hugging Face ``datasets`` give them: {"image": x, "label": y}."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": self.y[i]}


def test_a_dict_dataset_is_probed_through_batch_fn(tmp_path):
    x, y = tensors()

    def run(name, data, **kw):
        model = tiny()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = DataLoader(data, batch_size=16)
        with monitor(model, opt, tmp_path / name, eps=EPS, probe_data=loader, train_data=loader,
                     probes=["robust_acc", "grad_align"], probe_n=16, **kw) as mon:
            for batch in loader:
                bx, by = kw["batch_fn"](batch) if kw else batch
                opt.zero_grad()
                F.cross_entropy(model(bx), by).backward()
                opt.step()
            mon.epoch_end()
        return load_run(tmp_path / name).metrics

    with pytest.raises(UsageError) as err:
        run("refused", DictDataset(x, y))
    assert "batch_fn=lambda b: (b['image'], b['label'])" in one_line(err) and "'image', 'label'" in str(err.value)
    dicts = run("dicts", DictDataset(x, y), batch_fn=lambda b: (b["image"], b["label"]))
    tuples = run("tuples", TensorDataset(x, y))
    assert len(dicts) > 0 and dicts.equals(tuples)


# -- standardized training inputs beside [0, 1] probe data --------------------------------------------
@pytest.mark.parametrize("standardized", [True, False])
def test_standardized_training_inputs_with_pixel_probe_data_warn_once_naming_normalization(tmp_path, standardized):
    x, y = tensors()
    mean, std = 0.5, 0.25
    train_x = (x - mean) / std if standardized else x
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(train_x, y), batch_size=16)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with monitor(model, opt, tmp_path / "r", eps=EPS, probe_data=(x, y), probes=["robust_acc"],
                     probe_n=16) as mon:
            for _ in range(2):
                for bx, by in loader:
                    opt.zero_grad()
                    F.cross_entropy(model(bx), by).backward()
                    opt.step()
                mon.epoch_end()
            assert not model._forward_pre_hooks   # looked once, then removed
    said = [str(w.message) for w in record if "normalization=" in str(w.message)]
    assert len(said) == (1 if standardized else 0), said
    if standardized:
        assert "\n" not in said[0] and "training inputs span [-2" in said[0]


# -- a monitor dropped without close(), a forked child --------------------------------------------------
def test_a_monitor_dropped_without_close_releases_its_hooks_and_its_run(tmp_path):
    x, y = tensors()
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x[:8]), y[:8]).backward()
        opt.step()

    args = {"eps": EPS, "probe_data": (x, y), "probes": ["robust_acc"], "probe_n": 8}
    mon = monitor(model, opt, tmp_path / "r", **args).start()     # a notebook cell, never closed
    step()
    assert len(opt._optimizer_step_post_hooks) == 1 and (tmp_path / "r" / "run.lock").exists()
    mon = monitor(model, opt, tmp_path / "r", **args, resume=True)   # the cell run again: the first is dropped
    assert len(opt._optimizer_step_post_hooks) == 0 and not model._forward_pre_hooks
    assert not (tmp_path / "r" / "run.lock").exists() and load_run(tmp_path / "r").status == "interrupted"
    mon.start()
    step()
    assert mon.step == 1 and len(opt._optimizer_step_post_hooks) == 1   # resumed from the rows on disk
    mon.epoch_end()
    mon.close()
    run = load_run(tmp_path / "r")
    assert run.status == "finished" and run.scalar("robust_acc", "pgd_acc")["step"].tolist() == [0, 1]


def _exit_code(pid: int, timeout_s: float = 120.0) -> int:
    """The child's exit code; a child that hangs (torch's thread pool after a fork can) is killed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child hung for {timeout_s:.0f} s using the parent's monitor")


def test_a_forked_child_cannot_use_the_parents_monitor(tmp_path):
    x, y = tensors()
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with monitor(model, opt, tmp_path / "r", eps=EPS, probe_data=(x, y), probes=["robust_acc"], probe_n=8) as mon:
        pid = os.fork()
        if pid == 0:   # the child: each use refused in one line, its exit leaves the parent's run alone
            try:   # whatever happens here, the child never returns into the test runner
                code = 0
                for use in (opt.step, mon.epoch_end, lambda: mon.log("train", {"loss": 1.0})):
                    try:
                        use()
                        code = 1
                    except UsageError as e:
                        code |= 0 if "forked child" in str(e) and "\n" not in str(e) else 2
                mon.__exit__(None, None, None)
            except BaseException:
                code = 3
            finally:
                os._exit(code)
        assert _exit_code(pid) == 0
        assert (tmp_path / "r" / "run.lock").exists() and load_run(tmp_path / "r").status == "running"
        opt.step()
        mon.epoch_end()
    run = load_run(tmp_path / "r")
    assert run.status == "finished" and run.scalar("robust_acc", "pgd_acc")["step"].tolist() == [0, 1]
