"""The FastAT Benchmark's roster under codiag's names (Pan & Yao, "FastAT Benchmark: A Comprehensive
Framework for Fair Evaluation of Fast Adversarial Training Methods", arXiv 2604.22853, 2026; its
repository fzjcdt/FastAT_Benchmark, ``fast_at/`` and ``configs/cifar10/``), plus SORA (ICML 2026).

``get_method`` also accepts the benchmark's spelling of a name that codiag spells the same way
(``FGSM-RS-CS`` -> ``fgsm_rs_cs``); this table covers the others. ``hparams`` are what the benchmark's
CIFAR-10 config sets where it differs from codiag's defaults *and* was checked against codiag's
option; ``note`` says what is not carried over. The benchmark's protocol (label smoothing 0.4, weight
averaging, best checkpoint by PGD-10 on held-out images, OneCycle) is not a method option.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class RosterEntry:
    """One method of the benchmark: its name there, codiag's name (None: not in codiag yet), options."""

    benchmark: str
    codiag: str | None
    hparams: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""


FASTAT_ROSTER: tuple[RosterEntry, ...] = (
    RosterEntry("fgsm_at", "fgsm"),
    RosterEntry("fgsm_rs", "fgsm_rs"),
    RosterEntry("grad_align", "gradalign", {"lam": 0.2}, "grad_align_cos_lambda 0.2; its alpha 0.5 not mapped"),
    RosterEntry("free_at", "free", {"m": 4}),
    RosterEntry("fgsm_pgi", "fgsm_mep", {}, "the benchmark's FGSM-PGI is the momentum variant FGSM-MEP; "
                "codiag's fgsm_pgi is the epoch-prior variant FGSM-EP"),
    RosterEntry("fgsm_mep_cs", "fgsm_mep_cs"),
    RosterEntry("fgsm_rs_cs", "fgsm_rs_cs"),
    RosterEntry("fgsm_pco", "fgsm_pco"),
    RosterEntry("ssat", "ssat"),
    RosterEntry("nu_at", "nuat", {"lam": 4.0, "ramp_share": 1.0, "eval_attack": False},
                "nuc_max 4, ramped over all epochs, attack in train mode (val-iisc/NuAT: 4.5, 90%, eval)"),
    RosterEntry("n_fgsm", "n_fgsm"),
    RosterEntry("zero_grad", "zerograd", {"q": 0.35, "step": 2.0}),
    RosterEntry("gat", "gat", {"lam": 10.0}),
    RosterEntry("rs_aaer", "aaer", {"lam1": 1.0, "lam2": 2.5, "lam3": 1.5, "step": 1.25, "project": True}),
    RosterEntry("n_aaer", "aaer", {"init": 2.0, "step": 1.0, "project": False, "lam1": 1.0, "lam2": 1.5,
                                   "lam3": 0.15}),
    RosterEntry("elle", "elle", {}, "its config's lambda options not mapped"),
    RosterEntry("fgsm_uap", "fgsm_uap"),
    RosterEntry("fgsm_cuap", "fgsm_cuap"),
    RosterEntry("fgsm_fuap", "fgsm_fuap"),
    RosterEntry("liet", "liet"),
    RosterEntry("pgd_at", "pgd"),
    RosterEntry("pgd_at_wa", "pgd", {}, "with the protocol's weight averaging"),
    RosterEntry("sora", "sora", {}, "not in the benchmark: SORA, ICML 2026"),
)


def roster_markdown() -> list[str]:
    """The roster as a Markdown table (docs/METHODS.md)."""
    out = ["| FastAT Benchmark | codiag | options | note |", "|---|---|---|---|"]
    for e in FASTAT_ROSTER:
        opts = ", ".join(f"{k}={v!r}" for k, v in e.hparams.items())
        out.append(f"| `{e.benchmark}` | {f'`{e.codiag}`' if e.codiag else '-'} | {opts} | {e.note} |")
    return out
