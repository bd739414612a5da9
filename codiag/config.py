"""The reference trainer's options (:class:`TrainConfig`), in a module that loads no torch, so that
``codiag --help`` and every command's ``--help`` answer at once; :func:`codiag.train` runs them."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import UsageError
from .parsing import parse_eps, parse_fraction


@dataclass
class TrainConfig:
    """Everything a run depends on; recorded in run.json."""

    out: str = "runs/demo"
    dataset: str = "fashion_mnist"
    data_root: str | None = None
    download: bool = False
    model: str = "cnn4"
    method: str = "fgsm"
    method_args: dict[str, Any] = field(default_factory=dict)
    eps: float = 0.2
    epochs: int = 20
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 3e-3
    lr_schedule: str = "cyclic"
    lr_peak_at: float | None = None     # cyclic peak, fraction of training; None: the method's paper value
    lr_milestones: list[float] = field(default_factory=list)
    momentum: float = 0.9
    weight_decay: float = 0.0
    train_limit: int | None = 30000
    augment: bool | None = None          # None: on for CIFAR/SVHN, off otherwise (the papers)
    seed: int = 0
    amp: bool = False
    device: str = "auto"
    probes: Any = "default"
    every: Any = "epoch"
    probe_n: int = 256
    train_probe_n: int = 512
    eval_n: int = 1000
    eval_steps: int = 50
    eval_restarts: int = 10
    autoattack: bool = False
    stop_after_co: int | None = None     # end training this many epochs after the online CO alarm
    detector: str = "codiag"             # online CO alarm: codiag, elle_a (ELLE-A's rule), both, none
    guard: str | None = None             # on the alarm: roll back and switch (codiag.trainer_guard.POLICIES)
    checkpoint: bool = True
    progress: bool = True
    # the FastAT Benchmark's protocol (codiag.protocol); the defaults change nothing
    label_smoothing: float = 0.0         # smoothing of every cross entropy of the training step
    weight_averaging: float | None = None  # tau of an EMA of the whole state, updated every step
    val_split: int = 0                   # training images held out, never trained on
    select: str = "last"                 # best: also keep the epoch-end model with the best PGD-10

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UsageError(f"unknown training option(s): {', '.join(unknown)}")
        cfg = cls(**dict(d))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        from . import attacks  # the registries load torch: here, not when the command line is parsed
        from .data import DATASETS
        from .detector import DETECTORS
        from .methods import METHODS, check_method
        from .methods.settings import validated_hparams, validated_lr_peak
        from .models import MODELS
        from .probes import resolve_probes
        from .schedules import SCHEDULES
        from .trainer_guard import check_policy

        self.eps = parse_eps(self.eps)
        self.lr = parse_fraction(self.lr, "lr")
        for name, value, choices in (("dataset", self.dataset, DATASETS), ("model", self.model, MODELS),
                                     ("method", self.method, METHODS),
                                     ("lr schedule", self.lr_schedule, SCHEDULES),
                                     ("select", self.select, ("last", "best")),
                                     ("optimizer", self.optimizer, ("sgd", "adam")),
                                     ("detector", self.detector, (*DETECTORS, "none"))):
            if value not in choices:
                raise UsageError(f"unknown {name} {value!r}; choose from {', '.join(sorted(choices))}")
        # the validated setting for this dataset and eps, with the user's own values on top
        self.method_args = {**validated_hparams(self.method, self.dataset, self.eps), **self.method_args}
        if self.lr_peak_at is None:
            peak = validated_lr_peak(self.method, self.dataset, self.eps)
            self.lr_peak_at = METHODS[self.method].lr_peak if peak is None else peak
        self.lr_peak_at = parse_fraction(self.lr_peak_at, "lr peak")
        if not 0.0 < self.lr_peak_at <= 1.0:
            raise UsageError(f"lr peak must be a fraction of training in (0, 1], got {self.lr_peak_at}")
        for name in ("epochs", "batch_size", "eval_n", "eval_steps", "eval_restarts", "probe_n",
                     "train_probe_n"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name in ("epochs", "eval_n") else 1):
                raise UsageError(f"{name.replace('_', ' ')} must be a "
                                 f"{'non-negative' if name in ('epochs', 'eval_n') else 'positive'} "
                                 f"integer, got {value}")
        if self.stop_after_co is not None and (not isinstance(self.stop_after_co, int)
                                                or self.stop_after_co < 0):
            raise UsageError(f"stop after co must be a non-negative integer, got {self.stop_after_co}")
        if self.train_limit is not None and self.train_limit < 1:
            raise UsageError(f"train limit must be positive, got {self.train_limit}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise UsageError(f"lr must be a positive number, got {self.lr}")
        self.momentum = parse_fraction(self.momentum, "momentum")
        self.weight_decay = parse_fraction(self.weight_decay, "weight decay")
        if not 0.0 <= self.momentum < 1.0:
            raise UsageError(f"momentum must lie in [0, 1), got {self.momentum}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise UsageError(f"weight decay must be a non-negative number, got {self.weight_decay}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise UsageError(f"seed must be an integer in [0, 2^63), got {self.seed}")
        if not str(self.out).strip():
            raise UsageError("the run directory is empty (out=''); name a directory")
        check_method(self.method, self.method_args)
        self.guard = check_policy(self.guard, self.method, self.detector)
        probes = resolve_probes(self.probes)
        self._validate_protocol(probes)
        if self.autoattack:
            attacks.require_autoattack()     # at the start, not after the training

    def _validate_protocol(self, probes: Any) -> None:
        self.label_smoothing = parse_fraction(self.label_smoothing, "label smoothing")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UsageError(f"label smoothing must lie in [0, 1), got {self.label_smoothing}")
        if self.weight_averaging is not None:
            self.weight_averaging = parse_fraction(self.weight_averaging, "weight averaging")
            if not 0.0 < self.weight_averaging < 1.0:
                raise UsageError(f"weight averaging takes the EMA decay tau in (0, 1), e.g. 0.9995, "
                                 f"got {self.weight_averaging}")
        if isinstance(self.val_split, bool) or not isinstance(self.val_split, int) or self.val_split < 0:
            raise UsageError(f"val split must be a non-negative number of images, got {self.val_split}")
        if self.val_split and self.train_limit is not None and self.val_split >= self.train_limit:
            raise UsageError(f"val split {self.val_split} leaves no training image of the {self.train_limit}")
        if self.select == "best" and not self.val_split and ("robust_acc" not in [p.name for p in probes]
                                                             or self.every != "epoch"):
            raise UsageError("select='best' needs val_split=N, or the robust_acc probe with every='epoch' "
                             "(its PGD accuracy at each epoch's event chooses the checkpoint)")
        if self.lr_schedule == "onecycle" and self.epochs < 2:
            raise UsageError(f"the onecycle schedule needs at least 2 epochs, got {self.epochs}")
