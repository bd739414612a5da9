"""Detector scorecard: recall, false alarms and latency of every registered CO detector on one corpus.

The corpus is a grid of short adversarial trainings that nobody tuned the
detector's rules on: Fashion-MNIST (and MNIST when ``--data-root`` holds it),
models ``cnn4`` and ``small_cnn`` (width 8), FGSM at eps 0.05-0.35 over 3 seeds,
and FGSM-RS, N-FGSM, ZeroGrad, ATAS and PGD-10 at eps 0.3 over the same seeds.
Seeds 0-8 were development corpora (``docs/DETECTOR.md`` says what each changed):
seeds 0-2 showed that the signature rule's alignment condition missed narrow
models; seeds 3-5 dropped it; seeds 6-8, scored as held out, showed that runs
sat on the label's lines from both sides, which gave the label its two lines
below, and with that label seeds 3-8 set the signature's gap to 0.25; seeds 9-11
and 12-14 were held-out scorecards (12-14 rejected a candidate rule: alignment at
0.65 of its own peak caught no collapse and raised one false alarm), whose errors
all sat on a line of the label, which then got the bands below; on seeds 15-17,
held out for that label, the one miss had the probe set's FGSM-PGD gap at 0.18-0.19,
under ``pgd_collapse``'s 0.2, and seeds 3-17 then set that gap to 0.18. Seeds 18-20
and 21-23 were held out for that change; seeds 3-23 then set the rule
``pgd_drop_persists``; seeds 24-26 were the held-out scorecard for it, seeds 27-29 a
fresh corpus for 1024 probe points, and seeds 21-26 with their 1024-point re-runs set
the confirming measurement (``confirm_n``); seeds 30-32 and 33-35 were held out for it,
and seeds 30-32 on MNIST (the first MNIST corpus) showed a light event's noisy PGD
value setting the peak of a false alarm: seeds 3-35 and MNIST 30-32, replayed, then
took the light events out of the peak; seeds 36-38 were the scorecard on both datasets
trained after that. Seeds 40-45 were the early warning's development and held-out corpora
(``docs/DETECTOR.md``); seeds 46-47 were held out for the first form of the first-epoch
signature change (two events with no PGD gain between them), which the FastAT protocol's runs
then showed not to be enough. The scorecard is seeds 48-49 (``--seeds``) on both datasets,
trained after the signature stopped firing inside the first epoch and ``grad_align_collapse``
asked for a confirmation. Each run is
monitored at the default cadence (per epoch plus the light events of the first
epoch) with the probes the detectors read (``robust_acc``, ``grad_align``,
``local_linearity``) and ``strength_gap``, whose ``acc_method`` (the training attack's own
accuracy; no detector reads it) is recorded for the label's PGD-10 question below, and
trained with Adam 3e-3, batch 128.

**Label (independent of every detector).** Before training and after every epoch,
the model is evaluated on 1000 held-out test points that the probe set does not
contain (``codiag.attacks.evaluate``): PGD-50 (one random start, step eps/4), clean
accuracy, and FGSM from zero with step eps (the attack the collapse is defined
against). With ``pgd[e]`` / ``fgsm[e]`` those accuracies after
epoch ``e`` and ``gap[e] = fgsm[e] - pgd[e]``, the run's *labelled collapse* is the
first epoch ``e >= 1`` with

* (a) ``pgd[e] <= 0.45 * max(pgd[1..e-1])``, that maximum ``>= 0.1``, and
  ``gap[e] >= 0.2`` (robust accuracy won, then more than half of it lost while the
  model still beats FGSM: not a run where both accuracies fall), or
* (b) ``pgd`` stays ``<= 0.05`` from ``e`` to the end and ``gap[e] >= 0.3`` (the
  model resists its training attack but never held robustness against PGD: a
  collapse inside the first epoch).

This is the definition the papers use (Wong et al. 2020, GradAlign Fig. 1): PGD
accuracy collapses *while* FGSM accuracy does not. A run that never learned any
robustness at a large eps (PGD and FGSM accuracy both near zero) is not a collapse.
PGD-10 here is GradAlign's baseline (``pgd10``: 10 steps of eps/5 *from zero*) and
gets no exemption: on ``cnn4`` at eps 0.3, too small to resist PGD at that radius,
it can end with held-out PGD 0.02-0.04 beside FGSM 0.30-0.45 (Fashion-MNIST seeds
30 and 34, MNIST seed 30), which (b) labels a collapse. Such a model beats its own
attack too (Fashion-MNIST seed 30: ``strength_gap``'s ``acc_method`` 0.16-0.19 at epochs
1-4 on the probe set under the deterministic PGD-10 it trains with, 0.00-0.04 under the
probe's random-start PGD): the masked
gradients of catastrophic overfitting, which GradAlign Fig. 1 also reports for
multi-step training from zero (PGD-2 at large eps).

The lines are not sharp, so the label has two (``STRICT`` above, ``LOOSE``: PGD
``<= 0.55 *`` the peak and gap 0.1 in (a); PGD ``<= 0.10`` for two epochs from ``e``
(or to the end) and gap ``>= 0.2`` in (b)). A run that only the loose lines call a
collapse is *between the lines*: listed with its alarm, not scored. Why: on the
development corpora PGD-10 training of ``cnn4`` at eps 0.3, which cannot overfit
to FGSM, ends with PGD 0.01-0.06 and FGSM 0.2-0.3 above it (the 4-filter model
barely resists FGSM at that radius), and ``small_cnn`` FGSM runs end with PGD
0.05-0.07 beside FGSM 0.57-0.59; a gap under 0.3 with PGD near zero, or PGD just
above 0.05, does not say whether the run collapsed. The band around half the peak
in (a) is the sampling error of two 1000-point accuracies near 0.2 (a standard
error of about 0.06 on their ratio): seeds 9-14 had two errors on a ratio of
0.48-0.49. Loose (b) allows a run that recovers: two epochs at the collapse's
accuracies, then PGD back above 0.10 (seeds 9-14 had a false alarm on each of two
such ``small_cnn`` runs). Both band changes were made after seeds 12-14 were
scored; seeds 15-17 were trained after them. Everything else is labelled "no
collapse".

**Scores.** A detector's alarm epoch is the epoch of the probe event that fired
(events inside epoch ``k`` and at its end count as ``k``). Recall = collapsed runs
with an alarm / collapsed runs; false alarms = runs labelled "no collapse" with an
alarm; latency = alarm epoch - labelled collapse epoch (negative: before the
label). Runs between the lines count in neither. The default detector (``codiag``)
is scored from the online alarm; every other registered detector
(``codiag.detector.DETECTORS``: ``elle_a``, ``both``, ...) is replayed over the
same recorded metrics. Two reference rows apply the label's own lines (strict,
loose) to the probe set's accuracies at each epoch's end: not online detectors
(rule (b) reads later epochs), they show how often the probe set's measurement
alone, read as the label reads the held-out one, disagrees with the label.
``--probe-n`` sets the probe set's size (the monitor's default, 256, unless
told); monitoring never changes training, so a corpus re-run with another size
trains the same models and gets the same labels; ``--confirm-n`` sets the confirming
measurement's size (``0``: none, as every corpus before seeds 30-32).

    python benchmarks/detector_eval.py --out runs/detector_eval --jobs 2     # train + score
    python benchmarks/detector_eval.py --out runs/detector_eval --score-only # score what is there
    python benchmarks/detector_eval.py --out runs/dev --seeds 3 4 5 --score-only --replay  # today's rules

Runs are resumable: a run whose ``label.json`` exists is not trained again.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from codiag.monitoring.options import MonitorOptions

DEFAULT_EPOCHS = 4


@dataclass(frozen=True)
class RunSpec:
    dataset: str
    model: str
    method: str
    eps: float
    seed: int
    method_args: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.model}-{self.method}-eps{self.eps:g}-s{self.seed}"


SCORECARD_SEEDS = (48, 49)


def corpus(datasets: list[str], seeds: tuple[int, ...] = SCORECARD_SEEDS) -> list[RunSpec]:
    """The grid, first seed first (so a partial scorecard already covers every model, method and eps)."""
    specs = []
    for seed in seeds:
        for ds in datasets:
            for model in ("small_cnn", "cnn4"):
                for eps in (0.05, 0.15, 0.25, 0.35):
                    specs.append(RunSpec(ds, model, "fgsm", eps, seed))
                for method in ("fgsm_rs", "n_fgsm", "zerograd", "atas", "pgd10"):
                    specs.append(RunSpec(ds, model, method, 0.3, seed))
    return specs


#: the label's two lines (module docstring): STRICT labels a collapse; a run that only LOOSE
#: calls a collapse lies between the lines and is listed but not scored
#: (``b_epochs``: how long (b)'s PGD must stay under its line; None = to the end)
STRICT = {"a_ratio": 0.45, "a_gap": 0.2, "b_pgd": 0.05, "b_gap": 0.3, "b_epochs": None}
LOOSE = {"a_ratio": 0.55, "a_gap": 0.1, "b_pgd": 0.10, "b_gap": 0.2, "b_epochs": 2}


def collapse_epoch(pgd: list[float], fgsm: list[float], a_ratio: float, a_gap: float, b_pgd: float,
                   b_gap: float, b_epochs: int | None) -> int | None:
    """The first epoch where rule (a) or (b) holds with these lines (index 0 of the lists = init)."""
    for e in range(1, len(pgd)):
        best = max(pgd[1:e], default=0.0)
        gap = fgsm[e] - pgd[e]
        if best >= 0.1 and pgd[e] <= a_ratio * best and gap >= a_gap:
            return e
        if max(pgd[e:] if b_epochs is None else pgd[e:e + b_epochs]) <= b_pgd and gap >= b_gap:
            return e
    return None


def label_collapse(pgd: list[float], fgsm: list[float]) -> tuple[int | None, bool]:
    """(labelled collapse epoch or None, ambiguous): ambiguous runs cross only the loose lines."""
    epoch = collapse_epoch(pgd, fgsm, **STRICT)
    return epoch, epoch is None and collapse_epoch(pgd, fgsm, **LOOSE) is not None


def train_one(spec: RunSpec, out: Path, n_train: int, epochs: int, data_root: str | None,
              probe_n: int = MonitorOptions.probe_n, confirm_n: int = MonitorOptions.confirm_n) -> dict:
    import torch

    from codiag import attacks
    from codiag.data import load_dataset, make_loader
    from codiag.methods import get_method
    from codiag.models import build_model
    from codiag.monitoring import monitor

    torch.set_num_threads(1)
    run_dir = out / spec.name
    train = load_dataset(spec.dataset, root=data_root, train=True, limit=n_train)
    test = load_dataset(spec.dataset, root=data_root, train=False, limit=1000 + max(probe_n, confirm_n))
    xt, yt = test.images.float() / 255, test.labels
    held_out, probe = (xt[:1000], yt[:1000]), (xt[1000:], yt[1000:])
    torch.manual_seed(spec.seed)
    kwargs = {"width": 8, "hidden": 64} if spec.model == "small_cnn" else {}
    model = build_model(spec.model, train.spec, **kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    method = get_method(spec.method, spec.eps, seed=spec.seed, num_samples=len(train), epochs=epochs,
                        **spec.method_args)
    loader = make_loader(train, 128, shuffle=True, with_index=True, seed=spec.seed)

    def evaluate() -> dict:
        r = attacks.evaluate(model, held_out, spec.eps, n=1000, pgd_steps=50, restarts=1, seed=spec.seed)
        return {k: float(r[k]) for k in ("clean_acc", "pgd_acc", "fgsm_acc")}

    t0 = time.perf_counter()
    evals = [evaluate()]
    with monitor(model, opt, run_dir, eps=spec.eps, probe_data=probe, attack=method.perturb, method=method,
                 probes="robust_acc,grad_align,local_linearity,strength_gap", probe_n=probe_n, confirm_n=confirm_n,
                 config={**asdict(spec), "n_train": n_train},
                 overwrite=True) as mon:
        for epoch in range(epochs):
            method.on_epoch_start(epoch)
            model.train()
            for x, y, meta in loader:
                method.train_step(model, opt, x, y, meta)
            mon.epoch_end()
            method.on_epoch_end(epoch, model, opt, mon)
            evals.append(evaluate())   # after the event: the monitor never sees these numbers
            mon.log("label_eval", evals[-1])
    result = {"spec": asdict(spec), "name": spec.name, "steps_per_epoch": len(loader),
              "pgd": [e["pgd_acc"] for e in evals], "clean": [e["clean_acc"] for e in evals],
              "fgsm": [e["fgsm_acc"] for e in evals],
              "online_alarm": mon.co_alarm, "online_warning": mon.co_warning, "seconds": time.perf_counter() - t0}
    (run_dir / "label.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def alarm_epoch(alarm: dict | None) -> int | None:
    return None if alarm is None else int(alarm["epoch"])


def probe_epoch_values(metrics) -> tuple[list[float], list[float]]:
    """The probe set's PGD and FGSM accuracy at step 0 and at each epoch's last event (its epoch-end event);
    empty lists where the run recorded neither."""
    from codiag.probes.robust_acc import RobustAcc

    rows = metrics[(metrics["probe"] == RobustAcc.name) & metrics["key"].isin(["pgd_acc", "fgsm_acc"])]
    last = rows.groupby(["epoch", "key"])["value"].last().unstack("key").sort_index()
    if not {"pgd_acc", "fgsm_acc"} <= set(last.columns):
        return [], []
    return last["pgd_acc"].tolist(), last["fgsm_acc"].tolist()


#: reference rows: the label's own lines applied to the probe set's epoch-end accuracies. They use
#: hindsight ((b) reads the epochs after e), so they are not online detectors; they show how often
#: the probe set's measurement alone, read the way the label reads the held-out one, disagrees with it.
PROBE_LABELS = {"label lines on the probe set (strict)": STRICT, "label lines on the probe set (loose)": LOOSE}


def score(results: list[dict], out: Path, replay: bool = False) -> str:
    from codiag.detector import DETECTORS, SIGNALS, CODetector, detect_co
    from codiag.runs import load_run

    labels = {r["name"]: label_collapse(r["pgd"], r["fgsm"]) for r in results}
    alarms: dict[str, dict[str, int | None]] = {}    # detector -> run -> alarm epoch (scored runs only)
    unscored: dict[str, int] = {}
    for r in results:
        metrics = load_run(out / r["name"]).metrics
        recorded = {SIGNALS[pk] for pk in zip(metrics["probe"].astype(str), metrics["key"].astype(str))
                    if pk in SIGNALS}
        for name, make in DETECTORS.items():
            if not set(getattr(make, "needs", ())) <= recorded:   # its signal was never recorded
                unscored[name] = unscored.get(name, 0) + 1
                continue
            online = name == CODetector.name and not replay
            alarm = r["online_alarm"] if online else detect_co(metrics, detector=name)
            alarms.setdefault(name, {})[r["name"]] = alarm_epoch(alarm)
        pgd, fgsm = probe_epoch_values(metrics)
        for name, band in PROBE_LABELS.items():
            if pgd:   # a run without robust_acc rows shows "n/a" in these rows
                alarms.setdefault(name, {})[r["name"]] = collapse_epoch(pgd, fgsm, **band)
    lines = ["| detector | runs | collapsed (label) | between the lines (not scored) | recall | false alarms "
             "| latency (epochs) mean / max |", "|---|---|---|---|---|---|---|"]
    datasets = sorted({r["spec"]["dataset"] for r in results})
    of_dataset = {r["name"]: r["spec"]["dataset"] for r in results}
    for subset in [None] + (datasets if len(datasets) > 1 else []):
        for name, by_run in alarms.items():
            by_run = {run: al for run, al in by_run.items() if subset in (None, of_dataset[run])}
            pos = [(labels[run][0], al) for run, al in by_run.items() if labels[run][0] is not None]
            neg = [al for run, al in by_run.items() if labels[run] == (None, False)]
            between = sum(labels[run][1] for run in by_run)
            hits = [al - lab for lab, al in pos if al is not None]
            recall = f"{len(hits)}/{len(pos)}" if pos else "-"
            lat = f"{sum(hits) / len(hits):+.2f} / {max(hits):+d}" if hits else "-"
            lines.append(f"| {name}{'' if subset is None else f' ({subset})'} | {len(by_run)} | {len(pos)} | "
                         f"{between} | {recall} | {sum(al is not None for al in neg)}/{len(neg)} | {lat} |")
    for name, n in unscored.items():
        lines.append(f"| {name} | {n} run(s) not scored: its signal was not recorded in them | | | | | |")
    lines.append("")
    lines.append("| run | PGD-50 per epoch (0 = init) | FGSM per epoch | label epoch (? between the lines) | " +
                 " | ".join(f"{n} alarm epoch" for n in alarms) + " |")
    lines.append("|---|---|---|---|" + "---|" * len(alarms))
    for r in results:
        lab, between = labels[r["name"]]
        cells = ["n/a" if r["name"] not in by_run else "-" if by_run[r["name"]] is None else str(by_run[r["name"]])
                 for by_run in alarms.values()]
        lines.append(f"| {r['name']} | {' '.join(f'{p:.2f}' for p in r['pgd'])} | "
                     f"{' '.join(f'{p:.2f}' for p in r['fgsm'])} | "
                     f"{'?' if between else '-' if lab is None else lab} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _leads(found: dict[str, dict | None], labels: dict, spe: dict[str, int]) -> tuple[list[int], list[int]]:
    """Lead of each labelled collapse's first hit in ``found``: (epochs, steps) before the label's epoch
    (its end, step ``epoch * steps_per_epoch``); runs without a hit are left out."""
    pairs = [(labels[n][0] - int(h["epoch"]), labels[n][0] * spe[n] - int(h["step"]))
             for n, h in found.items() if labels[n][0] is not None and h is not None]
    return [e for e, _ in pairs], [s for _, s in pairs]


def closest(metrics, before_epoch: int) -> tuple[float | None, float | None]:
    """How near the warning's rule came at the events before ``before_epoch`` (a lead of one epoch or
    more): the largest rise of the PGD loss over its lowest value at an earlier full event (the rule
    needs ``loss_rise``) and, at that event, the fall of the FGSM loss from its value there (the rule
    needs ``fgsm_fall``). None: never measurable there."""
    from codiag.detector import SIGNALS, COWarning, event_values

    w = COWarning(loss_rise=float("inf"))   # never fires: it only keeps its reference
    best: tuple[float, float] | None = None
    for step, epoch, v in event_values(metrics, {**SIGNALS, **COWarning.signals}):
        if epoch >= before_epoch:
            break
        low = w.low
        w.check(step, v)
        p, f, n = v.get("pgd_loss"), v.get("fgsm_loss"), v.get("n")
        if low is not None and p is not None and f is not None and (n is None or n <= w.full_n):
            if best is None or p - low[1] > best[0]:
                best = (p - low[1], low[2] - f)
    return (None, None) if best is None else best


def score_warning(results: list[dict], out: Path, replay: bool = False) -> str:
    """The early warning's row beside the alarm's: how often it comes at least one epoch before the
    label's collapse epoch (the goal: on half of the collapses), its lead in epochs and steps, and
    false warnings (healthy runs warned). The warning is the one recorded online (``label.json``'s
    ``online_warning``); a run recorded before the warning existed, or every run with ``replay``, is
    replayed (``detect_warning``: today's rules)."""
    from collections import Counter

    from codiag.detector import detect_co, detect_warning
    from codiag.runs import load_run

    labels = {r["name"]: label_collapse(r["pgd"], r["fgsm"]) for r in results}
    spe = {r["name"]: int(r["steps_per_epoch"]) for r in results}
    warned: dict[str, dict | None] = {}
    alarmed: dict[str, dict | None] = {}
    replayed = 0
    for r in results:
        metrics = load_run(out / r["name"]).metrics
        if "online_warning" in r and not replay:
            warned[r["name"]] = r["online_warning"]
        else:
            replayed += 1
            warned[r["name"]] = detect_warning(metrics)
        alarmed[r["name"]] = r["online_alarm"] if "online_warning" in r else detect_co(metrics)
    n_pos = sum(lab is not None for lab, _ in labels.values())
    healthy = [n for n, lab in labels.items() if lab == (None, False)]
    lines = ["| signal | collapsed (label) | hit before the label epoch (lead >= 1) | hit at all | lead epochs "
             "(sorted) | lead steps (sorted) | false (healthy runs) | rules |", "|---|---|---|---|---|---|---|---|"]
    for name, found in (("warning", warned), ("alarm", alarmed)):
        ep, st = _leads(found, labels, spe)
        rules = Counter(str(h.get("rule")) for h in found.values() if h is not None)
        lines.append(f"| {name} | {n_pos} | {sum(e >= 1 for e in ep)}/{n_pos} | {len(ep)}/{n_pos} | "
                     f"{' '.join(f'{e:+d}' for e in sorted(ep)) or '-'} | "
                     f"{' '.join(f'{s:+d}' for s in sorted(st)) or '-'} | "
                     f"{sum(found[n] is not None for n in healthy)}/{len(healthy)} | "
                     f"{', '.join(f'{k} {v}' for k, v in sorted(rules.items())) or '-'} |")
    either = {n: min((h for h in (warned[n], alarmed[n]) if h is not None), key=lambda h: int(h["step"]),
                     default=None) for n in warned}
    ep, st = _leads(either, labels, spe)
    lines.append(f"| warning or alarm, the first | {n_pos} | {sum(e >= 1 for e in ep)}/{n_pos} | {len(ep)}/{n_pos} | "
                 f"{' '.join(f'{e:+d}' for e in sorted(ep)) or '-'} | {' '.join(f'{s:+d}' for s in sorted(st)) or '-'}"
                 f" | {sum(either[n] is not None for n in healthy)}/{len(healthy)} | |")
    if replayed:
        lines.append(f"\n{replayed} run(s): warning replayed from the metrics (today's rules).")
    lines.append("")
    lines.append("| run | label epoch | warning (epoch, step, rule) | alarm (epoch, step, rule) | closest before the "
                 "label epoch: PGD loss over its lowest (needs 0.15) / FGSM loss fall there (needs 0.05) |")
    lines.append("|---|---|---|---|---|")
    for r in results:
        lab, between = labels[r["name"]]
        cells = ["-" if h is None else f"{h['epoch']}, {h['step']}, {h.get('rule')}"
                 for h in (warned[r["name"]], alarmed[r["name"]])]
        near = "" if lab is None else " / ".join("n/a" if v is None else f"{v:.3f}"
                                                 for v in closest(load_run(out / r["name"]).metrics, lab))
        lines.append(f"| {r['name']} | {'?' if between else '-' if lab is None else lab} | {cells[0]} | {cells[1]} "
                     f"| {near} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/detector_eval")
    p.add_argument("--jobs", type=int, default=1, help="runs trained in parallel (one thread each)")
    p.add_argument("--n-train", type=int, default=2000, help="training images per run (default %(default)s)")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    p.add_argument("--probe-n", type=int, default=MonitorOptions.probe_n,
                   help="probe set size (test points after the 1000 held out; default %(default)s, the monitor's)")
    p.add_argument("--confirm-n", type=int, default=MonitorOptions.confirm_n,
                   help="points of a confirming measurement (0: none; default %(default)s, the monitor's)")
    p.add_argument("--data-root", default=None, help="torchvision-layout root; MNIST runs need it")
    p.add_argument("--score-only", action="store_true")
    p.add_argument("--replay", action="store_true",
                   help="score the default detector and the warning by replaying today's rules over the recorded "
                        "metrics instead of what was recorded online (an older corpus under the current rules)")
    p.add_argument("--limit", type=int, default=None, help="train only the first N runs of the corpus")
    p.add_argument("--seeds", type=int, nargs="+", default=list(SCORECARD_SEEDS),
                   help="seeds of the corpus (default %(default)s; 0-47: development and earlier scorecards)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    datasets = ["fashion_mnist"]
    try:
        from codiag.data import load_dataset
        load_dataset("mnist", root=args.data_root, train=False, limit=1)
        datasets.append("mnist")
    except Exception as e:
        print(f"MNIST runs skipped: {str(e).splitlines()[0]}", file=sys.stderr)
    specs = corpus(datasets, tuple(args.seeds))[: args.limit]
    todo = [s for s in specs if not (out / s.name / "label.json").exists()]
    if todo and not args.score_only:
        print(f"training {len(todo)} of {len(specs)} runs with {args.jobs} job(s)", file=sys.stderr)
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = {pool.submit(train_one, s, out, args.n_train, args.epochs, args.data_root,
                                   args.probe_n, args.confirm_n): s for s in todo}
            for f in as_completed(futures):
                s = futures[f]
                try:
                    r = f.result()
                    print(f"done {s.name} in {r['seconds']:.0f}s: PGD-50 "
                          f"{' '.join(f'{v:.2f}' for v in r['pgd'])}; online alarm epoch "
                          f"{alarm_epoch(r['online_alarm'])}", file=sys.stderr, flush=True)
                except Exception as e:  # one broken run must not lose the others
                    print(f"FAILED {s.name}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    results = [json.loads((out / s.name / "label.json").read_text()) for s in specs
               if (out / s.name / "label.json").exists()]
    unlabelled = [r["name"] for r in results if "fgsm" not in r]
    if unlabelled:   # recorded before the label needed held-out FGSM accuracy
        print(f"{len(unlabelled)} run(s) without held-out FGSM accuracy not scored: {', '.join(unlabelled)}",
              file=sys.stderr)
        results = [r for r in results if "fgsm" in r]
    if not results:
        print("no finished run to score", file=sys.stderr)
        return 1
    table = (score(results, out, replay=args.replay) + "\n\n## Early warning\n\n"
             + score_warning(results, out, replay=args.replay))
    print(table)
    (out / "scorecard.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
