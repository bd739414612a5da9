"""``codiag demo``: catastrophic overfitting on the embedded default, in a few CPU minutes.

cnn4 (GradAlign's 4-filter CNN) on Fashion-MNIST, eps 0.2, FGSM with step eps,
Adam 3e-3 with a cyclic schedule, batch 128, 30k training images, 20 epochs
(docs/CONVENTIONS.md and the README). The demo prints the per-epoch curves that show the collapse, the
epoch the detector names, and writes the HTML report.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import TrainConfig
from .train import add_training_options, config_from_args

#: ``--quick`` (CI): the demo's own setting, so it collapses exactly when the full demo does
#: (epoch 10 at seed 0; 6 and 4 at seeds 1 and 2), ended one epoch after the online alarm and
#: evaluated on 200 test points with one restart. A shortened schedule (fewer images, a higher
#: lr) put the collapse on a knife-edge: it came or not with the thread count.
QUICK = dict(stop_after_co=1, eval_n=200, eval_restarts=1)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="show catastrophic overfitting on Fashion-MNIST (CPU, minutes)",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    add_training_options(p, TrainConfig(out="runs/demo"))
    p.add_argument("--quick", action="store_true",
                   help="end one epoch after the CO alarm; evaluate on 200 points (for CI)")
    p.add_argument("--no-report", action="store_true", help="skip writing the HTML report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..reports import report  # torch and matplotlib: loaded when the command runs, not for --help
    from ..trainer import train

    cfg = config_from_args(args)
    if args.quick:  # options given on the command line win over the quick setting
        base = TrainConfig(out=cfg.out)
        for key, value in QUICK.items():
            if getattr(cfg, key) == getattr(base, key):
                setattr(cfg, key, value)
    out = train(cfg, resume=args.resume, overwrite=args.overwrite)
    print(summarize(out))
    if not args.no_report:
        page = report([out], Path(out) / "report", echo=True)
        print(f"report: {page}")
    return 0


def summarize(run_dir: str | Path) -> str:
    """Per-epoch clean/FGSM/PGD accuracy and gradient alignment, and where CO happened."""
    from ..detector import detect_co
    from ..probes.grad_align import GradAlign
    from ..probes.robust_acc import RobustAcc
    from ..runs import load_run

    run = load_run(run_dir)
    m = run.metrics
    cols = [RobustAcc.clean_acc.pair, RobustAcc.fgsm_acc.pair, RobustAcc.pgd_acc.pair, GradAlign.mean.pair]
    table = m[m["probe"].isin({probe for probe, _ in cols})]
    wide = table.pivot_table(index="epoch", columns=["probe", "key"], values="value", aggfunc="last")
    lines = [f"{'epoch':>5} {'clean':>7} {'FGSM':>7} {'PGD':>7} {'grad_align':>10}"]
    for epoch, row in wide.iterrows():
        vals = [row.get(c, float("nan")) for c in cols]
        lines.append(f"{epoch:>5} {vals[0]:>7.3f} {vals[1]:>7.3f} {vals[2]:>7.3f} {vals[3]:>10.3f}")
    co = detect_co(m)
    if co is None:
        lines.append("No catastrophic overfitting detected: PGD accuracy did not collapse.")
    else:
        lines.append(f"Catastrophic overfitting at epoch {co['epoch']}: PGD accuracy collapsed "
                     f"({co.get('reason', '')}).")
    stopped = run.events_of("stopped_after_co")
    if stopped:
        end, alarm = stopped[0]["epoch"], stopped[0]["alarm_epoch"]
        lines.append(f"Training ended at epoch {end}, {end - alarm} epoch(s) after the online alarm (stop_after_co).")
    final = run.meta.get("final") or {}
    if final:
        lines.append(f"Final (PGD-{run.config.get('eval_steps')}-{run.config.get('eval_restarts')}, "
                     f"{final.get('n')} test points): clean {final.get('clean_acc', float('nan')):.3f}, "
                     f"PGD {final.get('pgd_acc', float('nan')):.3f}")
    return "\n".join(lines)
