"""A synthetic run directory holding every metric key and array the probes declare.

For tests of the figure builders and for trying ``codiag report`` without
training: the numbers are made up (a CO-like collapse at ``co_epoch``) and the
run's config says ``synthetic: true``. Never presented as results.

What is written comes from the probes' declarations (``Probe.keys()`` and
``Probe.arrays()``), so a new probe's outputs appear here without an edit: a
key gets a generic curve that jumps at the collapse, an array random values
of its declared shape. ``VALUES`` and ``ARRAYS`` below give the few outputs
whose shape a figure or a test relies on (the collapse the detector must find,
the Laplace-like filter of GradAlign Fig. 5) their own values.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from codiag.probes import PROBES
from codiag.probes.fgsm_pgd_cos import FgsmPgdCos
from codiag.probes.filters import Filters
from codiag.probes.grad_align import GradAlign
from codiag.probes.instance_grad_norm import InstanceGradNorm
from codiag.probes.linear_approx import LinearApprox
from codiag.probes.loss_surface import LossSurface
from codiag.probes.method_state import MethodState
from codiag.probes.outputs import Array, Key
from codiag.probes.perturbation_delta import PerturbationDelta
from codiag.probes.perturbation_norm import PerturbationNorm
from codiag.probes.robust_acc import RobustAcc
from codiag.probes.sign_agreement import SignAgreement
from codiag.probes.strength_gap import StrengthGap
from codiag.probes.weight_update import WeightUpdate
from codiag.runs import RunWriter

N_TRAIN, N_PROBE, GRID, STEPS_PER_EPOCH = 64, 32, 9, 10
#: sizes of the axes named in the arrays' declared shapes
DIMS = {"train_probe_n": N_TRAIN, "probe_n": N_PROBE, "grid": GRID, "out_channels": 4, "in_channels": 3,
        "kh": 3, "kw": 3, "num_samples": 2 * N_TRAIN}
#: example values of the fields in key and array names
FIELDS = {"param": ("conv.weight",), "k": ("0.25", "0.5", "0.75", "1"), "module": ("conv", "fc"),
          "state": ("alpha_input", "alpha_block_1")}
ARRAY_FIELDS = {**FIELDS, "state": ("step_size",)}


class _Event:
    """One probe event of the synthetic run: progress ``t`` in [0, 1], collapsed or not."""

    def __init__(self, epoch: int, epochs: int, co_epoch: int | None, eps: float, rng: np.random.Generator):
        self.epoch, self.eps, self.rng = epoch, eps, rng
        self.t = epoch / max(epochs, 1)
        self.after = co_epoch is not None and epoch >= co_epoch
        self.jump = 50.0 if co_epoch is not None and epoch == co_epoch else 1.0
        self.pgd = 0.02 if self.after else 0.2 + 0.2 * self.t

    def generic(self) -> float:
        return (1.0 + 0.1 * self.t) * (5.0 if self.after else 1.0)


#: key -> value at an event (fields of a pattern key as keyword arguments)
VALUES: dict[Key, Callable[..., float]] = {
    RobustAcc.clean_acc: lambda e: 0.5 + 0.3 * e.t,
    RobustAcc.clean_loss: lambda e: 1.5 - 0.5 * e.t,
    RobustAcc.fgsm_acc: lambda e: 0.8 if e.after else e.pgd + 0.05,
    RobustAcc.fgsm_loss: lambda e: 0.6 if e.after else 1.8 - 0.3 * e.t,
    RobustAcc.pgd_acc: lambda e: e.pgd,
    RobustAcc.pgd_loss: lambda e: 8.0 if e.after else 1.9 - 0.3 * e.t,
    GradAlign.mean: lambda e: 0.1 if e.after else 0.9 - 0.1 * e.t,
    GradAlign.n_zero_grad: lambda e: 0,
    GradAlign.n: lambda e: N_PROBE,
    FgsmPgdCos.mean: lambda e: 0.08 if e.after else 0.7 - 0.1 * e.t,
    WeightUpdate.mse_all: lambda e: 1e-4 * e.jump,
    WeightUpdate.mse: lambda e, param: 2e-4 * e.jump,
    PerturbationDelta.mse: lambda e: 1e-5 * e.jump,
    StrengthGap.gap: lambda e: 3.0 if e.after else 0.1,
    StrengthGap.transfer_acc: lambda e: 0.8 if e.after else 0.5,
    LinearApprox.err: lambda e, k: (5 if e.after else 1) * float(k) ** 2,
    LinearApprox.err_random: lambda e, k: 0.5 * float(k) ** 2,
    LinearApprox.l2: lambda e, k: e.eps * np.sqrt(3072 * float(k)),
    SignAgreement.disagree: lambda e: 0.48 if e.after else 0.18,
    PerturbationNorm.l1_mean: lambda e: 0.75 * e.eps * 3072,
    PerturbationNorm.l2_mean: lambda e: 0.75 * e.eps * np.sqrt(3072),
    PerturbationNorm.linf_mean: lambda e: e.eps,
}


def _surface(e: _Event, bump: float) -> np.ndarray:
    a, b = np.meshgrid(np.linspace(-1.0, 1.0, GRID), np.linspace(-1.0, 1.0, GRID), indexing="ij")
    return 1 + 20 * a * e.eps + (bump if e.after else 0.0) * np.exp(-(a ** 2 + b ** 2) * 4)


#: array -> value at an event
ARRAYS: dict[Array, Callable[..., np.ndarray]] = {
    LossSurface.axes: lambda e: np.linspace(-1.0, 1.0, GRID) * e.eps,
    LossSurface.low: lambda e: _surface(e, 0.0),
    LossSurface.high: lambda e: _surface(e, 3.0),
    PerturbationNorm.l1: lambda e: e.rng.uniform(0.5, 1.0, N_PROBE) * e.eps * 3072,
    PerturbationNorm.l2: lambda e: e.rng.uniform(0.5, 1.0, N_PROBE) * e.eps * np.sqrt(3072),
}


def _combinations(names: tuple[str, ...], fields: dict[str, tuple[str, ...]]) -> list[dict[str, str]]:
    combos: list[dict[str, str]] = [{}]
    for name in names:
        combos = [{**c, name: v} for c in combos for v in fields.get(name, ("x",))]
    return combos


def write_synthetic_run(run_dir: str | Path, method: str = "fgsm", epochs: int = 10,
                        co_epoch: int | None = 6, seed: int = 0, eps: float = 8 / 255,
                        close: bool = True, events: Sequence[tuple[str, int]] = (), **config: Any) -> Path:
    """Write a run with one probe event per epoch (step 0 included) and a collapse at
    ``co_epoch`` (None: no collapse); ``events``: more (kind, epoch) events, e.g. ``("warning", 3)``;
    ``close=False``: left as a killed run ("running", no ``run_end``). Returns the run directory."""
    rng = np.random.default_rng(seed)
    cfg = {"synthetic": True, "method": method, "eps": eps, "seed": seed, "dataset": "cifar10",
           "model": "cnn4", "epochs": epochs, "batch_size": 128, "train_size": 128 * STEPS_PER_EPOCH,
           "method_args": {}, **config}
    train_idx = np.arange(0, 2 * N_TRAIN, 2)
    cfg.setdefault("monitor", {"train_probe_set": {"n": N_TRAIN, "indices": train_idx.tolist()}})
    w = RunWriter(run_dir, cfg)
    base_norm = rng.lognormal(0.0, 0.8, N_TRAIN)
    weight = rng.normal(0, 0.3, (4, 3, 3, 3))
    laplace = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]]) * 0.2
    for epoch in range(epochs + 1):
        e = _Event(epoch, epochs, co_epoch, eps, rng)
        step = epoch * STEPS_PER_EPOCH
        if e.after:         # one filter turns into an edge detector (GradAlign Fig. 5)
            weight[3] += rng.normal(0, 0.2, (3, 3, 3)) + laplace
        per_event = {
            Filters.weight: lambda e: weight.copy(),
            Filters.norms: lambda e: np.sqrt((weight ** 2).sum(axis=(1, 2, 3))),
            InstanceGradNorm.norms: lambda e: base_norm * (1 + 0.1 * rng.random(N_TRAIN)) * (5 if e.after else 1),
            MethodState.array: lambda e, state: _full(train_idx, 1.0 / (1 + base_norm)),
        }
        for cls in PROBES.values():
            for key in cls.keys():
                for f in _combinations(key.fields, FIELDS):
                    value = VALUES[key](e, **f) if key in VALUES else e.generic()
                    w.log(step, epoch, key.probe, key.format(**f), float(value))
            for arr in cls.arrays():
                make = per_event.get(arr) or ARRAYS.get(arr)
                for f in _combinations(arr.fields, ARRAY_FIELDS):
                    value = make(e, **f) if make else rng.random([DIMS.get(d, 3) for d in arr.shape])
                    w.save_array(arr.format(**f), step, value)
        w.log_many(step, epoch, "train", {"loss": 1.0 - 0.05 * epoch, "lr": 0.1})
        w.flush()
        if co_epoch is not None and epoch == co_epoch:
            w.event("co_alarm", step=step, epoch=epoch, reason="synthetic collapse")
        for kind, at in events:
            if at == epoch:
                w.event(kind, step=step, epoch=epoch, reason=f"synthetic {kind}")
    final = {"clean_acc": 0.8, "pgd_acc": e.pgd, "n": 100}
    w.log_many(epochs * STEPS_PER_EPOCH, epochs, "eval", final)
    w.update(train_time_s=12.5, final=final)
    if close:
        w.close()
    else:
        w.detach()
    return Path(run_dir)


def _full(index: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per-sample state over the whole training set: values at ``index``, NaN elsewhere."""
    out = np.full(DIMS["num_samples"], np.nan)
    out[index] = values
    return out
