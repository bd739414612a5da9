"""The reference trainer behind ``codiag train`` and ``codiag demo``.

It is an ordinary single-step adversarial-training loop, wrapped in the public
``codiag.monitor`` exactly as a user would wrap their own loop, followed by
the final evaluation (PGD-50-10 in fp32 on the first ``eval_n`` test points,
GradAlign Appendix B). Defaults reproduce the embedded CO demo (``codiag demo``):
cnn4 on Fashion-MNIST, eps 0.2, FGSM with step eps, Adam 3e-3 with a cyclic
(one-cycle) schedule, batch 128, 30k training images.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Mapping

import torch
from tqdm.auto import tqdm

from . import attacks, checkpoint
from .checkpoint import rng_state, set_rng_state
from .config import TrainConfig
from .data import load_dataset, make_loader
from .errors import UsageError
from .methods import Method, get_method
from .models import build_model
from .monitoring import monitor
from .rundir import RunLock, check_run_dir, read_meta, rewind
from .runs import to_jsonable
from .schedules import make_schedule


def build_method(cfg: TrainConfig, num_samples: int) -> Method:
    """The training method of ``cfg`` with its resolved hyper-parameters, the run's seed, the
    training-set size (per-sample state) and the number of epochs (ATTA/ATAS skip the re-draw
    of their stored perturbations in the last epoch, as their reference does)."""
    return get_method(cfg.method, cfg.eps, **{"seed": cfg.seed, "num_samples": num_samples,
                                               "epochs": cfg.epochs, **cfg.method_args})


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("device cuda was asked for but no GPU is available")
    return dev


def _optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def train(config: Mapping[str, Any] | TrainConfig, resume: bool = False,
          overwrite: bool = False) -> Path:
    """Train with ``config`` (a dict or TrainConfig); return the run directory.

    Every epoch ends with a resumable checkpoint (``codiag.checkpoint``) when
    ``checkpoint`` is on. ``resume=True`` continues an interrupted or killed run in
    ``config.out`` from its last checkpoint (from the start if it has none; a finished
    run is left as it is); what the run recorded after that checkpoint is dropped and
    recorded again, and the final weights equal those of an uninterrupted run bit for
    bit on the CPU. The options must be the run's own (``out``, ``device``,
    ``data_root``, ``download`` and ``progress`` aside). The run directory is checked
    before any data is loaded.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    cfg.validate()
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    state = None
    if check_run_dir(out, resume, overwrite) == "run" and resume:
        previous = read_meta(out)
        _check_same_config(out, previous.get("config", {}), cfg)
        if previous.get("status") == "finished":
            return out
        state = _resume_state(out, cfg, device)
    torch.manual_seed(cfg.seed)

    train_set = load_dataset(cfg.dataset, root=cfg.data_root, train=True, limit=cfg.train_limit,
                             download=cfg.download)
    test_set = load_dataset(cfg.dataset, root=cfg.data_root, train=False, download=cfg.download)
    augment = cfg.augment if cfg.augment is not None else cfg.dataset in ("cifar10", "cifar100", "svhn")
    train_loader = make_loader(train_set, cfg.batch_size, shuffle=True, augment=augment,
                               with_index=True, seed=cfg.seed, device=device)
    test_loader = make_loader(test_set, 500, shuffle=False, device=device)

    model = build_model(cfg.model, train_set.spec).to(device)
    optimizer = _optimizer(cfg, model)
    method = build_method(cfg, len(train_set))
    lr_at = make_schedule(cfg.lr_schedule, cfg.lr, cfg.epochs, cfg.lr_peak_at, cfg.lr_milestones)
    steps_per_epoch = len(train_loader)
    use_amp = cfg.amp and device.type == "cuda"
    first_epoch, stopped, time_before = 0, False, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        method.load_state_dict(state["method"])
        train_loader.set_epoch(state["loader_epoch"])
        first_epoch, stopped, time_before = state["epoch"], state["stopped"], state["train_time_s"]

    record = dataclasses.asdict(cfg) | {"device_resolved": str(device), "train_size": len(train_set),
                                        "augment_resolved": augment}
    ckpt = out / "checkpoints"
    start = time.perf_counter()
    with monitor(model, optimizer, cfg.out, eps=cfg.eps, probe_data=test_loader,
                 train_data=train_loader, attack=method.perturb, method=method, every=cfg.every,
                 probes=cfg.probes, probe_n=cfg.probe_n, train_probe_n=cfg.train_probe_n,
                 config=record, resume=resume, overwrite=overwrite,
                 detector=None if cfg.detector == "none" else cfg.detector) as mon:
        if state is not None:
            set_rng_state(state["rng"])
            mon.step, mon.epoch = state["step"], state["epoch"]
        epochs = tqdm(range(first_epoch, 0 if stopped else cfg.epochs), desc=f"{cfg.method} {cfg.dataset}",
                      unit="epoch", disable=not cfg.progress, initial=first_epoch, total=cfg.epochs)
        for epoch in epochs:
            method.on_epoch_start(epoch)
            model.train()
            loss_sum = torch.zeros((), device=device)
            for i, (x, y, meta) in enumerate(train_loader):
                lr = lr_at(epoch + (i + 1) / steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    loss = method.train_step(model, optimizer, x, y, meta)
                loss_sum += loss.detach().float()
            mon.log("train", {"loss": loss_sum / max(steps_per_epoch, 1), "lr": lr_at(epoch + 1)})
            mon.epoch_end()
            if method.on_epoch_end(epoch, model, optimizer, mon):
                # ZeroGrad roll-back restored weights from before the collapse: record it and
                # re-arm the detector so a second collapse is seen too.
                details = getattr(method, "last_rollback", {})
                mon.event("rollback", **{k: v for k, v in details.items() if k != "epoch"})
                mon.reset_co()
            elif (cfg.stop_after_co is not None and mon.co_detected
                  and mon.epoch - mon.co_alarm["epoch"] >= cfg.stop_after_co):
                mon.event("stopped_after_co", alarm_epoch=mon.co_alarm["epoch"])
                stopped = True
            if cfg.checkpoint:
                ckpt.mkdir(exist_ok=True)
                checkpoint.save({
                    "version": checkpoint.CHECKPOINT_VERSION, "epoch": epoch + 1, "step": mon.step,
                    "stopped": stopped, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "method": method.state_dict(), "rng": rng_state(), "loader_epoch": train_loader.epoch,
                    "train_time_s": time_before + time.perf_counter() - start,
                }, ckpt / checkpoint.RESUME_FILE, inside=out)
            if stopped:
                break
        train_time = time_before + time.perf_counter() - start

        result: dict[str, Any] = {}
        if cfg.eval_n > 0:
            result = attacks.evaluate(model, test_loader, cfg.eps, n=cfg.eval_n,
                                      pgd_steps=cfg.eval_steps, restarts=cfg.eval_restarts,
                                      seed=cfg.seed)
            if cfg.autoattack:
                x, y = _first_points(test_loader, min(cfg.eval_n, 1000))
                result["aa_acc"] = attacks.autoattack(model, x, y, cfg.eps, seed=cfg.seed)["aa_acc"]
            mon.log("eval", {k: v for k, v in result.items() if isinstance(v, (int, float))})
        if cfg.checkpoint:
            ckpt.mkdir(exist_ok=True)
            checkpoint.save(model.state_dict(), ckpt / "final.pt", inside=out)
        mon.update(train_time_s=train_time, final=result)
    (ckpt / checkpoint.RESUME_FILE).unlink(missing_ok=True)  # finished: final.pt is what stays
    return out


#: options that may differ when a run is resumed (where it runs, not what it computes)
_RESUME_FREE = ("out", "device", "data_root", "download", "progress")


def _check_same_config(out: Path, recorded: Mapping[str, Any], cfg: TrainConfig) -> None:
    """UsageError unless ``cfg`` is the configuration ``out`` was started with."""
    if "method" not in recorded or "epochs" not in recorded:
        raise UsageError(f"{out} was not written by codiag train; it cannot be resumed by it")
    now = json.loads(json.dumps(to_jsonable(dataclasses.asdict(cfg))))
    for key, value in now.items():
        if key not in _RESUME_FREE and key in recorded and recorded[key] != value:
            raise UsageError(f"{out} was trained with {key}={recorded[key]!r}, not {value!r}: "
                             "--resume continues a run with its own options")


def _resume_state(out: Path, cfg: TrainConfig, device: torch.device) -> dict[str, Any] | None:
    """The last checkpoint of ``out`` (None: start again), with the run rewound to its step."""
    file = out / "checkpoints" / checkpoint.RESUME_FILE
    state = None
    if cfg.checkpoint and file.exists():
        try:
            state = checkpoint.load(file, map_location=device)
        except Exception as e:  # a checkpoint that does not load is an error, not a silent restart
            raise UsageError(f"cannot read the checkpoint {file}: {str(e).splitlines()[0]}") from None
    lock = RunLock(out)
    try:
        rewind(out, state["step"] if state is not None else 0)
    finally:
        lock.release()
    return state


def _first_points(loader, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys, have = [], [], 0
    for batch in loader:
        xs.append(batch[0])
        ys.append(batch[1])
        have += len(batch[0])
        if have >= n:
            break
    return torch.cat(xs)[:n], torch.cat(ys)[:n]
