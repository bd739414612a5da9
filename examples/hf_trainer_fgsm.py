"""FGSM adversarial training with the Hugging Face ``Trainer``, watched by codiag's Trainer callback.

An image classifier trained the way Trainer users write it: the FGSM attack lives
in a ``compute_loss`` override, the dataset yields ``{"pixel_values", "labels"}``
dicts and the model returns an ``ImageClassifierOutput``. The only codiag lines are
marked ``# codiag``: the callback. It probes the model at the end of every epoch
(and a few times inside the first) on test points, writes the run directory and,
with ``stop_on_co=True``, stops training once catastrophic overfitting (CO) is
detected. The setting collapses fast: a small CNN on Fashion-MNIST at eps = 0.3
(FGSM from zero, Adam 3e-3 at a constant rate, no clipping).

    python examples/hf_trainer_fgsm.py                # 10k images, up to 5 epochs, a CPU minute
    codiag report runs/hf_trainer_fgsm                # the report, drawn from the run directory

Nothing is downloaded: the model is built here.
"""
from __future__ import annotations

import argparse
import sys
import tempfile

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments
from transformers.modeling_outputs import ImageClassifierOutput

import codiag
from codiag.integrations.hf import Monitor  # codiag


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                 nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10))

    def forward(self, pixel_values: torch.Tensor) -> ImageClassifierOutput:
        return ImageClassifierOutput(logits=self.net(pixel_values))


class Images(Dataset):
    """Fashion-MNIST items as the dicts Trainer's default collator stacks."""

    def __init__(self, train: bool, limit: int | None) -> None:
        self.data = codiag.load_dataset("fashion_mnist", train=train, limit=limit)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        x, y = self.data[i][:2]
        return {"pixel_values": x, "labels": y}


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """One step of eps along the sign of the input gradient, from zero."""
    delta = torch.zeros_like(x, requires_grad=True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x + delta).logits, y), delta)
    return ((x + eps * grad.sign()).clamp(0, 1) - x).detach()


class FGSMTrainer(Trainer):
    def __init__(self, *args, eps: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = eps

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        x, y = inputs["pixel_values"], inputs["labels"]
        outputs = model(pixel_values=x + fgsm(model, x, y, self.eps))
        loss = F.cross_entropy(outputs.logits, y)
        return (loss, outputs) if return_outputs else loss


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/hf_trainer_fgsm", help="run directory (default %(default)s)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--train-limit", type=int, default=10000, help="training images (default %(default)s)")
    p.add_argument("--test-limit", type=int, default=1000, help="test images (default %(default)s)")
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--probe-n", type=int, default=256, help="probe points (default %(default)s)")
    p.add_argument("--probes", default="default", help="codiag probes (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-report", action="store_true", help="skip codiag.report() at the end")
    args = p.parse_args(argv)

    monitor = Monitor(args.out, eps=args.eps, probe_data=Images(False, args.test_limit),        # codiag
                      attack=lambda m, x, y: fgsm(m, x, y, args.eps), probes=args.probes,       # codiag
                      probe_n=args.probe_n, overwrite=True, stop_on_co=True)                     # codiag
    with tempfile.TemporaryDirectory() as scratch:   # Trainer's output_dir; nothing is saved
        training = TrainingArguments(
            output_dir=scratch, num_train_epochs=args.epochs, per_device_train_batch_size=128,
            learning_rate=3e-3, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0,
            seed=args.seed, use_cpu=True, save_strategy="no", logging_strategy="no", report_to="none",
            disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False)
        torch.manual_seed(args.seed)
        trainer = FGSMTrainer(model=SmallCNN(), args=training, train_dataset=Images(True, args.train_limit),
                              eps=args.eps, callbacks=[monitor])                                 # codiag
        trainer.train()

    alarm = monitor.monitor.co_alarm
    print(f"run: {args.out}   stopped after {trainer.state.global_step} steps   "
          f"CO: {alarm['reason'] if alarm else 'none'}")
    if not args.no_report:
        print(f"report: {codiag.report(args.out)}")                                           # codiag
    return 0


if __name__ == "__main__":
    sys.exit(main())
