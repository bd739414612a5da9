"""How a sweep scales with workers on this machine: the same grid of short runs with 1 and 2
workers, first with the local executor, then on a local Ray instance.

    python benchmarks/sweep_scaling.py                     # 8 runs of ~5-10 s each, 4 sweeps
    python benchmarks/sweep_scaling.py --train-limit 4000 --epochs 3

Prints ratios only (A vs B measured in this one process, one after the other):

* local speed-up = wall(1 worker) / wall(2 workers); goal >= 1.8 on 2 idle cores;
* Ray speed-up = wall(Ray, 1 CPU) / wall(Ray, 2 CPUs);
* Ray's overhead per run = (wall(Ray, 1 CPU) - wall(local, 1 worker)) / runs, as a share of a
  run here and of a 30 s run; goal <= 5% of a 30 s run. Both start one worker process that
  imports torch; the difference is starting Ray, the task round trips and Ray's own processes.

Each sweep writes into its own fresh directory; the grid is FGSM and FGSM-RS at two eps and
two seeds on the first Fashion-MNIST images (cnn4), one thread per run. On a machine shared
with other work the ratios say little: run it on idle cores.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import codiag  # noqa: E402
from codiag.sweeps.grid import make_cells, protocol_of  # noqa: E402
from codiag.sweeps.index import cell_status, open_index  # noqa: E402
from codiag.sweeps.local import run_local  # noqa: E402

GRID = ("fgsm,fgsm_rs", "0.1,0.2", "0,1")


def timed_sweep(out: Path, executor: str, jobs: int, options: dict) -> float:
    """Wall time of one sweep of GRID. The local executor always runs a pool of ``jobs`` worker
    processes here (``codiag.sweep`` runs a single job in its own process), so that 1 and 2
    workers pay the same start-up."""
    start = time.perf_counter()
    if executor == "local":
        cells = make_cells(*GRID)
        protocol = protocol_of(options, {})
        open_index(out, protocol, cells)
        failed = []
        run_local(str(out), [c.to_dict() for c in cells], protocol, jobs=jobs, threads_per_run=1, n_gpus=0,
                  runs_per_gpu=1, local=None, device="cpu",
                  on_result=lambda r: failed.append(r) if r["status"] == "failed" else None)
        done = sum(cell_status(out, c) == "finished" for c in cells)
        total = len(cells)
    else:
        result = codiag.sweep(*GRID, out=out, executor=executor, jobs=jobs, echo=False, **options)
        done, total, failed = result.done, result.total, result.failed
    wall = time.perf_counter() - start
    if done != total:
        raise SystemExit(f"{out}: only {done} of {total} runs finished: {failed}")
    return wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-limit", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--no-ray", action="store_true", help="local executor only")
    args = p.parse_args()
    options = dict(train_limit=args.train_limit, epochs=args.epochs, eval_n=200, eval_steps=10, eval_restarts=1,
                   probes="robust_acc,grad_align")
    runs = 8
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        local1 = timed_sweep(root / "local1", "local", 1, options)
        local2 = timed_sweep(root / "local2", "local", 2, options)
        print(f"local executor: speed-up with 2 workers {local1 / local2:.2f}x (goal >= 1.8 on 2 idle cores)")
        if args.no_ray:
            return
        ray1 = timed_sweep(root / "ray1", "ray", 1, options)
        ray2 = timed_sweep(root / "ray2", "ray", 2, options)
        per_run = local1 / runs
        overhead = (ray1 - local1) / runs    # both start one worker process and import torch there
        print(f"ray executor:   speed-up with 2 CPUs {ray1 / ray2:.2f}x; Ray vs local with 2 workers "
              f"{local2 / ray2:.2f}x")
        print(f"ray overhead per run: {overhead / per_run:+.1%} of a run here, {overhead / 30:+.1%} of a 30 s "
              "run (goal <= 5%)")


if __name__ == "__main__":
    main()
