"""FGSM adversarial training with PyTorch Lightning, watched by codiag's Lightning callback.

A LightningModule written the way you would write it: the FGSM attack lives in
``training_step``, the data in a LightningDataModule. The only codiag lines are
marked ``# codiag``: the callback, given to the Trainer. It probes the model at the
end of every epoch (and a few times inside the first), on points of the datamodule's
validation loader, writes the run directory and, with ``stop_on_co=True``, stops
the fit once catastrophic overfitting (CO) is detected. The setting collapses fast:
a small CNN on Fashion-MNIST at eps = 0.3 (FGSM from zero, Adam 3e-3), so the
alarm fires within the first epochs and the fit ends there.

    python examples/lightning_fgsm.py                 # 10k images, up to 5 epochs, a CPU minute
    codiag report runs/lightning_fgsm                 # the report, drawn from the run directory
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

try:
    import lightning.pytorch as pl
except ImportError:
    import pytorch_lightning as pl

import codiag
from codiag.integrations.lightning import Monitor  # codiag


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """One step of eps along the sign of the input gradient, from zero."""
    delta = torch.zeros_like(x, requires_grad=True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y), delta)
    return ((x + eps * grad.sign()).clamp(0, 1) - x).detach()


class FGSMClassifier(pl.LightningModule):
    def __init__(self, eps: float, lr: float = 3e-3) -> None:
        super().__init__()
        self.eps, self.lr = eps, lr
        self.net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                 nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        with torch.enable_grad():
            delta = fgsm(self, x, y, self.eps)
        loss = F.cross_entropy(self(x + delta), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class FashionMNIST(pl.LightningDataModule):
    def __init__(self, train_limit: int, test_limit: int | None, batch_size: int = 128) -> None:
        super().__init__()
        self.train_limit, self.test_limit, self.batch_size = train_limit, test_limit, batch_size

    def setup(self, stage: str) -> None:
        self.train_set = codiag.load_dataset("fashion_mnist", train=True, limit=self.train_limit)
        self.test_set = codiag.load_dataset("fashion_mnist", train=False, limit=self.test_limit)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=500)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/lightning_fgsm", help="run directory (default %(default)s)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--train-limit", type=int, default=10000, help="training images (default %(default)s)")
    p.add_argument("--test-limit", type=int, default=None, help="validation images (default: all)")
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--probe-n", type=int, default=256, help="probe points (default %(default)s)")
    p.add_argument("--probes", default="default", help="codiag probes (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-report", action="store_true", help="skip codiag.report() at the end")
    args = p.parse_args(argv)

    pl.seed_everything(args.seed, verbose=False)
    monitor = Monitor(args.out, eps=args.eps, overwrite=True, probe_n=args.probe_n,     # codiag
                      probes=args.probes,                                               # codiag
                      attack=lambda m, x, y: fgsm(m, x, y, args.eps), stop_on_co=True)  # codiag
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, callbacks=[monitor])                   # codiag
    trainer.fit(FGSMClassifier(args.eps), datamodule=FashionMNIST(args.train_limit, args.test_limit))

    alarm = monitor.monitor.co_alarm
    print(f"run: {args.out}   stopped after {trainer.global_step} steps   "
          f"CO: {alarm['reason'] if alarm else 'none'}")
    if not args.no_report:
        print(f"report: {codiag.report(args.out)}")                                     # codiag
    return 0


if __name__ == "__main__":
    sys.exit(main())
