"""Wrap your own PyTorch adversarial-training loop with codiag.monitor.

A plain FGSM adversarial-training loop on Fashion-MNIST, written the way you
would write it yourself: your model, your optimizer and schedule, your attack,
your loop. The only codiag lines are marked ``# codiag``: the ``with`` line,
``mon.epoch_end()`` and the report at the end. The setting is codiag's
embedded CO demo (the README's `codiag demo`): a single-layer CNN with 4 filters (GradAlign),
eps = 0.2, FGSM with step eps from zero, Adam lr 3e-3 on a one-cycle
schedule, batch 128, 30k training images, 20 epochs; PGD accuracy collapses
near epoch 10 while FGSM accuracy climbs and gradient alignment falls.

    python examples/wrap_your_loop.py              # the demo, a few CPU minutes
    python examples/wrap_your_loop.py --quick      # 4k images, 4 epochs: a smoke run
    codiag report runs/wrap_your_loop              # the same report as the script's codiag.report()

Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist`` through
``codiag.load_dataset`` (a plain ``torch.utils.data.Dataset``), or from
torchvision's layout with ``--data-root``.
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
    """The user's own FGSM: one step of eps along the sign of the input gradient, from zero."""
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y)
    (grad,) = torch.autograd.grad(loss, x)
    return ((x + eps * grad.sign()).clamp(0, 1) - x).detach()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/wrap_your_loop", help="run directory (default %(default)s)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--train-limit", type=int, default=30000, help="training images (default %(default)s)")
    p.add_argument("--data-root", default=None, help="torchvision-layout data root (default: Debian package)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="4k images, 4 epochs")
    p.add_argument("--no-report", action="store_true", help="skip codiag.report() at the end")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.train_limit = 4, 4000
    eps, lr, batch_size = 0.2, 3e-3, 128

    torch.manual_seed(args.seed)
    train_set = codiag.load_dataset("fashion_mnist", root=args.data_root, train=True, limit=args.train_limit)
    test_set = codiag.load_dataset("fashion_mnist", root=args.data_root, train=False)
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=500)

    # GradAlign's single-layer CNN: 4 filters 3x3, ReLU, linear (no pooling)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 28 * 28, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, epochs=args.epochs, steps_per_epoch=len(train_loader), pct_start=0.4,
        anneal_strategy="linear", div_factor=1e4, final_div_factor=1e4, cycle_momentum=False)

    with codiag.monitor(model, optimizer, args.out, eps=eps, overwrite=True,        # codiag
                        probe_data=test_loader, train_data=train_loader,             # codiag
                        attack=lambda m, x, y: fgsm(m, x, y, eps)) as mon:           # codiag
        for epoch in range(args.epochs):
            model.train()
            correct = seen = 0
            for x, y, _ in train_loader:
                delta = fgsm(model, x, y, eps)
                logits = model(x + delta)
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                correct += (logits.argmax(1) == y).sum().item()
                seen += len(y)
            print(f"epoch {epoch + 1:2d}  FGSM train acc {correct / seen:.3f}", flush=True)
            mon.epoch_end()                                                           # codiag
            if mon.co_detected and mon.co_alarm["epoch"] == epoch + 1:
                print(f"  codiag: catastrophic overfitting -- {mon.co_alarm['reason']}")

    run = codiag.load_run(args.out)
    co = codiag.detect_co(run.metrics)
    print(f"\nrun: {args.out}   CO epoch: {co['epoch'] if co else 'none'}")
    if not args.no_report:
        print(f"report: {codiag.report(args.out)}")                                   # codiag
    return 0


if __name__ == "__main__":
    sys.exit(main())
