"""Watch a monitored run in Weights & Biases: codiag's curves, the CO alarm as a W&B alert, the report.

Your own FGSM loop on Fashion-MNIST, wrapped in ``codiag.monitor`` with ``sinks=["wandb"]``: every
metric codiag records also goes to W&B under ``codiag/<probe>/<key>`` (against the x-axis
``codiag/step``, the optimizer step), the alarm arrives as a W&B alert, and the HTML report is logged
as an artifact when the run closes. When your code has started a run (``wandb.init``), codiag logs
into it and leaves it open; here it starts one itself. The run directory stays the full record.

    pip install 'codiag[wandb]'
    WANDB_MODE=offline python examples/wandb_sink.py --quick     # nothing leaves the machine
    python examples/wandb_sink.py                                # your W&B account (wandb login)
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import codiag  # codiag


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    return ((x + eps * grad.sign()).clamp(0, 1) - x).detach()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/wandb_sink", help="run directory (default %(default)s)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--train-limit", type=int, default=30000, help="training images (default %(default)s)")
    p.add_argument("--probe-n", type=int, default=256, help="probe points (default %(default)s)")
    p.add_argument("--probes", default="default", help="codiag probes (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="4k images, 4 epochs")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.train_limit = 4, 4000
    eps, lr = 0.2, 3e-3

    torch.manual_seed(0)
    train_loader = DataLoader(codiag.load_dataset("fashion_mnist", train=True, limit=args.train_limit),
                              batch_size=128, shuffle=True)
    test_loader = DataLoader(codiag.load_dataset("fashion_mnist", train=False), batch_size=500)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 28 * 28, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    with codiag.monitor(model, optimizer, args.out, eps=eps, overwrite=True, probe_n=args.probe_n,  # codiag
                        probes=args.probes,                                                         # codiag
                        probe_data=test_loader, train_data=train_loader,                          # codiag
                        attack=lambda m, x, y: fgsm(m, x, y, eps), sinks=["wandb"]) as mon:        # codiag
        for _ in range(args.epochs):
            for x, y, _ in train_loader:
                loss = F.cross_entropy(model(x + fgsm(model, x, y, eps)), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            mon.epoch_end()                                                                       # codiag
    print(f"run: {args.out}  CO alarm: {mon.co_alarm['reason'] if mon.co_detected else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
