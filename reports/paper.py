"""Numbers the papers report for the figures we redraw, with where they come from.

These are the *papers'* numbers, always shown labelled "paper (...)" beside
ours and never presented as codiag's results. Settings differ from ours
(architecture, dataset, scale), so each table says which setting it is from.
"""
from __future__ import annotations

import pandas as pd


def _table(rows: list[tuple], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns)


# GradAlign (Andriushchenko & Flammarion, 2020) -------------------------------------------------
GRADALIGN_FIG4_SOURCE = ("paper: GradAlign Sec. 4 / Fig. 4 (PreAct ResNet-18, CIFAR-10, "
                         "eps 8/255, FGSM AT)")
GRADALIGN_FIG4 = _table([
    ("CO epoch", "~23"),
    ("PGD acc before -> after CO", "40.1% -> 0.0%"),
    ("FGSM acc before -> after CO", "43.5% -> 86.7%"),
    ("grad_align before -> after CO", "0.95 -> 0.05"),
    ("grad_align at initialisation", "0.85 (0.04 after CO, Sec. 4)"),
    ("PGD/FGSM loss ratio before CO", "never above 1.05"),
], ["quantity", "paper"])

GRADALIGN_C2_SOURCE = ("paper: GradAlign App. C.2 / Fig. 11 and Sec. 4 (4-filter CNN, CIFAR-10, "
                       "eps 10/255, FGSM AT)")
GRADALIGN_C2 = _table([
    ("CO epoch", "~6"),
    ("grad_align after CO", "0.12"),
    ("fgsm_pgd_cos", "falls together with grad_align (no number given)"),
    ("grad_align with w4 zeroed (after CO)", "0.08 -> 0.71"),
], ["quantity", "paper"])

GRADALIGN_FIG2_SOURCE = "paper: GradAlign Sec. 3 (Lemma 1, Fig. 2)"
GRADALIGN_FIG2 = _table([
    ("E||delta_FGSM-RS||_2 at alpha = 1.25 eps, eps = 8/255", "~ 7/255 sqrt(d)"),
    ("range of the bound", "[sqrt(d) eps / sqrt(3), sqrt(d) eps]"),
], ["quantity", "paper"])

GRADALIGN_FIG9_SOURCE = "paper: GradAlign App. A.2 (Lemma 2, Fig. 9), p = 27, k = 100, m = 4"
GRADALIGN_FIG9 = _table([
    ("all four quantities for eps in [0, 0.1]", "within [0.7, 1.0]"),
    ("grad_align after CO at eps 10/255 (for contrast)", "0.12"),
], ["quantity", "paper"])

GRADALIGN_FIG10_SOURCE = "paper: GradAlign App. C.1 (Fig. 10)"
GRADALIGN_FIG10 = _table([
    ("linearisation error vs ||delta||_2 at fixed ||delta||_inf = eps",
     "grows with ||delta||_2; larger for FGSM than random corners (no numbers given)"),
], ["quantity", "paper"])

# ZeroGrad / MultiGrad (Golgooni et al., 2021) ----------------------------------------------------
ZEROGRAD_TABLE4_SOURCE = ("paper: ZeroGrad Table 4 (mean |delta| x 255 on the CIFAR-10 training "
                          "set, PreAct ResNet-18, eps 8/255, one-drop lr, 52 epochs)")
ZEROGRAD_TABLE4 = _table([
    ("ZeroGrad (q=0.35)", 6.52, 6.49),
    ("MultiGrad (N=3)", 7.15, 6.13),
    ("FGSM-RS (alpha=1.0)", 5.96, 5.95),
    ("FGSM-RS (alpha=1.25)", 6.81, 6.78),
    ("GradAlign", 7.89, 7.89),
    ("PGD-2", 7.21, 6.67),
    ("PGD-10", 7.52, 7.16),
], ["method", "2nd epoch", "52nd epoch"])

ZEROGRAD_TABLE10_SOURCE = ("paper: ZeroGrad Table 10 (% of coordinates whose sign differs from "
                           "PGD-10, one epoch before / after CO)")
ZEROGRAD_TABLE10 = _table([
    ("FGSM", 17.58, 48.53),
    ("MultiGrad (N=3)", 11.48, 12.82),
    ("ZeroGrad (q=0.4)", 6.49, 28.66),
], ["method", "before CO", "after CO"])

ZEROGRAD_FIG1_SOURCE = "paper: ZeroGrad Sec. 2.2 (Fig. 1; PreAct ResNet-18, CIFAR-10, eps 8/255)"
ZEROGRAD_FIG1 = _table([
    ("weight-update MSE", "jumps at the epoch where test PGD accuracy drops (no numbers given)"),
], ["quantity", "paper"])

ZEROGRAD_FIG2_SOURCE = "paper: ZeroGrad Sec. 2.2 (Fig. 2; FGSM-RS alpha 2 vs zeroing q = 0.35)"
ZEROGRAD_FIG2 = _table([
    ("FGSM-RS perturbation MSE", "jumps at CO (no numbers given)"),
    ("with 35% lowest |grad| zeroed", "no jump, no CO"),
], ["quantity", "paper"])

# APART (Chen et al.) -----------------------------------------------------------------------------
APART_FIG2_SOURCE = "paper: APART Sec. 3.1 / Fig. 2 (PreAct ResNet-18, CIFAR-10, FGSM)"
APART_FIG2 = _table([
    ("CO epoch (strength gap explodes, transfer acc rises to random-noise level)", "16"),
    ("PGD-20 acc epoch 15 -> 16 (footnote 2)", "45% -> 0%"),
], ["quantity", "paper"])

APART_FIG3_SOURCE = "paper: APART Sec. 5.6 / Fig. 3 (Pre-ResNet20, CIFAR-10)"
APART_FIG3 = _table([
    ("largest step size", "first-layer (input) perturbation"),
    ("first and second layer step sizes", "decrease after epoch 10; the others keep increasing"),
], ["quantity", "paper"])

# ATAS (Huang et al.) -----------------------------------------------------------------------------
ATAS_FIG6_SOURCE = "paper: ATAS Sec. IV / Fig. 6 (ResNet-18, CIFAR-10, eps 8/255)"
ATAS_FIG6 = _table([
    ("gradient-norm distribution", "long-tailed; ratio mean(G^2)/mean(G)^2 > 1 (Fig. 6b)"),
], ["quantity", "paper"])

ATAS_FIG10_SOURCE = "paper: ATAS Sec. V-C / Fig. 10 (WideResNet-28-10, CIFAR-10, eps 8/255)"
ATAS_FIG10 = _table([
    ("per-subset gradient norm and step size", "relatively stable over training"),
    ("order", "D1 smallest norm / largest step; D10 largest norm / smallest step"),
], ["quantity", "paper"])

ATAS_FIG11_SOURCE = "paper: ATAS Sec. V-C / Fig. 11 (ATAS, CIFAR-10, eps 8/255, last epoch)"
ATAS_FIG11 = _table([
    ("L_inf norm of nearly all perturbations", "8/255"),
    ("L2 norm", "diverse across instances"),
], ["quantity", "paper"])

ATAS_FIG2_SOURCE = "paper: ATAS Sec. III / Fig. 2 (ResNet-18, FGSM-RS alpha 14/255, eps 8/255)"
ATAS_FIG2 = _table([
    ("D10 (largest gradient norms)", "distorts first; loss peaks inside the eps-ball"),
    ("D1 (smallest gradient norms)", "much less distorted"),
], ["quantity", "paper"])

GRADALIGN_FILTERS_SOURCE = "paper: GradAlign Sec. 4, Fig. 5, 6, 12 (4-filter CNN, CIFAR-10, eps 10/255)"
GRADALIGN_FILTERS = _table([
    ("filter that causes CO", "w4 learns a Laplace-like filter (R and G channels)"),
    ("w4 and its outgoing weights", "grow strongly after CO; w1 only shrinks"),
], ["quantity", "paper"])

GRADALIGN_FEATURES_SOURCE = "paper: GradAlign Sec. 4 / Fig. 7, 13 (noise U[-10/255, 10/255])"
GRADALIGN_FEATURES = _table([
    ("feature maps of w4", "change dramatically under small uniform noise"),
    ("feature maps of w1..w3", "only slightly affected"),
], ["quantity", "paper"])

GRADALIGN_TABLE4_SOURCE = ("paper: GradAlign App. D.3, Table 4 (PreAct ResNet-18, CIFAR-10, PGD-50-10, "
                           "mean and std over 5 seeds, no early stopping)")
#: (method, eps, clean mean, clean std, PGD-50-10 mean, PGD-50-10 std), accuracies as fractions.
GRADALIGN_TABLE4 = _table([
    ("fgsm", 8 / 255, 0.8516, 0.013, 0.0002, 0.0004),
    ("fgsm_rs", 8 / 255, 0.8432, 0.0008, 0.4510, 0.0056),
    ("gradalign", 8 / 255, 0.8100, 0.0037, 0.4758, 0.0024),
    ("free", 8 / 255, 0.7792, 0.0065, 0.4590, 0.0098),
    ("pgd2", 8 / 255, 0.8215, 0.0048, 0.4843, 0.0040),
    ("pgd10", 8 / 255, 0.8188, 0.0037, 0.5004, 0.0079),
    ("fgsm", 16 / 255, 0.7376, 0.074, 0.0, 0.0),
    ("fgsm_rs", 16 / 255, 0.7218, 0.037, 0.0, 0.0),
    ("gradalign", 16 / 255, 0.5846, 0.0022, 0.2888, 0.0070),
    ("free", 16 / 255, 0.4810, 0.0983, 0.0, 0.0),
    ("pgd2", 16 / 255, 0.6865, 0.0583, 0.0992, 0.1400),
    ("pgd10", 16 / 255, 0.6028, 0.0050, 0.3324, 0.0052),
], ["method", "eps", "clean_mean", "clean_std", "pgd_mean", "pgd_std"])


def gradalign_table4(dataset: str, model: str) -> pd.DataFrame | None:
    """GradAlign's Table 4 where a sweep's setting is the paper's (CIFAR-10, PreAct ResNet-18)."""
    if dataset == "cifar10" and model == "preact_resnet18":
        return GRADALIGN_TABLE4.copy()
    return None
