"""``codiag train``: the reference trainer (codiag.train) from the command line."""
from __future__ import annotations

import argparse
import json
from typing import Any

from ..config import TrainConfig
from ..errors import UsageError
from ..parsing import int_at_least, parse_eps, parse_fraction

_positive_int = int_at_least(0)


def _eps(text: str) -> float:
    try:
        return parse_eps(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _number(text: str) -> float:
    try:
        return parse_fraction(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _method_arg(text: str) -> tuple[str, Any]:
    """KEY=VALUE; the value is read as JSON, a fraction like 8/255, or a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed: Any = json.loads(value)
    except json.JSONDecodeError:
        try:
            parsed = parse_fraction(value)
        except UsageError:
            parsed = value
    return key.strip(), parsed


def add_training_options(p: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    """Options shared by ``train`` and ``demo``; defaults are the demo's (the README's ``codiag demo``)."""
    d = defaults
    p.add_argument("--out", "-o", default=d.out, help="run directory to write (default %(default)s)")
    p.add_argument("--dataset", default=d.dataset,
                   help="fashion_mnist (embedded), mnist, cifar10, cifar100, svhn")
    p.add_argument("--data-root", default=d.data_root,
                   help="folder in torchvision's layout (needed for all but fashion_mnist)")
    p.add_argument("--download", action="store_true", help="let torchvision download the dataset")
    p.add_argument("--model", default=d.model, help="cnn4, small_cnn, preact_resnet18, resnet18, wrn28_10, wrn34_10")
    p.add_argument("--method", default=d.method, help="training method (see `codiag train --list-methods`)")
    p.add_argument("--method-arg", "-m", action="append", type=_method_arg, default=[],
                   metavar="KEY=VALUE", help="method hyper-parameter, repeatable (e.g. -m q=0.35)")
    p.add_argument("--eps", type=_eps, default=d.eps, help="L-inf radius in pixel units, e.g. 8/255")
    p.add_argument("--epochs", type=_positive_int, default=d.epochs)
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size)
    p.add_argument("--optimizer", choices=("sgd", "adam"), default=d.optimizer)
    p.add_argument("--lr", type=_number, default=d.lr, help="peak learning rate")
    p.add_argument("--lr-schedule", choices=("cyclic", "onecycle", "piecewise", "constant"),
                   default=d.lr_schedule, help="onecycle: torch's OneCycleLR stepped per epoch, momentum "
                   "cycling 0.95-0.85 (the FastAT Benchmark's); cyclic: linear up to --lr-peak and down")
    p.add_argument("--lr-peak", type=_number, default=d.lr_peak_at, metavar="FRACTION",
                   help="where the cyclic schedule peaks, as a fraction of training (default: the "
                   "method's paper value, 2/5 for GradAlign's code, 1/2 for Wong et al., ZeroGrad, "
                   "N-FGSM, APART)")
    p.add_argument("--lr-milestones", type=_number, nargs="*", default=d.lr_milestones,
                   help="epochs where a piecewise schedule multiplies lr by 0.1")
    p.add_argument("--momentum", type=_number, default=d.momentum)
    p.add_argument("--weight-decay", type=_number, default=d.weight_decay)
    p.add_argument("--train-limit", type=_positive_int, default=d.train_limit,
                   help="use the first N training images (default %(default)s)")
    p.add_argument("--seed", type=_positive_int, default=d.seed)
    p.add_argument("--amp", action="store_true", help="bf16 autocast for training on a GPU "
                   "(probes and evaluation stay fp32)")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--probes", default=d.probes, help="default, all, none, or a comma list")
    p.add_argument("--every", default=d.every, help="'epoch' or a number of optimizer steps")
    p.add_argument("--eval-n", type=_positive_int, default=d.eval_n,
                   help="test points for the final PGD evaluation (default %(default)s; 0 skips it)")
    p.add_argument("--eval-steps", type=_positive_int, default=d.eval_steps,
                   help="PGD steps of the final evaluation (default %(default)s)")
    p.add_argument("--eval-restarts", type=_positive_int, default=d.eval_restarts,
                   help="PGD restarts of the final evaluation (default %(default)s)")
    p.add_argument("--autoattack", action="store_true", help="also run AutoAttack (torchattacks)")
    p.add_argument("--stop-after-co", type=_positive_int, default=d.stop_after_co, metavar="N",
                   help="end training N epochs after the online CO alarm (default: train on)")
    p.add_argument("--detector", default=d.detector, metavar="{codiag,elle_a,both,none}",
                   help="online CO alarm: codiag's rules, elle_a (ELLE-A's rule on the local_linearity "
                        "probe), both (whichever fires first), none")
    p.add_argument("--guard", nargs="?", const="auto", default=d.guard, metavar="POLICY",
                   help="on the CO alarm, roll back to the last healthy probe event and continue with POLICY: "
                        "n_fgsm, gradalign, atas, halve-step, or auto (the default: the validated mitigation for the "
                        "dataset and model); changes training on purpose, at most 3 roll-backs")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing codiag run directory (never a directory that is not a run)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted or killed run in --out from its last epoch checkpoint "
                   "(same options; the final weights equal an uninterrupted run's)")
    p.add_argument("--label-smoothing", type=_number, default=d.label_smoothing, metavar="S",
                   help="label smoothing of every cross entropy of the training step (FastAT Benchmark: 0.4)")
    p.add_argument("--weight-averaging", type=_number, default=d.weight_averaging, metavar="TAU",
                   help="also keep an EMA of the whole state (BatchNorm buffers too), updated each step "
                   "(FastAT Benchmark: 0.9995); probes and the final evaluation report it beside the raw model")
    p.add_argument("--val-split", type=_positive_int, default=d.val_split, metavar="N",
                   help="hold out N training images, never trained on (FastAT Benchmark: 1000)")
    p.add_argument("--select", choices=("last", "best"), default=d.select,
                   help="best: also keep the epoch-end model (raw or averaged) with the best PGD-10 accuracy "
                   "on --val-split (else the robust_acc probe's), saved as checkpoints/selected.pt and evaluated")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    if args.resume and args.overwrite:
        raise UsageError("--resume continues a run and --overwrite replaces it: give one of them")
    every: Any = args.every
    if every != "epoch":
        try:
            every = int(every)
        except ValueError:
            raise UsageError(f"--every takes 'epoch' or a number of steps, got {every!r}") from None
        if every < 1:
            raise UsageError(f"--every must be at least 1, got {every}")
    names = [p.strip() for p in args.probes.split(",") if p.strip()]
    probes = args.probes if args.probes in ("default", "all", "none") or not names else names
    cfg = TrainConfig(
        out=args.out, dataset=args.dataset, data_root=args.data_root, download=args.download,
        model=args.model, method=args.method, method_args=dict(args.method_arg), eps=args.eps,
        epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        lr_schedule=args.lr_schedule, lr_peak_at=args.lr_peak, lr_milestones=list(args.lr_milestones),
        momentum=args.momentum,
        weight_decay=args.weight_decay, train_limit=args.train_limit, seed=args.seed, amp=args.amp,
        device=args.device, probes=probes, every=every, eval_n=args.eval_n,
        eval_steps=args.eval_steps, eval_restarts=args.eval_restarts, autoattack=args.autoattack,
        stop_after_co=args.stop_after_co, detector=args.detector, guard=args.guard,
        label_smoothing=args.label_smoothing, weight_averaging=args.weight_averaging, val_split=args.val_split,
        select=args.select, progress=not args.quiet)
    cfg.validate()
    return cfg


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="adversarially train a model, monitored, into a run directory",
                       description="Train with a single-step method under the CO monitor and write "
                       "a run directory (run.json, metrics.csv, arrays/, events.jsonl).")
    add_training_options(p, TrainConfig(out="runs/train"))
    p.add_argument("--list-methods", action="store_true", help="list training methods and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..methods import METHODS  # torch: loaded when a command runs, not for --help
    from ..trainer import train

    if args.list_methods:
        for name, cls in sorted(METHODS.items()):
            doc = (cls.__doc__ or "").strip().splitlines()
            print(f"{name:18s} {doc[0] if doc else ''}")
        return 0
    cfg = config_from_args(args)
    out = train(cfg, resume=args.resume, overwrite=args.overwrite)
    print(f"run written to {out}")
    return 0
