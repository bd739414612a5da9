"""The GPU check of the ``fastat-cifar10`` preset: a shortened paper-scale run beside the FastAT
Benchmark's published CIFAR-10 numbers.

    python benchmarks/fastat_gpu.py --data-root /path/with/cifar-10-batches-py [--out DIR]
    python benchmarks/fastat_gpu.py --data-root ... --smoke      # tiny sizes: checks the script on a CPU

What it runs: the preset's paper-scale protocol (``codiag.sweeps.presets.FASTAT_PAPER``: SGD 0.1
momentum 0.9 weight decay 5e-4, OneCycle, batch 128, crop+flip, label smoothing 0.4, weight
averaging tau 0.9995, 1000 held-out images and the best checkpoint by PGD-10 on them, the
benchmark's method options) on CIFAR-10 at eps 8/255 with the benchmark's post-activation
ResNet-18, shortened: 5 methods (``--methods``: FGSM, FGSM-RS, N-FGSM, LIET, PGD-10-AT), 1 seed,
``--epochs`` 10 instead of 100 (the OneCycle schedule spans the 10), bf16 autocast, final PGD-50-10
on the first ``--eval-n`` 1000 test images, no AutoAttack. The 5 runs share the GPU (``codiag.sweep``
with ``runs_per_gpu`` 5). It prints our leaderboard (raw, averaged and best model; mean over the one
seed) and, beside it, the benchmark's published numbers for the same methods (100 epochs, 3 seeds,
the full test set: expect ours lower by the shorter schedule, and FGSM/FGSM-RS to be the ones that
may collapse). The sweep and its report (with ``leaderboard.csv``/``.md``/``.tex``) stay in ``--out``.

Expected cost (estimated, not measured: no GPU was lent when it was written): the benchmark reports
~1900 s for 100 FGSM-RS epochs on its GPU (~19 s per epoch with validation), PGD-AT ~3.7x that; on
one H200 with bf16 and 5 runs sharing it, about 8-12 minutes for the default 10 epochs (PGD-10-AT
is the longest run), plus ~1 minute of start-up. ``--epochs 5`` about halves it.

``--smoke`` (any machine, about 1-2 minutes on a CPU): the 4-filter CNN on 300 CIFAR-10 images
(60 held out), 2 epochs (OneCycle needs two), 2 methods, evaluation on 32 points: it checks the script end to end, its
numbers mean nothing. Not part of the test suite.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import codiag
from codiag.reports.build import build
from codiag.runs import load_run
from codiag.sweeps.presets import FASTAT_PAPER

METHODS = ("fgsm", "fgsm_rs", "n_fgsm", "liet", "pgd")
SMOKE = dict(model="cnn4", epochs=2, train_limit=300, val_split=60, eval_n=32, eval_steps=3, eval_restarts=1,
             probe_n=32, train_probe_n=32, amp=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=os.environ.get("CODIAG_DATA_ROOT"),
                   help="folder holding cifar-10-batches-py (default $CODIAG_DATA_ROOT)")
    p.add_argument("--out", default="runs/fastat_gpu", help="sweep folder (default %(default)s)")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--eval-n", type=int, default=1000)
    p.add_argument("--device", default="auto")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script on a CPU")
    args = p.parse_args(argv)
    if not args.data_root or not (Path(args.data_root) / "cifar-10-batches-py").is_dir():
        p.error("--data-root must name a folder holding cifar-10-batches-py")

    options = {**FASTAT_PAPER.options, "epochs": args.epochs, "eval_n": args.eval_n, "autoattack": False,
               "amp": True, "probes": "robust_acc"}
    methods = args.methods
    if args.smoke:
        options.update(SMOKE)
        methods = methods[:2]
    out = Path(args.out) / ("smoke" if args.smoke else f"epochs{args.epochs}")
    args_of = {k: v for k, v in FASTAT_PAPER.method_args.items() if k.split(".")[0] in methods}
    result = codiag.sweep(methods, FASTAT_PAPER.eps, (0,), out=out, runs_per_gpu=len(methods),
                          jobs=1 if args.smoke else None, method_args=args_of, device=args.device,
                          data_root=args.data_root, preset="fastat-cifar10", **options)
    report = build([out], out / "report", figures={"leaderboard"}, analytic=False,
                   title=f"FastAT GPU check ({'smoke' if args.smoke else f'{args.epochs} epochs'})")
    figure = next((f for figs in report.figures.values() for f in figs if f.key == "leaderboard"), None)
    if figure is None:
        print("leaderboard not drawn:", report.missing, file=sys.stderr)
        return 1
    device = {load_run(out / c.name).config.get("device_resolved") for c in result.cells}
    print(f"\n== ours: {', '.join(methods)}; {options['epochs']} epochs, 1 seed, {options['model']}, "
          f"device {', '.join(sorted(map(str, device)))}")
    print(figure.table.to_string(index=False))
    if figure.paper is not None:
        print(f"\n== {figure.paper_source}")
        print(figure.paper.to_string(index=False))
    for note in figure.notes:
        print(f"note: {note}")
    print(f"\n{result.done} of {result.total} runs done; report: {report.page}")
    return 0 if result.done == result.total else 1


if __name__ == "__main__":
    sys.exit(main())
