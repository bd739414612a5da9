"""``codiag reproduce NAME``: train what a paper figure needs (or reuse cached runs) and draw it.

``--list`` names the presets. Each preset is a set of ``codiag.trainer.train``
configurations at two scales (``--scale embedded``: CPU minutes, Fashion-MNIST,
or CIFAR-10 with the 4-filter CNN for GradAlign's single-layer-CNN figures;
``--scale paper``: PreAct ResNet-18 on CIFAR-10, for a GPU) and the report
figures that redraw it. Finished runs are cached under ``--cache`` and reused
when their configuration matches. The page shows the paper's numbers, labelled
as the paper's, beside ours.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..sweeps.presets import QUICK as SWEEP_QUICK
from ..sweeps.presets import QUICK_VAL_SPLIT, SWEEP_PRESETS
from .sweep import add_sweep_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="train what a paper figure needs and draw it (see --list)",
                       description="Run the training a paper figure needs (cached and reused) and "
                       "write an HTML report that redraws it, with the paper's numbers beside ours.")
    p.add_argument("name", nargs="?", help="preset, e.g. gradalign-fig11 (see --list)")
    p.add_argument("--list", action="store_true", help="list the presets and exit")
    p.add_argument("--scale", choices=("embedded", "paper"), default="embedded",
                   help="embedded: CPU minutes (default); paper: PreAct ResNet-18 on CIFAR-10, for a GPU")
    p.add_argument("--data-root", default=None,
                   help="folder in torchvision's layout, needed for CIFAR-10 (e.g. holding cifar-10-batches-py)")
    p.add_argument("--cache", default="runs/reproduce", help="where runs are cached (default %(default)s)")
    p.add_argument("-o", "--out", default=None, help="report folder (default CACHE/SCALE/reports/NAME)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's number of epochs")
    p.add_argument("--quick", action="store_true",
                   help="a smoke test: 2 epochs on 512 images, tiny evaluation (cached separately)")
    p.add_argument("--force", action="store_true", help="retrain even when a cached run matches")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    add_sweep_options(p)
    p.set_defaults(func=run)


def list_presets() -> None:
    from codiag.reports.presets import PRESETS, SPECS  # torch (the methods' settings): loaded on use

    print(f"{'preset':18s} {'redraws':30s} runs (embedded / paper)  description")
    for p in PRESETS.values():
        emb, pap = len(p.runs.get("embedded", ())), len(p.runs.get("paper", ()))
        data = " [CIFAR-10: --data-root]" if p.needs_data_root("embedded") else ""
        print(f"{p.name:18s} {p.redraws:30s} {emb:>2d} / {pap:<2d}                 {p.summary}{data}")
    for p in SWEEP_PRESETS.values():
        emb, pap = p.scales["embedded"].runs, p.scales["paper"].runs
        print(f"{p.name:18s} {p.redraws:30s} {emb:>2d} / {pap:<3d} (a sweep)      {p.summary}")
    print(f"\n{len(SPECS['embedded'])} embedded and {len(SPECS['paper'])} paper-scale runs are shared "
          "between the presets and cached; a sweep preset runs with --executor local or ray (--jobs, "
          "--ray-address), resumably.")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)))
        except (TypeError, ValueError):
            return False
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def cached(run_dir: Path, config: dict[str, Any]) -> tuple[bool, str]:
    """(reusable, why not): a finished run whose recorded config matches ``config``."""
    from ..runs import load_run
    from ..trainer import TrainConfig, config_differences

    if not (run_dir / "run.json").exists():
        return False, "not trained yet"
    try:
        run = load_run(run_dir)
    except UsageError as e:
        return False, str(e)
    if run.status != "finished":
        return False, f"the cached run is {run.status!r}"
    for key, want in config.items():
        if key in ("out", "progress", "device", "data_root"):
            continue
        have = run.config.get(key)
        if not _same(have, want):
            return False, f"the cached run has {key}={have!r}, the preset {want!r}"
    # what the preset leaves to codiag (a validated setting of the method) may have changed since
    differences = config_differences(run.config, TrainConfig.from_dict(config))
    if differences:
        key, have, want = differences[0]
        return False, f"the cached run has {key}={have!r}, this codiag trains it with {want!r}"
    return True, ""


def _override_epochs(options: dict[str, Any], args: argparse.Namespace) -> None:
    """``--epochs N`` replaces the preset's epochs (N >= 1)."""
    if args.epochs is not None:
        if args.epochs < 1:
            raise UsageError(f"--epochs must be at least 1, got {args.epochs}")
        options["epochs"] = args.epochs


def run_config(spec_config: dict[str, Any], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from codiag.reports.presets import QUICK

    cfg = dict(spec_config)
    if args.quick:
        cfg.update(QUICK)
    _override_epochs(cfg, args)
    if cfg["dataset"] != "fashion_mnist":
        if not args.data_root:
            raise UsageError(f"{args.name} needs {cfg['dataset']}: pass --data-root DIR (torchvision's "
                             "layout, e.g. the folder holding cifar-10-batches-py)")
        cfg["data_root"] = str(Path(args.data_root).resolve())   # the report finds it from anywhere
    cfg.update(out=str(out), device=args.device, progress=not args.quiet)
    return cfg


def run(args: argparse.Namespace) -> int:
    if args.list:
        list_presets()
        return 0
    if not args.name:
        raise UsageError("name a preset (see codiag reproduce --list)")
    if args.data_root and not Path(args.data_root).is_dir():
        raise UsageError(f"--data-root {args.data_root} is not a directory")
    if Path(args.cache).exists() and not Path(args.cache).is_dir():
        raise UsageError(f"--cache {args.cache} is a file, not a directory")
    if args.name in SWEEP_PRESETS:
        return run_sweep_preset(args)
    from codiag.reports.presets import PRESETS, SPECS

    from ..trainer import train
    preset = PRESETS.get(args.name)
    if preset is None:
        raise UsageError(f"unknown preset {args.name!r}; choose from {', '.join([*PRESETS, *SWEEP_PRESETS])}")
    from codiag.reports.build import build  # here: it loads the plotting libraries (seconds)

    scale_dir = Path(args.cache) / (f"{args.scale}-quick" if args.quick else args.scale)
    specs = [SPECS[args.scale][name] for name in preset.runs.get(args.scale, ())]
    configs = [(s, run_config(s.config, args, scale_dir / s.name)) for s in specs]  # validate all first

    run_dirs = []
    for spec, cfg in configs:
        run_dir = scale_dir / spec.name
        ok, why = cached(run_dir, cfg)
        if ok and not args.force:
            print(f"reusing cached run {run_dir}")
        else:
            print(f"training {spec.name} ({'forced' if args.force else why}) -> {run_dir}", file=sys.stderr)
            train(cfg, overwrite=True)
        run_dirs.append(run_dir)

    out = Path(args.out) if args.out else scale_dir / "reports" / preset.name
    title = f"codiag reproduce {preset.name}: {preset.redraws} ({args.scale} scale{', quick' if args.quick else ''})"
    report = build(run_dirs, out, figures=set(preset.figures), analytic=not run_dirs, title=title, echo=True)
    drawn = [f for figs in report.figures.values() for f in figs]
    for figure in drawn:
        _print_numbers(figure)
    missing = [(a, k, r) for a, items in report.missing.items() for k, r in items]
    for anchor, key, reason in missing:
        print(f"warning: {anchor}: {key} not drawn: {reason}", file=sys.stderr)
    if preset.note:
        print(f"note: {preset.note}")
    print(f"report: {report.page}")
    return 0 if drawn else 1


def run_sweep_preset(args: argparse.Namespace) -> int:
    """A sweep preset: ``codiag.sweep`` into CACHE/SCALE/sweeps/NAME (resumable: finished runs
    are kept), then the sweep report."""
    from codiag.reports.build import build

    from ..sweeps.runner import sweep

    preset = SWEEP_PRESETS[args.name]
    spec = preset.scales[args.scale]
    options = dict(spec.options)
    if args.quick:
        options.update(SWEEP_QUICK)
        if options.get("val_split"):
            options["val_split"] = QUICK_VAL_SPLIT
        if options.get("lr_schedule") == "onecycle":
            options["epochs"] = 2          # torch's OneCycleLR stepped per epoch needs two
    _override_epochs(options, args)
    if preset.needs_data_root(args.scale) and not args.data_root:
        raise UsageError(f"{args.name} at {args.scale} scale needs {options['dataset']}: pass --data-root DIR "
                         "(torchvision's layout, e.g. the folder holding cifar-10-batches-py)")
    if args.force:
        raise UsageError("--force does not apply to a sweep preset: a sweep resumes its runs; use another --cache")
    root = Path(args.cache) / (f"{args.scale}-quick" if args.quick else args.scale) / "sweeps" / preset.name
    result = sweep(spec.methods, spec.eps, spec.seeds, out=root, executor=args.executor, jobs=args.jobs,
                   runs_per_gpu=args.runs_per_gpu, threads_per_run=args.threads_per_run,
                   ray_address=args.ray_address, method_args=spec.method_args, device=args.device,
                   data_root=args.data_root, preset=preset.name, **options)
    out = Path(args.out) if args.out else root / "report"
    title = f"codiag reproduce {preset.name}: {preset.redraws} ({args.scale} scale{', quick' if args.quick else ''})"
    report = build([root], out, figures=set(preset.figures), analytic=False, title=title, echo=True)
    drawn = [f for figs in report.figures.values() for f in figs]
    for figure in drawn:
        _print_numbers(figure)
    if preset.note:
        print(f"note: {preset.note}")
    print(f"{result.done} of {result.total} runs done; report: {report.page}")
    return 0 if drawn and result.done == result.total else 1


def _print_numbers(figure) -> None:
    """Our numbers and the paper's for one figure, as text (the lead's note needs them)."""
    if figure.table is None and figure.paper is None:
        return
    print(f"\n== {figure.title} (redraws {figure.redraws})")
    if figure.table is not None and len(figure.table):
        print("ours:")
        print(figure.table.to_string(index=False))
    if figure.paper is not None and len(figure.paper):
        print(figure.paper_source or "paper:")
        print(figure.paper.to_string(index=False))
