"""The reference trainer behind ``codiag train`` and ``codiag demo``.

It is an ordinary single-step adversarial-training loop, wrapped in the public
``codiag.monitor`` exactly as a user would wrap their own loop, followed by
the final evaluation (PGD-50-10 in fp32 on the first ``eval_n`` test points,
GradAlign Appendix B). Defaults reproduce the embedded CO demo (``codiag demo``):
cnn4 on Fashion-MNIST, eps 0.2, FGSM with step eps, Adam 3e-3 with a cyclic
(one-cycle) schedule, batch 128, 30k training images.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from tqdm.auto import tqdm

from . import atomic, attacks, checkpoint, protocol
from .checkpoint import rng_state, set_rng_state
from .config import TrainConfig
from .cost import PassCounter
from .data import load_dataset, make_loader, train_val_split
from .errors import UsageError
from .methods import Method, get_method
from .models import build_model
from .monitoring import monitor
from .rundir import RunLock, check_run_dir, read_meta, rewind
from .runs import to_jsonable
from .schedules import make_schedule, momentum_schedule
from .trainer_guard import TrainerGuard


def build_method(cfg: TrainConfig, num_samples: int) -> Method:
    """The training method of ``cfg`` with its resolved hyper-parameters, the run's seed, the
    training-set size (per-sample state) and the number of epochs (ATTA/ATAS skip the re-draw
    of their stored perturbations in the last epoch, as their reference does)."""
    args = dict(cfg.method_args)
    if args.get("checkpoint_dir"):   # a method's own files live in the run directory
        where = Path(cfg.out) / str(args["checkpoint_dir"])
        atomic.check_inside(where / "x", Path(cfg.out))
        args["checkpoint_dir"] = str(where)
    return get_method(cfg.method, cfg.eps, **{"seed": cfg.seed, "num_samples": num_samples,
                                               "epochs": cfg.epochs, **args})


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
    state, created = None, not os.path.lexists(out)   # lexists: a too-long name is not an error here
    if check_run_dir(out, resume, overwrite) == "run" and resume:
        previous = read_meta(out)
        _check_same_config(out, previous.get("config", {}), cfg)
        if previous.get("status") == "finished":
            return out
        state = _resume_state(out, cfg, device, previous)
    torch.manual_seed(cfg.seed)

    train_set, test_set = _load_data(cfg, out if created else None)
    train_set, val_data = _hold_out(cfg, train_set, device)
    augment = cfg.augment if cfg.augment is not None else cfg.dataset in ("cifar10", "cifar100", "svhn")
    train_loader = make_loader(train_set, cfg.batch_size, shuffle=True, augment=augment,
                               with_index=True, seed=cfg.seed, device=device)
    test_loader = make_loader(test_set, 500, shuffle=False, device=device)

    model = build_model(cfg.model, train_set.spec).to(device)
    optimizer = _optimizer(cfg, model)
    method = build_method(cfg, len(train_set))
    lr_at = make_schedule(cfg.lr_schedule, cfg.lr, cfg.epochs, cfg.lr_peak_at, cfg.lr_milestones)
    momentum_at = momentum_schedule(cfg.lr_schedule, cfg.epochs)
    extras = protocol.Extras(model, cfg.weight_averaging, cfg.select == "best")
    steps_per_epoch = len(train_loader)
    use_amp = cfg.amp and device.type == "cuda"
    first_epoch, stopped, time_before = 0, False, 0.0
    rescue = TrainerGuard(cfg, len(train_set), method, extras)   # inert without --guard
    if state is not None:
        _restore(out, lambda: (model.load_state_dict(state["model"]), optimizer.load_state_dict(state["optimizer"])))
        method = rescue.resumed_method(state.get("guard"), method)
        _restore(out, lambda: (method.load_state_dict(state["method"]), extras.load_state_dict(state)))
        train_loader.set_epoch(state["loader_epoch"])
        first_epoch, stopped, time_before = state["epoch"], state["stopped"], state["train_time_s"]

    record = dataclasses.asdict(cfg) | {"device_resolved": str(device), "train_size": len(train_set),
                                        "augment_resolved": augment}
    ckpt = out / "checkpoints"
    passes = PassCounter(model)
    reset_peak_memory(device)
    start = time.perf_counter()
    mon = monitor(model, optimizer, cfg.out, eps=cfg.eps, probe_data=test_loader,
                  train_data=train_loader, attack=method.perturb, method=method, every=cfg.every,
                  probes=cfg.probes, probe_n=cfg.probe_n, train_probe_n=cfg.train_probe_n,
                  config=record, resume=resume, overwrite=overwrite,
                  detector=None if cfg.detector == "none" else cfg.detector, keep_best=cfg.checkpoint,
                  guard=rescue.policy(), on_co=rescue.callback())
    _start(mon, out if created else None)
    with mon:
        if state is not None:
            _restore(out, lambda: _continue(mon, state))
        identity = {"run_id": read_meta(out).get("run_id"), "config_hash": config_hash(cfg)}
        epochs = tqdm(total=cfg.epochs, desc=f"{cfg.method} {cfg.dataset}", unit="epoch",
                      disable=not cfg.progress, initial=first_epoch)
        epoch = first_epoch
        while epoch < cfg.epochs and not stopped:
            method.on_epoch_start(epoch)
            model.train()
            loss_sum = torch.zeros((), device=device)
            first = rescue.start_epoch(train_loader)   # > 0: a roll-back to a place inside this epoch
            for i, (x, y, meta) in enumerate(train_loader, start=first):
                lr = lr_at(epoch + (i + 1) / steps_per_epoch)
                _set_lr(optimizer, lr, momentum_at and momentum_at(epoch + (i + 1) / steps_per_epoch))
                before = mon.step
                with mon.events_held() if method.several_steps else contextlib.nullcontext():
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp), \
                            protocol.label_smoothing(cfg.label_smoothing):
                        loss = method.train_step(model, optimizer, x, y, meta)
                    extras.after_step(model)
                rescue.after_step(mon.co_guard, before, epoch, i + 1, train_loader)
                passes.steps += 1
                loss_sum += loss.detach().float()
                if rescue.pending:
                    break                      # the guard rolled back inside the epoch (an every=N or light event)
            if not rescue.pending:
                mon.log("train", {"loss": loss_sum / max(steps_per_epoch - first, 1), "lr": lr_at(epoch + 1)})
                rescue.position = epoch + 1        # a snapshot at this epoch's end goes on from the next
                events = mon.n_events
                mon.epoch_end()
                if not rescue.pending:
                    _protocol_epoch_end(cfg, mon, model, extras, val_data, epoch, mon.n_events > events)
            method, next_epoch, stopped = _after_epoch(cfg, mon, method, rescue, epoch, model, optimizer)
            if cfg.checkpoint:
                ckpt.mkdir(exist_ok=True)
                checkpoint.save({
                    "version": checkpoint.CHECKPOINT_VERSION, "epoch": next_epoch, "step": mon.step,
                    "monitor_epoch": mon.epoch, "monitor": mon.state_dict(),
                    "guard": rescue.state_dict(),
                    "stopped": stopped, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "method": method.state_dict(), "rng": rng_state(), "loader_epoch": train_loader.epoch,
                    **extras.state_dict(),
                    "train_time_s": time_before + time.perf_counter() - start, **identity,
                }, ckpt / checkpoint.RESUME_FILE, inside=out)
            epoch = next_epoch
            epochs.n = epoch
            epochs.refresh()
        epochs.close()
        train_time = time_before + time.perf_counter() - start
        passes.close()

        result: dict[str, Any] = {}
        if cfg.eval_n > 0:
            result = attacks.evaluate(model, test_loader, cfg.eps, n=cfg.eval_n,
                                      pgd_steps=cfg.eval_steps, restarts=cfg.eval_restarts,
                                      seed=cfg.seed)
            if cfg.autoattack:
                x, y = _first_points(test_loader, min(cfg.eval_n, 1000))
                result["aa_acc"] = attacks.autoattack(model, x, y, cfg.eps, seed=cfg.seed)["aa_acc"]
            mon.log("eval", {k: v for k, v in result.items() if isinstance(v, (int, float))})
            result.update(_final_protocol(cfg, mon, model, extras, test_loader))
        if cfg.checkpoint:
            ckpt.mkdir(exist_ok=True)
            checkpoint.save(model.state_dict(), ckpt / "final.pt", inside=out)
            for stem, weights in extras.final_states().items():    # averaged.pt, selected.pt
                checkpoint.save(weights, ckpt / f"{stem}.pt", inside=out)
        mon.update(train_time_s=train_time, final=result, peak_memory=peak_memory(device),
                   **({"cost": passes.per_step()} if passes.steps else {}))
    (ckpt / checkpoint.RESUME_FILE).unlink(missing_ok=True)  # finished: final.pt is what stays
    return out


def _after_epoch(cfg: TrainConfig, mon: Any, method: Method, rescue: TrainerGuard, epoch: int,
                 model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Method, int, bool]:
    """What follows an epoch (or a roll-back inside one): (the method, the next schedule epoch, stop)."""
    if rescue.pending:
        # the guard restored model and optimizer: the method and the schedule go back with them
        method, next_epoch = rescue.switch()
        mon.switch_attack(method.perturb, method=method)
        return method, next_epoch, False
    if mon.collapsed:
        return method, epoch + 1, True    # max_rollbacks used up: stop, keep the best checkpoint
    if method.on_epoch_end(epoch, model, optimizer, mon):
        # ZeroGrad roll-back restored weights from before the collapse: record it and
        # re-arm the detector so a second collapse is seen too.
        details = getattr(method, "last_rollback", {})
        mon.event("rollback", **{k: v for k, v in details.items() if k != "epoch"})
        mon.reset_co()
    elif (cfg.stop_after_co is not None and mon.co_detected
          and mon.epoch - mon.co_alarm["epoch"] >= cfg.stop_after_co):
        mon.event("stopped_after_co", alarm_epoch=mon.co_alarm["epoch"])
        return method, epoch + 1, True
    return method, epoch + 1, False


#: options that may differ when a run is resumed (where it runs, not what it computes)
_RESUME_FREE = ("out", "device", "data_root", "download", "progress")


def config_differences(recorded: Mapping[str, Any], cfg: TrainConfig) -> list[tuple[str, Any, Any]]:
    """(option, value in ``recorded``, value in ``cfg``) for each option that decides what a run
    computes (``_RESUME_FREE`` aside) where ``recorded``, a run.json's config, has another value."""
    now = json.loads(json.dumps(to_jsonable(dataclasses.asdict(cfg))))
    return [(key, recorded[key], value) for key, value in now.items()
            if key not in _RESUME_FREE and key in recorded and recorded[key] != value]


def _check_same_config(out: Path, recorded: Mapping[str, Any], cfg: TrainConfig) -> None:
    """UsageError unless ``cfg`` is the configuration ``out`` was started with."""
    if "method" not in recorded or "epochs" not in recorded:
        raise UsageError(f"{out} was not written by codiag train; it cannot be resumed by it")
    differences = config_differences(recorded, cfg)
    if differences:
        key, old, new = differences[0]
        raise UsageError(f"{out} was trained with {key}={old!r}, not {new!r}: "
                         "resume=True continues a run with its own options")


def _restore(out: Path, load: Callable[[], Any]) -> None:
    """Run ``load`` (objects set from resume.pt); whatever the file holds, an error is one line naming it."""
    try:
        load()
    except Exception as e:
        raise UsageError(f"cannot resume from {out / 'checkpoints' / checkpoint.RESUME_FILE}: "
                         f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None


def config_hash(cfg: TrainConfig) -> str:
    """SHA-256 of the options that decide what a run computes (``_RESUME_FREE`` aside)."""
    now = json.loads(json.dumps(to_jsonable(dataclasses.asdict(cfg))))
    kept = {k: v for k, v in now.items() if k not in _RESUME_FREE}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


#: what a resume.pt holds, each with the types it may have
_RESUME_KEYS: dict[str, tuple[type, ...]] = {
    "version": (int,), "epoch": (int,), "step": (int,), "stopped": (bool,), "model": (dict,),
    "optimizer": (dict,), "method": (dict,), "rng": (dict,), "loader_epoch": (int,),
    "train_time_s": (int, float), "run_id": (str,), "config_hash": (str,)}


def _check_resume_state(file: Path, state: Any, meta: Mapping[str, Any], cfg: TrainConfig) -> None:
    """UsageError (one line naming ``file``) unless ``state`` is this run's own checkpoint."""
    if not isinstance(state, dict):
        raise UsageError(f"cannot resume from {file}: it is not a codiag checkpoint")
    if state.get("version") != checkpoint.CHECKPOINT_VERSION and isinstance(state.get("version"), int):
        raise UsageError(f"cannot resume from {file}: checkpoint format {state['version']}, this codiag "
                         f"reads {checkpoint.CHECKPOINT_VERSION}; overwrite=True starts the run again")
    for key, types in _RESUME_KEYS.items():
        if key not in state:
            raise UsageError(f"cannot resume from {file}: it lacks {key!r} (damaged, or not written by "
                             "this codiag); overwrite=True starts the run again")
        value = state[key]
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)) \
                or (isinstance(value, int) and not isinstance(value, bool) and value < 0):
            raise UsageError(f"cannot resume from {file}: its {key!r} is not what codiag writes")
    if state["run_id"] != meta.get("run_id"):
        raise UsageError(f"cannot resume from {file}: it belongs to another run (run id "
                         f"{state['run_id'][:12]!r}, this run's is {str(meta.get('run_id'))[:12]!r})")
    if state["config_hash"] != config_hash(cfg):
        raise UsageError(f"cannot resume from {file}: it was written with other training options")


def _resume_state(out: Path, cfg: TrainConfig, device: torch.device,
                  meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The last checkpoint of ``out`` (None: start again), with the run rewound to its step."""
    file = out / "checkpoints" / checkpoint.RESUME_FILE
    state = None
    if cfg.checkpoint and file.exists():
        try:
            state = checkpoint.load(file, map_location=device)
        except Exception:  # a checkpoint that does not load is an error, not a silent restart
            raise UsageError(f"cannot resume from {file}: it is not a readable codiag checkpoint (truncated "
                             "or damaged); overwrite=True starts the run again") from None
        _check_resume_state(file, state, meta, cfg)
    lock = RunLock(out)
    try:
        rewind(out, state["step"] if state is not None else 0)
    finally:
        lock.release()
    return state


def _hold_out(cfg: TrainConfig, train_set: Any, device: torch.device) -> tuple[Any, Any]:
    """(training set, loader of the ``val_split`` held-out images or None): a seeded random
    choice, taken before anything sees the data (the benchmark: 1,000 of CIFAR-10's 50,000)."""
    if not cfg.val_split:
        return train_set, None
    train_set, val_set = train_val_split(train_set, cfg.val_split, seed=cfg.seed)
    return train_set, make_loader(val_set, 500, shuffle=False, device=device)


def _set_lr(optimizer: torch.optim.Optimizer, lr: float, momentum: float | None) -> None:
    """The learning rate, and where the schedule cycles it, SGD's momentum or Adam's beta1
    (as torch's OneCycleLR does)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        if momentum is None:
            continue
        if "betas" in group:
            group["betas"] = (momentum, *group["betas"][1:])
        else:
            group["momentum"] = momentum


def _protocol_epoch_end(cfg: TrainConfig, mon: Any, model: torch.nn.Module, extras: protocol.Extras,
                        val_data: Any, epoch: int, event: bool) -> None:
    """The averaged model's accuracy on the probe set (rows ``averaged``) and the best-checkpoint
    choice; every attack here draws from its own seeded generator, so training is unchanged."""
    averaged, best = extras.averaged, extras.best
    if averaged is None and best is None:
        return
    probe_scores: dict[str, Any] = {}
    if averaged is not None and event and mon.probe_set is not None:
        probe_scores = protocol.scores(averaged.module, (mon.probe_set.x, mon.probe_set.y), cfg.eps, cfg.seed)
        mon.log("averaged", {k: v for k, v in probe_scores.items() if k != "n"})
    if best is None:
        mon.flush()      # the rows above, before the epoch's checkpoint (resume rewinds to it)
        return
    models = {"raw": model, **({} if averaged is None else {"averaged": averaged.module})}
    if val_data is not None:     # the benchmark: PGD-10 on the held-out images, each epoch
        candidates = {}
        for name, m in models.items():
            result = protocol.scores(m, val_data, cfg.eps, cfg.seed)
            mon.log(f"val_{name}", {k: v for k, v in result.items() if k != "n"})
            candidates[name] = (result, m)
    else:                        # no held-out images: the probe set's PGD accuracy of this event
        values = mon.last_values
        pgd, clean = values.get(("robust_acc", "pgd_acc")), values.get(("robust_acc", "clean_acc"))
        candidates = {}
        if event and pgd is not None and clean is not None and math.isfinite(pgd):
            candidates["raw"] = ({"pgd_acc": pgd, "clean_acc": clean}, model)
            if probe_scores:
                candidates["averaged"] = (probe_scores, averaged.module)
    if candidates and best.consider(epoch + 1, candidates):
        mon.event("best_checkpoint", **best.summary())
    mon.flush()


def _final_protocol(cfg: TrainConfig, mon: Any, model: torch.nn.Module, extras: protocol.Extras,
                    test_loader: Any) -> dict[str, Any]:
    """The final evaluation of the averaged and the best model, as ``run.json``'s ``final.averaged``
    and ``final.best`` (the benchmark reports the model it selected; we report all three)."""
    averaged, best = extras.averaged, extras.best
    out: dict[str, Any] = {}
    others = {"averaged": None if averaged is None else averaged.module}
    if best is not None and best.state is not None:
        chosen = copy.deepcopy(model)
        chosen.load_state_dict(best.state)
        others["best"] = chosen
    for name, m in others.items():
        if m is None:
            continue
        result = attacks.evaluate(m, test_loader, cfg.eps, n=cfg.eval_n, pgd_steps=cfg.eval_steps,
                                  restarts=cfg.eval_restarts, seed=cfg.seed)
        mon.log(f"eval_{name}", {k: v for k, v in result.items() if isinstance(v, (int, float))})
        out[name] = {**result, **(best.summary() if name == "best" else {})}
    return out


def reset_peak_memory(device: torch.device) -> None:
    """Start CUDA's peak-allocation count at training (the CPU's max RSS cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, Any]:
    """run.json's ``peak_memory``: on CUDA the peak of ``torch.cuda.max_memory_allocated`` since
    training started (this process's segment of a resumed run); elsewhere the process's maximum
    resident set size (``resource.getrusage``; it covers all the process ran before, e.g. an
    earlier cell of a sweep worker), labelled by ``measure``."""
    if device.type == "cuda":
        return {"bytes": int(torch.cuda.max_memory_allocated(device)), "measure": "cuda_max_memory_allocated"}
    try:
        import resource
    except ImportError:          # no getrusage (Windows): nothing to record
        return {"bytes": None, "measure": "unavailable"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"bytes": int(rss if sys.platform == "darwin" else rss * 1024), "measure": "process_max_rss"}


def _continue(mon: Any, state: Mapping[str, Any]) -> None:
    """Give a resumed run its RNGs, its step and epoch counts, its probes' values at the last
    event, its best checkpoint and its guard."""
    set_rng_state(state["rng"])
    mon.step, mon.epoch = state["step"], state.get("monitor_epoch", state["epoch"])
    if "monitor" in state:
        mon.load_state_dict(state["monitor"])


def _load_data(cfg: TrainConfig, created: Path | None) -> tuple[Any, Any]:
    """The training and test sets; on failure the run directory this call created (still
    empty) is removed again, so a data error leaves nothing behind."""
    try:
        return (load_dataset(cfg.dataset, root=cfg.data_root, train=True, limit=cfg.train_limit,
                             download=cfg.download),
                load_dataset(cfg.dataset, root=cfg.data_root, train=False, download=cfg.download))
    except UsageError as e:   # load_dataset's root= is train()'s data_root=
        if created is not None:
            with contextlib.suppress(OSError):
                created.rmdir()
        raise UsageError(re.sub(r"\broot=", "data_root=", str(e))) from None
    except BaseException:
        if created is not None:
            with contextlib.suppress(OSError):
                created.rmdir()   # only if empty: never what another process put there since
        raise


def _start(mon: Any, created: Path | None) -> None:
    """Open the run; if even that fails (no room for run.json), the directory this call
    created (still empty) is removed again."""
    try:
        mon.start()
    except BaseException:
        if created is not None:
            with contextlib.suppress(OSError):
                created.rmdir()
        raise


def _first_points(loader, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys, have = [], [], 0
    for batch in loader:
        xs.append(batch[0])
        ys.append(batch[1])
        have += len(batch[0])
        if have >= n:
            break
    return torch.cat(xs)[:n], torch.cat(ys)[:n]
