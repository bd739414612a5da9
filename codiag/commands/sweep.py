"""``codiag sweep``: every method at every eps over seeds (``codiag.sweep``), locally or on Ray."""
from __future__ import annotations

import argparse
import dataclasses

from ..config import TrainConfig
from ..errors import UsageError
from ..parsing import int_at_least
from .train import add_training_options, config_from_args

_positive = int_at_least(1)


def add_sweep_options(p: argparse.ArgumentParser) -> None:
    """Where and how the runs of a sweep execute (shared with ``codiag reproduce``)."""
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: a pool of worker processes (default); ray: each run a Ray task "
                   "(pip install 'codiag[ray]')")
    p.add_argument("--jobs", "-j", type=_positive, default=None,
                   help="runs at a time (local default: the number of GPUs times --runs-per-gpu, "
                   "else cores / --threads-per-run; ray: the CPUs of the local instance)")
    p.add_argument("--runs-per-gpu", type=_positive, default=1,
                   help="pack K small runs onto one GPU (ray: each asks for 1/K of a GPU)")
    p.add_argument("--threads-per-run", type=_positive, default=1,
                   help="CPU threads (and Ray CPUs) per run (default %(default)s)")
    p.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                   help="join a running Ray cluster (`ray start --head` there); without it a local "
                   "Ray instance is started and stopped. On a cluster --out must be a shared file system")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", conflict_handler="resolve",
                       help="train methods x eps x seeds into one sweep directory (resumable; local or Ray)",
                       description="Train one run per (method, eps, seed) into SWEEP_DIR with one shared "
                       "protocol (every option of `codiag train`), recorded in SWEEP_DIR/sweep.json. "
                       "Rerun the same command to resume: finished runs are skipped, interrupted ones "
                       "resume from their checkpoints; a new grid adds its cells, another protocol is "
                       "refused. `codiag report SWEEP_DIR` draws the sweep figures. " + _eval_cost())
    add_training_options(p, TrainConfig(out="runs/sweep"))
    p.add_argument("--methods", "--method", required=True, metavar="M[,M...]",
                   help="methods, comma-separated (see `codiag train --list-methods`)")
    p.add_argument("--eps", required=True, metavar="E[,E...]", help="training radii, e.g. 2/255,4/255,8/255")
    p.add_argument("--seeds", "--seed", default="0", metavar="S[,S...]", help="seeds (default %(default)s)")
    p.add_argument("--out", "-o", required=True, metavar="SWEEP_DIR", help="the sweep directory")
    p.add_argument("--method-arg", "-m", action="append", type=_method_arg, default=[], metavar="KEY=VALUE",
                   help="method hyper-parameter over the validated setting, repeatable: KEY=VALUE for "
                   "every method that has KEY, METHOD.KEY=VALUE for one")
    add_sweep_options(p)
    p.set_defaults(func=run)


def _eval_cost() -> str:
    """The default final evaluation's cost, in the gradient evaluations a run's training also counts."""
    d = TrainConfig()
    per_point = d.eval_steps * d.eval_restarts
    return (f"Every run ends with its final evaluation, by default PGD-{d.eval_steps} with {d.eval_restarts} "
            f"restarts on {d.eval_n} test points (--eval-n, --eval-steps, --eval-restarts): {per_point} "
            f"gradient evaluations per point, {per_point * d.eval_n:,} per run, as many as "
            f"{per_point * d.eval_n / (2 * d.train_limit):.0f} epochs of FGSM training on the default "
            f"{d.train_limit} images (2 per image: the attack and the update); --eval-n 0 skips it.")


def _method_arg(text: str):
    from .train import _method_arg as parse
    return parse(text)


def train_options(args: argparse.Namespace) -> dict:
    """The shared ``codiag train`` options of the command line, checked by TrainConfig."""
    from ..sweeps.grid import CELL_FIELDS, LOCAL_FIELDS  # torch: loaded when the command runs

    first = argparse.Namespace(**vars(args))
    first.method, first.eps, first.seed, first.method_arg = "fgsm", 0.0, 0, []
    cfg = config_from_args(first)
    opts = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in CELL_FIELDS and k not in LOCAL_FIELDS}
    opts["lr_peak_at"] = args.lr_peak      # as given: None means each method's own peak, per cell
    return opts


def run(args: argparse.Namespace) -> int:
    if getattr(args, "overwrite", False):
        raise UsageError("a sweep never overwrites its runs (rerunning resumes them); use another --out")
    from ..sweeps.runner import sweep
    result = sweep(args.methods, args.eps, args.seeds, out=args.out, executor=args.executor, jobs=args.jobs,
                   runs_per_gpu=args.runs_per_gpu, threads_per_run=args.threads_per_run,
                   ray_address=args.ray_address, method_args=args.method_arg, device=args.device,
                   data_root=args.data_root, download=args.download, **train_options(args))
    print(f"report: codiag report {result.path}")
    return 1 if result.failed or result.done < result.total else 0
