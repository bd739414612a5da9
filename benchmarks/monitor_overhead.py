"""What does codiag.monitor cost? Monitored and unmonitored training, interleaved in one process.

Two ratios per setting (printed; never bare absolute times):

(a) between probe events: (monitored wall time of the training loop - time
    inside probe events) / unmonitored wall time of the same loop. This is the
    price of the per-step work (the optimizer step hook; optional per-step
    update norms). Target <= 1.01. Measured twice: from the whole-run rounds
    below, and step by step: two identical models trained on the same batches,
    one monitored, their steps alternating (order flipped every step), which
    cancels the drifts of a shared machine that a 1 % target cannot survive.
(b) the whole run at epoch cadence with the default probes: monitored wall time
    (opening the run, copying the probe sets, the step-0 event, every epoch's
    event, closing) / unmonitored wall time. Targets: <= 1.10 for PreAct
    ResNet-18 on CIFAR-10 and <= 1.25 for the small demo (cnn4, Fashion-MNIST).

(c) one confirming measurement (``robust_acc`` on ``confirm_n`` points, run only
    after an event that came near a line of the alarm) / one full probe event,
    alternating on one model: what each confirmation adds to a run.

Settings:

* ``demo``: the embedded CO demo at full scale (30k Fashion-MNIST images,
  batch 128, 235 steps per epoch; probe sets 256 / 512), FGSM, Adam.
* ``resnet``: PreAct ResNet-18 on CIFAR-10 (``--data-root``; random images of
  CIFAR's shape when absent: the timing does not depend on pixel values),
  FGSM, SGD. A full epoch is 391 steps with probe sets 256 / 512; on a CPU
  the steps per event, both probe-set sizes, the confirming measurements'
  points (``confirm_n``, 1024) and the light events' slice (``light_n``, 128)
  are divided by one factor ``--scale`` (default 16 on CPU, 1 on a GPU), so
  the ratio keeps the full-scale proportions of training
  to probing work (the light events themselves stay at steps 8, 16, 32, ...:
  two in a 1/16 epoch, six in a full one).

Each round trains a fresh model (same seed) unmonitored, then monitored, for
``--epochs`` epochs; ratios are computed from the sums over ``--rounds``
rounds (interleaving cancels slow drifts of a shared machine) and the spread
of per-round ratios is printed too.

    python benchmarks/monitor_overhead.py                      # both settings
    python benchmarks/monitor_overhead.py --setting demo --probe-n 1024   # a larger probe set
    python benchmarks/monitor_overhead.py --setting demo --rounds 3
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from codiag.data import InMemoryDataset, dataset_spec, load_dataset, make_loader
from codiag.methods import get_method
from codiag.models import build_model
from codiag.monitoring import monitor
from codiag.monitoring.options import MonitorOptions


@dataclass
class Setting:
    name: str
    dataset: str
    model: str
    eps: float
    optimizer: str
    lr: float
    train_n: int
    probe_n: int
    train_probe_n: int
    light_n: int
    target_b: float
    confirm_n: int = MonitorOptions.confirm_n


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_data(s: Setting, data_root: str | None, device: torch.device):
    try:
        train = load_dataset(s.dataset, root=data_root, train=True, limit=s.train_n)
        test = load_dataset(s.dataset, root=data_root, train=False, limit=max(s.probe_n, s.confirm_n, 1))
        source = "real"
    except Exception as e:  # CIFAR-10 not available here: random images of its shape
        spec = dataset_spec(s.dataset)
        g = torch.Generator().manual_seed(0)
        shape = (spec.channels, spec.size, spec.size)
        train = InMemoryDataset(torch.randint(0, 256, (s.train_n, *shape), dtype=torch.uint8, generator=g),
                                torch.randint(0, spec.num_classes, (s.train_n,), generator=g), spec)
        n_test = max(s.probe_n, s.confirm_n, 1)
        test = InMemoryDataset(torch.randint(0, 256, (n_test, *shape), dtype=torch.uint8, generator=g),
                               torch.randint(0, spec.num_classes, (n_test,), generator=g), spec, train=False)
        source = f"random images ({str(e).splitlines()[0][:60]})"
    return train, test, source


def fresh_model(s: Setting, train, device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The setting's model, initialised from seed 0, and its optimizer."""
    torch.manual_seed(0)
    model = build_model(s.model, train.spec).to(device)
    opt = (torch.optim.Adam(model.parameters(), lr=s.lr) if s.optimizer == "adam" else
           torch.optim.SGD(model.parameters(), lr=s.lr, momentum=0.9))
    return model, opt


def run_once(s: Setting, train, test, epochs: int, device: torch.device, monitored: bool,
             run_dir: Path | None) -> tuple[float, float, float, int]:
    """(whole-run wall time, loop wall time, time inside probe events, confirmations) of one training run."""
    model, opt = fresh_model(s, train, device)
    method = get_method("fgsm", s.eps, seed=0)
    loader = make_loader(train, 128, shuffle=True, with_index=True, seed=0, device=device)

    def loop(mon=None) -> None:
        for _ in range(epochs):
            model.train()
            for x, y, meta in loader:
                method.train_step(model, opt, x, y, meta)
            if mon is not None:
                mon.epoch_end()

    sync(device)
    t0 = time.perf_counter()
    if not monitored:
        loop()
        sync(device)
        t = time.perf_counter() - t0
        return t, t, 0.0, 0
    with monitor(model, opt, run_dir, eps=s.eps, probe_data=test, train_data=train, attack=method.perturb,
                 method=method, every="epoch", probes="default", probe_n=s.probe_n,
                 train_probe_n=s.train_probe_n, light_n=s.light_n, confirm_n=s.confirm_n,
                 overwrite=True) as mon:
        sync(device)
        t1 = time.perf_counter()
        probe_before = mon.probe_time_s        # the step-0 event ran inside __enter__
        loop(mon)
        sync(device)
        loop_time = time.perf_counter() - t1
        probe_in_loop = mon.probe_time_s - probe_before
    sync(device)
    return time.perf_counter() - t0, loop_time, probe_in_loop, mon.n_confirmations


def interleaved_steps(s: Setting, train, test, epochs: int, device: torch.device, run_dir: Path,
                      step_update_norms: bool = False) -> tuple[float, float]:
    """(sum of monitored step times, sum of unmonitored step times), steps alternating one by one.

    No probe event falls inside the timed steps (every="epoch", epoch_end is not
    called, and the first epoch's light events are off), so the difference is
    exactly the per-step cost of monitoring.
    """
    (m0, o0), (m1, o1) = fresh_model(s, train, device), fresh_model(s, train, device)
    models, opts = [m0, m1], [o0, o1]
    method = get_method("fgsm", s.eps, seed=0)
    loader = make_loader(train, 128, shuffle=True, with_index=True, seed=0, device=device)
    times = [0.0, 0.0]
    warnings.simplefilter("ignore", UserWarning)  # epoch_end is deliberately never called here
    with monitor(models[1], opts[1], run_dir, eps=s.eps, probe_data=test, train_data=train,
                 attack=method.perturb, method=method, every="epoch", probes="default",
                 probe_n=s.probe_n, train_probe_n=s.train_probe_n, overwrite=True,
                 step_update_norms=step_update_norms, early_events=False):
        i = 0
        for _ in range(epochs):
            for x, y, meta in loader:
                for j in ((0, 1) if i % 2 == 0 else (1, 0)):
                    sync(device)
                    t0 = time.perf_counter()
                    method.train_step(models[j], opts[j], x, y, meta)
                    sync(device)
                    times[j] += time.perf_counter() - t0
                i += 1
    return times[1], times[0]


def confirmation_cost(s: Setting, train, test, device: torch.device, run_dir: Path, reps: int = 3) -> float:
    """Time of one confirming measurement (``robust_acc`` on ``confirm_n`` points) / one full probe event
    (every default probe on the probe sets), alternating on the same model in one process."""
    model, opt = fresh_model(s, train, device)    # probe events and confirmations never step it
    method = get_method("fgsm", s.eps, seed=0)
    times = [0.0, 0.0]
    with monitor(model, opt, run_dir, eps=s.eps, probe_data=test, train_data=train, attack=method.perturb,
                 method=method, probes="default", probe_n=s.probe_n, train_probe_n=s.train_probe_n,
                 confirm_n=s.confirm_n, overwrite=True, detector=False) as mon:
        mon._confirm()   # reads the points once, as the first confirmation of a run does; not timed
        for i in range(2 * reps):
            for j in ((0, 1) if i % 2 == 0 else (1, 0)):
                sync(device)
                t0 = time.perf_counter()
                mon._confirm() if j else mon.probe_event()
                sync(device)
                times[j] += time.perf_counter() - t0
    return times[1] / times[0]


def bench(s: Setting, args: argparse.Namespace, device: torch.device) -> None:
    train, test, source = make_data(s, args.data_root, device)
    tmp = Path(tempfile.mkdtemp(prefix="codiag-overhead-"))
    # warm-up (allocator, lazy init), not timed
    run_once(s, train, test, 1, device, False, None)
    run_once(s, train, test, 1, device, True, tmp / "warmup")
    ra, rb = [], []
    sums = [0.0, 0.0, 0.0, 0.0]  # unmonitored, monitored whole, monitored loop, probe time in loop
    confirmations = []
    for r in range(args.rounds):
        u, _, _, _ = run_once(s, train, test, args.epochs, device, False, None)
        m, loop_t, probe_t, n_confirm = run_once(s, train, test, args.epochs, device, True, tmp / f"r{r}")
        confirmations.append(n_confirm)
        ra.append((loop_t - probe_t) / u)
        rb.append(m / u)
        for i, v in enumerate((u, m, loop_t, probe_t)):
            sums[i] += v
    mon_steps, plain_steps = interleaved_steps(s, train, test, args.epochs, device, tmp / "steps")
    mon_steps_n, plain_steps_n = interleaved_steps(s, train, test, 1, device, tmp / "steps_n", True)
    confirm_ratio = confirmation_cost(s, train, test, device, tmp / "confirm")
    shutil.rmtree(tmp, ignore_errors=True)
    a, b = (sums[2] - sums[3]) / sums[0], sums[1] / sums[0]
    a_step = mon_steps / plain_steps
    # whole run composed from the step-interleaved (a) and the directly timed events/open/close
    b_composed = a_step + (sums[1] - sums[2] + sums[3]) / sums[0]
    steps = len(make_loader(train, 128, shuffle=False))
    print(f"\n[{s.name}] {s.model} on {s.dataset} ({source}); {steps} steps per event, probe sets "
          f"{s.probe_n}/{s.train_probe_n} (light events {s.light_n}, confirmations {s.confirm_n}), "
          f"{args.epochs} epochs x {args.rounds} rounds, "
          f"device {device}, {torch.get_num_threads()} threads")
    print(f"  (a) between events  step-interleaved monitored / unmonitored  = {a_step:.3f}   target <= 1.01")
    print(f"      with per-step update norms (step_update_norms=True)       = "
          f"{mon_steps_n / plain_steps_n:.3f}")
    print(f"      from whole runs: (monitored - probe events) / unmonitored = {a:.3f}   "
          f"per round {', '.join(f'{x:.3f}' for x in ra)}")
    print(f"  (b) whole run       monitored / unmonitored                 = {b:.3f}   "
          f"per round {', '.join(f'{x:.3f}' for x in rb)}   target <= {s.target_b:.2f}")
    print(f"      composed: step-interleaved (a) + (events, open, close) / unmonitored = {b_composed:.3f}")
    print(f"      probe events take {sums[3] / max(sums[2], 1e-9):.1%} of the monitored loop; "
          f"spread of (a) over rounds {statistics.pstdev(ra):.3f}; confirming measurements per "
          f"monitored run {', '.join(map(str, confirmations))}")
    print(f"  (c) one confirming measurement ({s.confirm_n} points) / one full probe event = {confirm_ratio:.2f}   "
          "(paid only after events near a line of the alarm)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setting", choices=["demo", "resnet", "all"], default="all")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--scale", type=int, default=None,
                   help="divide steps per event and probe-set sizes by this (default 16 on CPU, 1 on GPU)")
    p.add_argument("--probe-n", type=int, default=MonitorOptions.probe_n,
                   help="probe set size before --scale (default %(default)s, the monitor's)")
    p.add_argument("--data-root", default=None, help="torchvision-layout root holding CIFAR-10")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    k = args.scale or (1 if device.type == "cuda" else 16)
    o = MonitorOptions
    settings = {
        "demo": Setting("demo", "fashion_mnist", "cnn4", 0.2, "adam", 3e-3, 30000, args.probe_n, o.train_probe_n,
                        o.light_n, 1.25),
        "resnet": Setting(f"resnet (scale 1/{k})", "cifar10", "preact_resnet18", 8 / 255, "sgd", 0.05,
                          128 * (391 // k), args.probe_n // k, o.train_probe_n // k, max(1, o.light_n // k), 1.10,
                          o.confirm_n // k),
    }
    for name in (["demo", "resnet"] if args.setting == "all" else [args.setting]):
        bench(settings[name], args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
