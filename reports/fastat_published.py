"""The FastAT Benchmark's published CIFAR-10 numbers, stored as data and always shown labelled as
the benchmark's (never as codiag's results).

Source: Pan & Yao, "FastAT Benchmark: A Comprehensive Framework for Fair Evaluation of Fast
Adversarial Training Methods", arXiv 2604.22853, 2026; the numbers are the per-method means and
standard deviations over 3 seeds of the repository's ``benchmark_data.json`` (github.com/fzjcdt/
FastAT_Benchmark, commit b99c0de, 2026-05-06), rounded to 2 decimals. Their setting: ResNet-18
(post-activation) on CIFAR-10, eps 8/255, 100 epochs, SGD 0.1 with OneCycle, label smoothing 0.4,
weight averaging tau 0.9995, the best checkpoint by PGD-10 on 1000 held-out training images; the
final model evaluated on the CIFAR-10 test set. Accuracies in percent, training time in seconds on
their GPU, peak GPU memory in GB. The benchmark has no ``rs_aaer`` entry.
"""
from __future__ import annotations

import pandas as pd

SOURCE = ("FastAT Benchmark (Pan & Yao, arXiv 2604.22853, 2026), published CIFAR-10 results: "
          "benchmark_data.json of github.com/fzjcdt/FastAT_Benchmark at b99c0de, mean over 3 seeds; "
          "ResNet-18, eps 8/255, 100 epochs, their best checkpoint with weight averaging")

COLUMNS = ["benchmark_method", "clean_acc", "clean_std", "pgd10_acc", "pgd50_acc", "pgd50_std", "aa_acc",
           "aa_std", "train_time_s", "gpu_memory_gb"]

_ROWS = [
    ('elle', 77.78, 8.82, 50.74, 47.19, 8.82, 32.46, 25.27, 2943, 2.5),
    ('fgsm_at', 69.17, 0.95, 42.99, 42.49, 0.27, 37.28, 0.3, 1996, 1.39),
    ('fgsm_cuap', 80.76, 2.1, 56.3, 55.58, 0.22, 49.55, 0.22, 2706, 1.4),
    ('fgsm_fuap', 80.64, 1.28, 56.35, 55.75, 0.38, 49.73, 0.12, 2928, 1.4),
    ('fgsm_mep_cs', 83.55, 3.14, 51.11, 49.8, 0.36, 45.35, 0.81, 2142, 3.66),
    ('fgsm_pco', 84.69, 0.32, 55.04, 54.18, 0.21, 48.52, 0.32, 2997, 2.54),
    ('fgsm_pgi', 79.72, 0.63, 56.43, 55.82, 0.21, 49.89, 0.08, 2647, 2.54),
    ('fgsm_rs', 77.66, 4.65, 49.15, 48.27, 5.33, 43.09, 5.33, 1902, 1.39),
    ('fgsm_rs_cs', 80.54, 2.06, 53.99, 53.12, 0.29, 48.64, 0.38, 1824, 1.95),
    ('fgsm_uap', 80.61, 0.48, 56.49, 55.77, 0.13, 49.44, 0.14, 2552, 1.4),
    ('free_at', 75.2, 0.43, 49.32, 48.83, 0.26, 44.34, 0.17, 1979, 1.4),
    ('gat', 85.1, 0.13, 54.91, 53.81, 0.14, 49.15, 0.15, 2876, 1.9),
    ('grad_align', 79.39, 1.97, 53.57, 52.87, 0.29, 47.99, 0.62, 5612, 2.01),
    ('liet', 80.68, 0.51, 56.69, 55.97, 0.19, 49.99, 0.15, 2605, 1.4),
    ('nu_at', 80.98, 0.91, 55.33, 54.63, 0.25, 50.1, 0.18, 2937, 1.9),
    ('n_aaer', 77.67, 0.48, 52.84, 52.37, 0.15, 47.38, 0.18, 1864, 1.39),
    ('n_fgsm', 78.59, 2.34, 53.64, 53.07, 0.28, 47.77, 0.41, 1941, 1.39),
    ('pgd_at', 85.35, 0.14, 48.35, 46.31, 0.1, 44.33, 0.08, 6954, 1.3),
    ('pgd_at_wa', 82.36, 0.32, 55.05, 54.17, 0.17, 50.49, 0.15, 7027, 1.39),
    ('ssat', 84.8, 2.24, 52.4, 51.46, 0.57, 38.33, 1.55, 2121, 1.4),
    ('zero_grad', 75.85, 3.07, 51.59, 51.06, 1.98, 45.94, 2.19, 1924, 1.39),
]

#: codiag's method -> the benchmark entry its numbers are set beside (where the roster maps one
#: codiag method to two of the benchmark's entries: aaer -> n_aaer, the one the benchmark published;
#: pgd -> pgd_at_wa, PGD-AT under the same weight-averaging protocol as every other method)
COMPARE = {"aaer": "n_aaer", "pgd": "pgd_at_wa"}


def published() -> pd.DataFrame:
    """One row per benchmark method (``COLUMNS``)."""
    return pd.DataFrame(_ROWS, columns=COLUMNS)


def benchmark_name(method: str) -> str | None:
    """The benchmark entry that codiag's ``method`` is compared with (None: the benchmark has none)."""
    from codiag.fastat import FASTAT_ROSTER

    if method in COMPARE:
        return COMPARE[method]
    names = set(published()["benchmark_method"])
    return next((e.benchmark for e in FASTAT_ROSTER if e.codiag == method and e.benchmark in names), None)
