"""``codiag.sweep(...)``: eps sweeps of several methods over seeds, the comparison of
GradAlign Fig. 1 and 8 (robust and clean accuracy against the training eps, one line per
method, spread over seeds), on this machine or on a Ray cluster.

One run directory per (method, eps, seed) under SWEEP_DIR, plus ``sweep.json`` (grid,
protocol, codiag version). Rerunning the same sweep skips finished runs, resumes the
interrupted ones from their checkpoints and never runs one twice at the same time;
another grid adds its new cells; another protocol is refused.
"""
from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..errors import UsageError
from ..rundir import read_meta
from ..trainer import TrainConfig, config_differences
from .grid import Cell, cell_config, make_cells, protocol_of, split_method_args
from .index import cell_status, iter_cells, open_index
from .progress import ProgressPrinter, results_table

EXECUTORS = ("local", "ray")


@dataclass
class SweepResult:
    """What a sweep call saw: the directory, its cells and how each one ended."""

    path: Path
    cells: list[Cell]
    done: int
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.cells)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.results if r.get("status") == "failed"]

    @property
    def run_dirs(self) -> list[Path]:
        return [self.path / c.name for c in self.cells]


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def sweep(methods: str | Sequence[str], eps: str | Sequence[Any], seeds: str | Sequence[Any] = (0,), *,
          out: str | Path, executor: str = "local", jobs: int | None = None, runs_per_gpu: int = 1,
          threads_per_run: int = 1, ray_address: str | None = None,
          method_args: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
          device: str = "auto", data_root: str | None = None, download: bool = False,
          preset: str | None = None,
          echo: bool = True, progress_s: float = 10.0, **train_options: Any) -> SweepResult:
    """Train every (method, eps, seed) cell into ``out`` and return how they ended.

    ``methods``, ``eps`` and ``seeds`` are lists or comma strings (``"fgsm,n_fgsm"``,
    ``"2/255,4/255"``, ``"0,1,2"``); ``train_options`` are ``codiag.train`` options shared by
    every cell (the protocol: epochs, lr, eval_n, ...). A method's validated setting for the
    dataset and eps (``codiag.methods.settings``) applies per cell; ``method_args`` override it
    (``{"lam": 1.0}`` for every method that has ``lam``, ``{"gradalign.lam": 1.0}`` for one).
    ``executor`` is ``"local"`` (``jobs`` worker processes; default: one per GPU times
    ``runs_per_gpu``, else cores / ``threads_per_run``) or ``"ray"`` (each cell a Ray task;
    ``ray_address`` joins an existing cluster, else a local instance runs for the sweep).
    With ``echo``, every ``progress_s`` seconds each training run whose epoch or alarm changed
    prints its epoch, its CO alarm and the time it has left, and the sweep ends with a table of
    robust accuracy per method and eps (mean +/- std over seeds) and the CO rate.
    """
    if executor not in EXECUTORS:
        raise UsageError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    for name, value in (("jobs", jobs), ("runs per gpu", runs_per_gpu), ("threads per run", threads_per_run)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UsageError(f"{name} must be a positive integer, got {value}")
    if ray_address and executor != "ray":
        raise UsageError("ray_address= needs executor='ray'")
    root = Path(out)
    cells = make_cells(methods, eps, seeds)
    overrides = split_method_args(method_args, sorted({c.method for c in cells}))
    protocol = protocol_of(train_options, overrides)
    local = {"data_root": str(Path(data_root).resolve()) if data_root else None, "download": bool(download)}

    def train_config(c: Cell) -> TrainConfig:
        return TrainConfig.from_dict(cell_config(c, protocol, str(root / c.name), device="cpu", local=local))

    # every cell's config is checked before anything runs (one line on bad input)
    configs = {c.name: train_config(c) for c in cells}
    index = open_index(root, protocol, cells, extra={"preset": preset})
    every = list(iter_cells(index))
    result = SweepResult(root, every, done=0)
    status = {c.name: cell_status(root, c) for c in every}
    _check_finished_runs(root, {c.name: configs.get(c.name) or train_config(c)   # a cell of an earlier grid
                                for c in every if status[c.name] == "finished"})
    # Seed by seed: a sweep stopped half-way already draws every method at every eps.
    seeds_order = list(dict.fromkeys(c.seed for c in every))
    todo = sorted((c for c in every if status[c.name] != "finished"), key=lambda c: seeds_order.index(c.seed))
    result.done = len(every) - len(todo)
    resuming = sum(status[c.name] != "new" for c in todo)

    def say(text: str) -> None:
        if echo:
            print(text, flush=True)

    grid = f"{len({c.method for c in every})} methods x {len({c.eps for c in every})} eps x " \
           f"{len({c.seed for c in every})} seeds"
    say(f"sweep {root}: {len(every)} runs ({grid}); {result.done} of {len(every)} done, "
        f"{len(todo)} to run ({resuming} to resume)")
    if not todo:
        return result
    start = time.perf_counter()

    def on_result(r: dict[str, Any]) -> None:
        result.results.append(r)
        if r.get("status") in ("trained", "resumed", "restarted", "skipped"):
            result.done += 1
        took = f" in {r['seconds']:.0f} s" if "seconds" in r else ""
        extra = f": {r['error']}" if r.get("error") else f" (held by {r['holder']})" if r.get("holder") else ""
        say(f"{result.done} of {len(every)} done; {r['name']} {r.get('status')}{took}{extra}")

    cell_dicts = [c.to_dict() for c in todo]
    explicit_device = None if device == "auto" else device
    watcher = ProgressPrinter(root, todo, int(protocol["epochs"]), say, progress_s) if echo else nullcontext()
    with watcher:
        _execute(executor, root, todo, cell_dicts, protocol, jobs=jobs, runs_per_gpu=runs_per_gpu,
                 threads_per_run=threads_per_run, ray_address=ray_address, device=device,
                 explicit_device=explicit_device, local=local, say=say, on_result=on_result)
    result.done = sum(cell_status(root, c) == "finished" for c in every)
    say(f"{result.done} of {len(every)} done in {time.perf_counter() - start:.0f} s"
        + (f"; {len(result.failed)} failed (rerun the same command to resume them)" if result.failed else ""))
    if result.failed and echo:
        for r in result.failed:
            print(f"failed: {r['name']}: {r.get('error', '')}", file=sys.stderr)
    if echo:
        table = results_table(result.run_dirs)
        if table:
            say(table)
    return result


def _check_finished_runs(root: Path, finished: Mapping[str, TrainConfig]) -> None:
    """UsageError (one line) unless each finished run (name -> the config its cell gets now) was
    trained with that config. A validated setting (``codiag.methods.settings``) that changed since
    it was trained would otherwise leave runs of the old setting in a table that names the new one."""
    stale = []
    for name, cfg in finished.items():
        recorded = read_meta(root / name).get("config")
        differences = config_differences(recorded if isinstance(recorded, dict) else {}, cfg)
        if differences:
            stale.append((name, *differences[0]))
    if stale:
        name, key, old, new = stale[0]
        more = f" (and {len(stale) - 1} more)" if len(stale) > 1 else ""
        raise UsageError(f"{root}: the finished run {name}{more} was trained with {key}={repr(old)[:80]}, but "
                         f"this codiag gives its cell {new!r} (a validated setting changed since): use another "
                         "sweep directory, or delete those runs' folders to train them again")


def _execute(executor: str, root: Path, todo: Sequence[Cell], cell_dicts: list[dict[str, Any]],
             protocol: Mapping[str, Any], *, jobs: int | None, runs_per_gpu: int, threads_per_run: int,
             ray_address: str | None, device: str, explicit_device: str | None, local: Mapping[str, Any],
             say: Callable[[str], None], on_result: Callable[[dict[str, Any]], None]) -> None:
    """Run the cells still to do on the chosen executor."""
    if executor == "local":
        from .local import default_jobs, run_inline, run_local
        n_gpus = 0 if device == "cpu" else _gpu_count()
        n_jobs = min(jobs or default_jobs(n_gpus, runs_per_gpu, threads_per_run), len(todo))
        say(f"local executor: {n_jobs} job(s){' in this process' if n_jobs == 1 else ' (worker processes)'}, "
            + (f"{n_gpus} GPU(s), {runs_per_gpu} run(s) per GPU" if n_gpus else
               f"CPU, {threads_per_run} thread(s) per run"))
        if n_jobs == 1:
            run_inline(str(root), cell_dicts, protocol, threads_per_run=threads_per_run, n_gpus=n_gpus,
                       local=local, device=explicit_device, on_result=on_result)
        else:
            run_local(str(root), cell_dicts, protocol, jobs=n_jobs, threads_per_run=threads_per_run,
                      n_gpus=n_gpus, runs_per_gpu=runs_per_gpu, local=local, device=explicit_device,
                      on_result=on_result)
    else:
        from .ray_exec import run_ray
        offered = run_ray(str(root), cell_dicts, protocol, address=ray_address, jobs=jobs,
                          threads_per_run=threads_per_run, runs_per_gpu=runs_per_gpu,
                          local=local, device=explicit_device, on_result=on_result)
        say(f"ray executor: the cluster offered {offered.get('CPU', 0):g} CPU(s), {offered.get('GPU', 0):g} GPU(s)")
