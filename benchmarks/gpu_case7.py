"""Rerun, on a GPU, the hand-written loop that showed GradAlign not learning at eps 16/255.

    python benchmarks/gpu_case7.py --data-root /path/with/cifar-10-batches-py [--out results.json]
    python benchmarks/gpu_case7.py --methods gradalign --epochs 5      # a short look at one method

The loop (a user's own, not ``codiag train``): PreAct ResNet-18 from ``codiag.build_model``,
CIFAR-10 training images 0-14,999 with crop and flip (``codiag.make_loader``), eps 16/255,
SGD momentum 0.9, weight decay 5e-4, cyclic learning rate peaking at 0.2 at 2/5 of training,
batch 128, ``--epochs`` (20) epochs of ``method.train_step``, under ``codiag.monitor`` for the
CO alarm; after every epoch the clean and PGD-10 (step eps/4, fp32, eval mode) accuracy on the
first 1,000 test points. Each method runs in fp32 and, with ``--amp``, under bf16 autocast.

GradAlign diagnostics per epoch (the questions the failure raised): the number of steps whose
loss, regulariser or parameter gradient was not finite; the mean training cosine and the mean
share of samples left out of it (a zero input gradient at x or x + eta); the largest parameter
gradient norm. For every method, the clean accuracy also with BatchNorm's batch statistics
(train mode), to tell a BatchNorm mismatch from a degenerate model. ZeroGrad runs with its
paper defaults and with its 16/255 setting (``codiag.methods.settings``).

What the CPU showed (a small PreAct network of codiag's blocks, 16-64 channels, CIFAR-10
images 0-2,999 at 16x16, SGD lr 0.2 cyclic, eps 16/255, 8 epochs): with PyTorch's default
initialisation GradAlign learned (clean 0.17-0.23, PGD-10 0.10-0.18 on 300 test points);
with GradAlign's own He initialisation it fell below chance (clean 0.06 at epoch 4, PGD-10
0.00-0.03 throughout). In a 4-epoch rerun with He initialisation, the accuracy with batch
statistics stayed within 0.03 of the eval-mode one from epoch 2 on (PGD-10 0.007 at the end).

``gradalign_he_init`` repeats GradAlign with the weights initialised as GradAlign's own code
does.

The three-way check of GradAlign's 16/255 collapse (lambda 2: the parameter gradient spikes
10-70x near the learning-rate peak in fp32 and the network falls to a constant classifier):

    python benchmarks/gpu_case7.py --data-root ... --methods gradalign gradalign_skip --fp16

runs GradAlign in fp32, in fp16 with ``torch.amp.GradScaler`` (the paper trained with apex's
dynamic loss scaling, which skips the steps whose gradients overflow; ``skipped`` counts them)
and in fp32 with ``-m skip_spikes=5`` (``gradalign_skip``: the step whose gradient norm is above
5x the median of the last 50 is skipped). Three runs of 20 epochs: about 8 minutes on one H200
(estimated from the six-run figure below; not run: no GPU was lent).

Prints one line per epoch and writes every number to ``--out`` (JSON). Not part of the
test suite. It needs a GPU: all six runs in fp32 take an estimated 15 minutes on one H200;
``--methods gradalign gradalign_he_init`` about half.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from codiag import attacks, build_model, monitor
from codiag.data import load_dataset, make_loader
from codiag.methods import get_method
from codiag.methods.gradalign import cosine_per_sample
from codiag.methods.settings import validated_hparams
from codiag.schedules import make_schedule

EPS = 16 / 255
RUNS = {  # label -> (registry name, hparams)
    "fgsm_rs": ("fgsm_rs", {}),
    "n_fgsm": ("n_fgsm", {}),
    "zerograd": ("zerograd", {}),
    "zerograd_16": ("zerograd", validated_hparams("zerograd", "cifar10", EPS)),
    "gradalign": ("gradalign", {}),
    # the same with the weights initialised as GradAlign's train.py does: the initialisation
    # decided GradAlign's outcome on the CPU (module docstring)
    "gradalign_he_init": ("gradalign", {}),
    # fp32 with the fp16 loss scaler's step skipping as a rule on the gradient norm
    "gradalign_skip": ("gradalign", {"skip_spikes": 5.0}),
}


def gradalign_init(module: torch.nn.Module) -> None:
    """GradAlign's ``utils.initialize_weights`` (utils.py L317-330): He-normal with fan-out for
    convolutions, N(0, 2 / fan_in) for linear layers, zero biases, BatchNorm weight 1 bias 0."""
    if isinstance(module, torch.nn.Conv2d):
        n = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
        torch.nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / n))
    elif isinstance(module, torch.nn.Linear):
        torch.nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / module.in_features))
    elif isinstance(module, torch.nn.BatchNorm2d):
        torch.nn.init.ones_(module.weight)
    if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm2d)) and module.bias is not None:
        torch.nn.init.zeros_(module.bias)


def gradalign_probe(method, model, x, y) -> dict[str, float]:
    """Share of samples without a cosine and the mean cosine at this batch, in train mode as the
    method takes them; BatchNorm's running averages are restored, so training is unchanged."""
    g = torch.Generator(device=x.device).manual_seed(1)
    saved = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    x1 = x.detach().requires_grad_(True)
    gx = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x1), y, reduction="sum"), x1)[0]
    eta = (torch.rand(x.shape, generator=g, device=x.device) * 2 - 1) * method.eps
    x2 = (x + eta).clamp(0, 1).requires_grad_(True)
    ge = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x2), y, reduction="sum"), x2)[0]
    cos, valid = cosine_per_sample(gx, ge)
    model.load_state_dict(saved, strict=False)
    return {"excluded": float(1 - valid.float().mean()), "cos": float(cos[valid].mean()) if valid.any() else math.nan}


def fp16_step(method, model, opt, scaler, x, y, meta) -> torch.Tensor:
    """GradAlign's ``train_step`` (perturb, loss, backward, step) under fp16 autocast with a
    dynamic loss scaler: a step whose scaled gradients overflow is skipped and the scale halved."""
    with torch.autocast(x.device.type, dtype=torch.float16):
        loss = method.loss(model, x, y, method.perturb(model, x, y, meta))
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss.detach()


def run(label: str, name: str, hp: dict, args: argparse.Namespace, precision: str, data) -> list[dict]:
    train_set, test_x, test_y = data
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model, "cifar10").to(device)
    if label.endswith("_he_init"):
        model.apply(gradalign_init)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=5e-4)
    loader = make_loader(train_set, 128, shuffle=True, augment=True, with_index=True, seed=0, device=device)
    method = get_method(name, EPS, seed=0, num_samples=len(train_set), epochs=args.epochs, **hp)
    lr_at = make_schedule("cyclic", 0.2, args.epochs, 0.4)
    amp = precision == "bf16"
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else nullcontext
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    skipped = 0
    rows = []
    out_dir = Path(args.run_root) / f"{label}{'' if precision == 'fp32' else '-' + precision}"
    with monitor(model, opt, out_dir, eps=EPS, probe_data=(test_x[:256], test_y[:256]),
                 attack=method.perturb, method=method, probes=["robust_acc", "grad_align"],
                 overwrite=True) as mon:
        for epoch in range(args.epochs):
            t0 = time.perf_counter()
            method.on_epoch_start(epoch)
            model.train()
            bad, grad_max, diag = 0, 0.0, []
            for i, (x, y, meta) in enumerate(loader):
                for group in opt.param_groups:
                    group["lr"] = lr_at(epoch + (i + 1) / len(loader))
                if scaler is not None:
                    scale = scaler.get_scale()
                    loss = fp16_step(method, model, opt, scaler, x, y, meta)
                    skipped += int(scaler.get_scale() < scale)
                else:
                    with ctx():
                        loss = method.train_step(model, opt, x, y, meta)
                if name == "gradalign" and i % 20 == 0:
                    gn = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in model.parameters()
                                        if p.grad is not None))
                    bad += int(not torch.isfinite(loss)) + int(not torch.isfinite(gn))
                    grad_max = max(grad_max, float(gn))
                    diag.append(gradalign_probe(method, model, x, y))
            mon.epoch_end()
            # clean accuracy with batch statistics (train mode, running averages restored): far
            # above the eval-mode accuracy means BatchNorm's running averages no longer fit
            saved = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
            model.train()
            with torch.no_grad():
                batch_stats_acc = sum(int((model(test_x[j:j + 200]).argmax(1) == test_y[j:j + 200]).sum())
                                      for j in range(0, len(test_y), 200)) / len(test_y)
            model.load_state_dict(saved, strict=False)
            model.eval()
            res = attacks.evaluate(model, (test_x, test_y), EPS, n=len(test_y), pgd_steps=10, restarts=1, seed=0)
            row = {"label": label, "precision": precision, "epoch": epoch + 1, "clean": res["clean_acc"],
                   "clean_batch_stats": batch_stats_acc,
                   "pgd10": res["pgd_acc"], "co_alarm": bool(mon.co_detected),
                   "seconds": time.perf_counter() - t0}
            if name == "gradalign":
                row.update(nonfinite_checks=bad, grad_norm_max=grad_max,
                           train_cos=float(method.state()["train_cos"]),
                           excluded=sum(d["excluded"] for d in diag) / max(len(diag), 1),
                           probe_cos=sum(d["cos"] for d in diag) / max(len(diag), 1),
                           skipped=skipped if scaler is not None else method.state().get("skipped_steps", 0))
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--methods", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--amp", action="store_true", help="also run each method under bf16 autocast")
    p.add_argument("--fp16", action="store_true", help="also run GradAlign (without the skip) in fp16 "
                   "with a dynamic loss scaler, as the paper trained")
    p.add_argument("--fp32", action="store_true", help="run in fp32 (default when --amp is not given)")
    p.add_argument("--run-root", default="runs/gpu_case7")
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="preact_resnet18", help="cnn4 for a quick CPU check of the script")
    p.add_argument("--train-limit", type=int, default=15000)
    p.add_argument("--eval-n", type=int, default=1000)
    p.add_argument("--out", default="gpu_case7.json")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_case7: no GPU (pass --device cpu --model cnn4 to check the script)")
    train_set = load_dataset("cifar10", root=args.data_root, train=True, limit=args.train_limit)
    test = load_dataset("cifar10", root=args.data_root, train=False, limit=args.eval_n)
    data = (train_set, test.images.float().div(255).to(args.device), test.labels.to(args.device))
    precisions = (["fp32"] if args.fp32 or not args.amp else []) + (["bf16"] if args.amp else [])
    runs = [(label, p) for label in args.methods for p in precisions]
    if args.fp16:
        runs += [(label, "fp16") for label in args.methods
                 if RUNS[label][0] == "gradalign" and label != "gradalign_skip"]
    results = [row for label, precision in runs for row in run(label, *RUNS[label], args, precision, data)]
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
