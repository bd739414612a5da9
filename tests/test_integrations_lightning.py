"""codiag's Lightning callback with a real ``lightning.Trainer`` on the CPU, on Fashion-MNIST.

The example (``examples/lightning_fgsm.py``, tiny sizes) collapses at eps 0.3 and the
alarm stops the fit; its run is drawn by ``codiag report``. A fit with the callback ends
bit-identical to the same fit without it. A ``bf16-mixed`` fit with two optimizers
(manual optimization) counts the steps of the optimizer named and probes in fp32;
an exception inside the fit closes the run as failed.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from example_modules import load_example
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch", reason="lightning is not installed (pip install codiag[lightning])")

from codiag.cli import main as codiag_cli  # noqa: E402
from codiag.integrations.lightning import Monitor  # noqa: E402
from codiag.runs import load_run  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
QUIET = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False, num_sanity_val_steps=0)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the fits are tiny, and spinning threads only cost CPU on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fmnist():
    from codiag.data import load_dataset

    tr = load_dataset("fashion_mnist", train=True, limit=512)
    te = load_dataset("fashion_mnist", train=False, limit=128)
    return (tr.images.float() / 255, tr.labels), (te.images.float() / 255, te.labels)


@pytest.mark.slow
def test_the_example_fit_collapses_the_alarm_stops_it_and_codiag_report_draws_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    rc = load_example("lightning_fgsm").main(["--train-limit", "2048", "--test-limit", "256", "--probe-n", "128",
                                              "--probes", "robust_acc,grad_align", "--epochs", "4",
                                              "--no-report", "--out", str(out)])
    assert rc == 0
    run = load_run(out)
    [alarm] = run.events_of("co_alarm")
    assert run.meta["status"] == "finished"
    pgd = run.scalar("robust_acc", "pgd_acc")
    assert int(pgd["step"].max()) == alarm["step"] < 16 * 4   # stopped at the alarm, long before 4 epochs
    assert f"stopped after {alarm['step']} steps" in capsys.readouterr().out
    assert codiag_cli(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert "<img" in page or "<svg" in page


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(),
                                      nn.Dropout(0.2))
        self.head = nn.Linear(4 * 7 * 7, 10)

    def forward(self, x):
        return self.head(self.features(x))


class FGSMModule(pl.LightningModule):
    def __init__(self, eps: float = 0.1, fail_at: int | None = None) -> None:
        super().__init__()
        self.net, self.eps, self.fail_at = Small(), eps, fail_at

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        if batch_idx == self.fail_at:
            raise self.error
        x, y = batch
        with torch.enable_grad():
            d = torch.zeros_like(x, requires_grad=True)
            (g,) = torch.autograd.grad(F.cross_entropy(self(x + d), y), d)
        return F.cross_entropy(self((x + self.eps * g.sign()).clamp(0, 1)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def fit(fmnist, callbacks, module=None, **trainer_options):
    (x, y), _ = fmnist
    pl.seed_everything(0, verbose=False)
    module = module or FGSMModule()
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    trainer = pl.Trainer(max_epochs=2, callbacks=callbacks, **{**QUIET, **trainer_options})
    trainer.fit(module, train_dataloaders=loader)
    return module, trainer


@pytest.mark.slow
def test_a_monitored_fit_ends_bit_identical_to_an_unmonitored_one(tmp_path, fmnist):
    plain, _ = fit(fmnist, [])
    rng_plain = torch.get_rng_state()
    cb = Monitor(tmp_path / "run", eps=0.1, probe_data=fmnist[1], every=3, probes="robust_acc,grad_align",
                 probe_n=64, train_probe_n=64)
    watched, trainer = fit(fmnist, [cb])
    assert torch.equal(torch.get_rng_state(), rng_plain)
    for (name, a), (_, b) in zip(plain.state_dict().items(), watched.state_dict().items()):
        assert torch.equal(a, b), name
    run = load_run(tmp_path / "run")
    assert run.meta["status"] == "finished" and cb.monitor.step == trainer.global_step == 16
    assert set(run.scalar("robust_acc", "pgd_acc")["step"]) == {0, 3, 6, 9, 12, 15, 16}


class TwoOptimizers(FGSMModule):
    """Manual optimization: the head steps every batch, the features every second batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        head, features = self.optimizers()
        loss = super().training_step(batch, batch_idx)
        head.zero_grad()
        features.zero_grad()
        self.manual_backward(loss)
        head.step()
        if batch_idx % 2 == 1:
            features.step()
        self.log("loss", loss)

    def configure_optimizers(self):
        return (torch.optim.SGD(self.net.head.parameters(), lr=0.05),
                torch.optim.SGD(self.net.features.parameters(), lr=0.05))


@pytest.mark.slow
def test_bf16_mixed_with_two_optimizers_counts_the_named_one_and_probes_in_fp32(tmp_path, fmnist):
    from lightning.pytorch.loggers import CSVLogger

    cb = Monitor(tmp_path / "run", eps=0.1, probe_data=fmnist[1], optimizer=1, probes="robust_acc",
                 probe_n=64, train_probe_n=64, log_metrics=True)
    module, trainer = fit(fmnist, [cb], TwoOptimizers(), precision="bf16-mixed",
                          logger=CSVLogger(tmp_path / "logs", name="", version=0))
    assert cb.monitor.step == 8            # 8 batches an epoch, the features' optimizer steps on every second
    run = load_run(tmp_path / "run")
    clean = run.scalar("robust_acc", "clean_acc")
    assert clean["step"].tolist() == [0, 4, 8] and clean["epoch"].tolist() == [0, 1, 2]
    x, y = fmnist[1]
    with torch.no_grad():
        module.eval()
        fp32 = (module(x[:64]).argmax(1) == y[:64]).float().mean().item()
    assert clean["value"].iloc[-1] == pytest.approx(fp32, abs=1e-6)
    import pandas as pd

    logged = pd.read_csv(tmp_path / "logs" / "version_0" / "metrics.csv")
    rows = logged.dropna(subset=["codiag/robust_acc/pgd_acc"])
    assert rows["step"].tolist() == [0, 4, 8]
    assert rows["codiag/robust_acc/pgd_acc"].tolist() == pytest.approx(
        run.scalar("robust_acc", "pgd_acc")["value"].tolist())


@pytest.mark.parametrize("error, status", [(RuntimeError("a bug in the user's step"), "failed"),
                                           (KeyboardInterrupt(), "interrupted")])
def test_an_exception_or_ctrl_c_in_the_fit_closes_the_run(tmp_path, fmnist, error, status):
    import signal

    cb = Monitor(tmp_path / "run", eps=0.1, probe_data=fmnist[1], probes="robust_acc", probe_n=16, train_probe_n=16)
    module = FGSMModule(fail_at=3)
    module.error = error
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises((RuntimeError, SystemExit)):   # Lightning ends a Ctrl-C'd fit with sys.exit(1)
            fit(fmnist, [cb], module)
    finally:
        signal.signal(signal.SIGINT, handler)   # Lightning ignores further Ctrl-C after the first
    run = load_run(tmp_path / "run")
    assert run.meta["status"] == status and cb.monitor.step == 3


def test_the_pytorch_lightning_package_takes_its_own_callback(tmp_path, fmnist):
    ptl = pytest.importorskip("pytorch_lightning", reason="the standalone pytorch_lightning is not installed")
    from codiag.integrations.pytorch_lightning import Monitor as PTLMonitor

    class Module(ptl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = Small()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    (x, y), test = fmnist
    cb = PTLMonitor(tmp_path / "run", eps=0.1, probes="robust_acc", probe_n=16, train_probe_n=16)
    trainer = ptl.Trainer(max_epochs=1, limit_train_batches=4, callbacks=[cb], **QUIET)
    trainer.fit(Module(), train_dataloaders=DataLoader(TensorDataset(x, y), batch_size=64),
                val_dataloaders=DataLoader(TensorDataset(*test), batch_size=64))
    run = load_run(tmp_path / "run")
    assert run.meta["status"] == "finished" and cb.monitor.step == 4
    assert run.config["monitor"]["probe_set"]["source"] == "probe_data:TensorDataset"   # the fit's val loader


def test_a_wrong_option_fails_when_the_callback_is_built_and_a_wrong_optimizer_at_the_start(tmp_path, fmnist):
    from codiag.errors import UsageError

    with pytest.raises(UsageError, match="unknown option.*probe_count"):
        Monitor(tmp_path / "run", eps=0.1, probe_count=64)
    cb = Monitor(tmp_path / "run", eps=0.1, probe_data=fmnist[1], optimizer=1)
    with pytest.raises(UsageError, match="optimizer=1, but the module configures 1 optimizer"):
        fit(fmnist, [cb])
    assert not (tmp_path / "run").exists()
