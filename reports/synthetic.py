"""A synthetic run directory holding every metric key and array the reports read.

For tests of the figure builders and for trying ``codiag report`` without
training: the numbers are made up (a CO-like collapse at ``co_epoch``) and the
run's config says ``synthetic: true``. Never presented as results.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from codiag.runs import RunWriter


def write_synthetic_run(run_dir: str | Path, method: str = "fgsm", epochs: int = 10,
                        co_epoch: int | None = 6, seed: int = 0, eps: float = 8 / 255,
                        close: bool = True, **config: Any) -> Path:
    """Write a run with one probe event per epoch (step 0 included) and a collapse at
    ``co_epoch`` (None: no collapse). Returns the run directory."""
    rng = np.random.default_rng(seed)
    n_train, n_probe, grid = 64, 32, 9
    spe = 10
    cfg = {"synthetic": True, "method": method, "eps": eps, "seed": seed, "dataset": "cifar10",
           "model": "cnn4", "epochs": epochs, "batch_size": 128, "train_size": 128 * spe,
           "method_args": {}, **config}
    train_idx = np.arange(0, 2 * n_train, 2)
    cfg.setdefault("monitor", {"train_probe_set": {"n": n_train, "indices": train_idx.tolist()}})
    w = RunWriter(run_dir, cfg)
    base_norm = rng.lognormal(0.0, 0.8, n_train)
    weight = rng.normal(0, 0.3, (4, 3, 3, 3))
    for epoch in range(epochs + 1):
        step = epoch * spe
        after = co_epoch is not None and epoch >= co_epoch
        t = epoch / max(epochs, 1)
        pgd = 0.02 if after else 0.2 + 0.2 * t
        w.log_many(step, epoch, "robust_acc", {
            "clean_acc": 0.5 + 0.3 * t, "clean_loss": 1.5 - 0.5 * t,
            "fgsm_acc": 0.8 if after else pgd + 0.05, "fgsm_loss": 0.6 if after else 1.8 - 0.3 * t,
            "pgd_acc": pgd, "pgd_loss": 8.0 if after else 1.9 - 0.3 * t})
        w.log_many(step, epoch, "grad_align", {"mean": 0.1 if after else 0.9 - 0.1 * t,
                                               "n_zero_grad": 0, "n": n_probe})
        w.log(step, epoch, "fgsm_pgd_cos", "mean", 0.08 if after else 0.7 - 0.1 * t)
        jump = 50.0 if co_epoch is not None and epoch == co_epoch else 1.0
        if epoch > 0:
            w.log_many(step, epoch, "weight_update", {
                "mse_all": 1e-4 * jump, "l2_all": 0.1 * jump,
                "mse/conv.weight": 2e-4 * jump, "l2/conv.weight": 0.02 * jump})
            for mod, n_out in (("conv", 4), ("fc", 3)):
                w.save_array(f"weight_update.kernel_mse.{mod}", step,
                             1e-4 * jump * (1 + rng.random(n_out)))
            w.log(step, epoch, "perturbation_delta", "mse", 1e-5 * jump)
        w.log_many(step, epoch, "strength_gap", {
            "gap": 3.0 if after else 0.1, "loss_method": 1.0, "loss_pgd": 1.1,
            "transfer_acc": 0.8 if after else 0.5})
        for k in (0.25, 0.5, 0.75, 1.0):
            w.log(step, epoch, "linear_approx", f"err/k={k}", (5 if after else 1) * k ** 2)
            w.log(step, epoch, "linear_approx", f"err_random/k={k}", 0.5 * k ** 2)
            w.log(step, epoch, "linear_approx", f"l2/k={k}", eps * np.sqrt(3072 * k))
        w.log(step, epoch, "sign_agreement", "disagree", 0.48 if after else 0.18)
        l1 = rng.uniform(0.5, 1.0, n_probe) * eps * 3072
        l2 = rng.uniform(0.5, 1.0, n_probe) * eps * np.sqrt(3072)
        w.log_many(step, epoch, "perturbation_norm", {"l1_mean": l1.mean(), "l2_mean": l2.mean(),
                                                      "linf_mean": eps})
        w.save_array("perturbation_norm.l1", step, l1)
        w.save_array("perturbation_norm.l2", step, l2)
        g = base_norm * (1 + 0.1 * rng.random(n_train)) * (5 if after else 1)
        w.save_array("instance_grad_norm", step, g)
        w.log_many(step, epoch, "instance_grad_norm", {
            "mean": g.mean(), "median": float(np.median(g)), "max": g.max(),
            "long_tail_ratio": float((g ** 2).mean() / g.mean() ** 2)})
        axes = np.linspace(-1.0, 1.0, grid) * eps
        a, b = np.meshgrid(axes, axes, indexing="ij")
        bump = (3.0 if after else 0.0) * np.exp(-((a / eps) ** 2 + (b / eps) ** 2) * 4)
        w.save_array("loss_surface.low", step, 1 + 20 * a + 5 * b ** 2 * 100)
        w.save_array("loss_surface.high", step, 1 + 40 * a + bump)
        w.save_array("loss_surface.axes", step, axes)
        if after:
            weight[3] += rng.normal(0, 0.2, (3, 3, 3)) + np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]]) * 0.2
        w.save_array("filters.weight", step, weight.copy())
        w.save_array("filters.norms", step, np.sqrt((weight ** 2).sum(axis=(1, 2, 3))))
        w.log_many(step, epoch, "method_state", {"alpha_input": 0.03 + 0.001 * epoch,
                                                 "alpha_block_1": 0.01 * (1 + t), "n_blocks": 1})
        full = np.full(2 * n_train, np.nan)
        full[train_idx] = 1.0 / (1 + base_norm)
        w.save_array("method_state.step_size", step, full)
        w.log_many(step, epoch, "train", {"loss": 1.0 - 0.05 * epoch, "lr": 0.1})
        w.flush()
        if co_epoch is not None and epoch == co_epoch:
            w.event("co_alarm", step=step, epoch=epoch, reason="synthetic collapse")
    w.log_many(epochs * spe, epochs, "eval", {"clean_acc": 0.8, "pgd_acc": pgd, "n": 100})
    w.update(train_time_s=12.5, final={"clean_acc": 0.8, "pgd_acc": pgd, "n": 100})
    if close:
        w.close()
    else:
        w.flush()
    return Path(run_dir)
