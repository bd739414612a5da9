"""The ``local`` executor: a pool of worker processes on this machine (no extra dependency).

With one job the cells run in the calling process, one after the other. Otherwise
workers are started once (``spawn``, so no parent state leaks into them) and run cell
after cell, so the cost of importing torch is paid once per worker, not once per run.
Each worker owns one slot: on a machine with GPUs, slot ``i`` trains on GPU
``(i // runs_per_gpu) % n_gpus`` (``runs_per_gpu`` > 1 packs small runs onto one GPU);
on a CPU every worker uses ``threads_per_run`` threads. A worker that dies (killed,
out of memory) breaks the pool: its cells go back to the queue and resume from their
checkpoints in a new pool, at most ``retries`` times each (then they count as failed,
and the next sweep command resumes them). A worker whose sweep process is gone (ended by
SIGTERM or SIGKILL, which no cleanup of the parent's can catch) ends its run as a SIGTERM
would ("interrupted", its checkpoint kept) and exits: rerunning the command resumes it.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Mapping, Sequence

from .cell import run_cell

_SLOT: dict[str, Any] = {}


def default_jobs(n_gpus: int, runs_per_gpu: int, threads_per_run: int) -> int:
    """One worker per GPU (times ``runs_per_gpu``), else cores / threads per run."""
    if n_gpus:
        return n_gpus * runs_per_gpu
    return max(1, (os.cpu_count() or 1) // max(1, threads_per_run))


def _init_worker(slots: Any, threads: int) -> None:
    import torch

    _SLOT["slot"] = slots.get()
    torch.set_num_threads(threads)
    threading.Thread(target=_end_with_parent, args=(os.getppid(),), daemon=True, name="codiag-parent").start()


def _end_with_parent(parent: int, every: float = 0.5, grace: float = 300.0) -> None:
    """End this worker once its sweep process is gone (its parent changed): an orphaned worker
    would train on, racing the sweep command that is rerun to resume its cells. SIGTERM ends the
    open run "interrupted" (its handler; without a run open it ends the process); then, the run
    closed, the worker exits (its pool is gone: it would wait for work forever)."""
    from .. import runs

    while os.getppid() == parent:
        time.sleep(every)
    os.kill(os.getpid(), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while runs.open_writers() and time.monotonic() < deadline:
        time.sleep(every)
    os._exit(128 + signal.SIGTERM)


def _device_of(slot: int, n_gpus: int, runs_per_gpu: int) -> str:
    return f"cuda:{(slot // runs_per_gpu) % n_gpus}" if n_gpus else "cpu"


def _work(sweep_dir: str, cell: Mapping[str, Any], protocol: Mapping[str, Any], n_gpus: int,
          runs_per_gpu: int, local: Mapping[str, Any] | None, device: str | None) -> dict[str, Any]:
    dev = device or _device_of(int(_SLOT.get("slot", 0)), n_gpus, runs_per_gpu)
    return {**run_cell(sweep_dir, cell, protocol, device=dev, local=local), "device": dev}


def run_inline(sweep_dir: str, cells: Sequence[Mapping[str, Any]], protocol: Mapping[str, Any], *,
               threads_per_run: int, n_gpus: int, local: Mapping[str, Any] | None, device: str | None,
               on_result: Callable[[dict[str, Any]], None]) -> None:
    """One job: the cells run one after the other in this process (no worker to start)."""
    import torch

    threads = torch.get_num_threads()
    try:
        for cell in cells:
            dev = device or _device_of(0, n_gpus, 1)
            on_result({**run_cell(sweep_dir, cell, protocol, device=dev, local=local, threads=threads_per_run),
                       "device": dev})
    finally:
        torch.set_num_threads(threads)


def run_local(sweep_dir: str, cells: Sequence[Mapping[str, Any]], protocol: Mapping[str, Any], *,
              jobs: int, threads_per_run: int, n_gpus: int, runs_per_gpu: int,
              local: Mapping[str, Any] | None, device: str | None,
              on_result: Callable[[dict[str, Any]], None], retries: int = 2) -> None:
    """Run ``cells`` on ``jobs`` worker processes; ``on_result`` gets each cell's result.
    A cell whose pool broke is retried up to ``retries`` times."""
    ctx = mp.get_context("spawn")
    pending = list(cells)
    deaths: dict[str, int] = {}
    env_threads = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update(OMP_NUM_THREADS=str(threads_per_run), MKL_NUM_THREADS=str(threads_per_run))
    try:
        while pending:
            slots = ctx.Queue()
            for i in range(jobs):
                slots.put(i)
            with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                                     initargs=(slots, threads_per_run)) as pool:
                futures: dict[Future, Mapping[str, Any]] = {}
                while pending or futures:
                    while pending and len(futures) < jobs:
                        cell = pending.pop(0)
                        futures[pool.submit(_work, sweep_dir, cell, protocol, n_gpus, runs_per_gpu,
                                            local, device)] = cell
                    done, _ = wait(futures, return_when=FIRST_COMPLETED)
                    if any(isinstance(f.exception(), BrokenProcessPool) for f in done):
                        # A worker died (killed, out of memory): the pool ends every cell in it.
                        # Each goes back to the queue, to resume from its checkpoint in a new pool,
                        # at most ``retries`` times.
                        for cell in futures.values():
                            deaths[cell["name"]] = deaths.get(cell["name"], 0) + 1
                            if deaths[cell["name"]] > retries:
                                on_result({"name": cell["name"], "status": "failed",
                                           "error": f"its worker process died {deaths[cell['name']]} times"})
                            else:
                                pending.append(cell)
                        break
                    for fut in done:
                        futures.pop(fut)
                        on_result(fut.result())
    finally:
        for k, v in env_threads.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
