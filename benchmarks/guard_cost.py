"""The CO guard's training time over plain FGSM's, with a probe event per epoch and every N steps.

    python benchmarks/guard_cost.py --data-root /path/with/fashion-mnist        # 2 rounds, ~10 min on 2 cores
    python benchmarks/guard_cost.py --reps 1 --seeds 0 1 --guard n_fgsm --every 8

The setting of ``tests/test_guard_train.py`` (Fashion-MNIST, ``cnn4``, FGSM from zero at eps
0.25, the first 4000 training images, 6 epochs, Adam with the cyclic schedule at peak lr 0.01;
plain FGSM collapses there). For each seed, plain FGSM and ``--guard POLICY`` train at each
cadence in turn, in one process (interleaved, so drifting machine load hits both alike); no
final evaluation. Printed per cadence: the guard's training time over plain FGSM's (the run's
``train_time_s``, probes included), its optimizer steps over plain's, its time without the
probe events over plain's, and the share of steps re-trained after roll-backs.

A roll-back goes back to the last healthy full probe event: with one event per epoch the
guard re-trains about an epoch, with events every N steps about N steps (``codiag train``
goes on from the batch after the restored event). What is left above the steps' ratio is
the mitigation's own step, dearer than FGSM's (``benchmarks/method_cost.py``). Not part of
the test suite.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pandas as pd
import torch

from codiag.runs import load_run
from codiag.trainer import train

SETTING = dict(dataset="fashion_mnist", model="cnn4", method="fgsm", eps=0.25, train_limit=4000, epochs=6,
               lr=0.01, probes=["robust_acc", "grad_align"], eval_n=0, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default=None, help="Fashion-MNIST's folder (default: the embedded copy)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--reps", type=int, default=2, help="rounds over the seeds (default 2)")
    ap.add_argument("--guard", default="atas", help="the guard's policy (default atas, the auto one here)")
    ap.add_argument("--every", nargs="+", default=["epoch", "16"],
                    help="cadences to compare: 'epoch' or a number of steps (32 steps an epoch)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cadences = [e if e == "epoch" else int(e) for e in args.every]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for seed in args.seeds:
                for every in cadences:
                    for guard in (None, args.guard):
                        out = Path(tmp) / f"{every}-{guard}-{seed}"
                        train(dict(SETTING, data_root=args.data_root, seed=seed, out=str(out), guard=guard,
                                   every=every), overwrite=True)
                        run = load_run(out)
                        stats = run.meta["monitor_stats"]
                        row = dict(rep=rep, seed=seed, every=str(every), run="guard" if guard else "plain",
                                   time=run.meta["train_time_s"], probes=stats["probe_time_s"],
                                   steps=stats["steps"], retrained=sum(e["alarm_step"] - e["restored_step"]
                                                                       for e in run.events_of("rollback")))
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    df = pd.DataFrame(rows)
    df["training"] = df["time"] - df["probes"]
    total = df.groupby(["every", "run"])[["time", "training", "steps", "retrained"]].sum()
    print(f"\nguard {args.guard} / plain FGSM, {len(args.seeds)} seeds x {args.reps} rounds:")
    for every in map(str, cadences):
        g, p = total.loc[(every, "guard")], total.loc[(every, "plain")]
        print(f"  events every {every:>5}: time {g.time / p.time:.2f}x  steps {g.steps / p.steps:.2f}x  "
              f"time without probes {g.training / p.training:.2f}x  re-trained {g.retrained / p.steps:.3f} "
              "of the schedule's steps")


if __name__ == "__main__":
    main()
