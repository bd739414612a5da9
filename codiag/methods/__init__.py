"""Training methods against catastrophic overfitting, one module per method.

``METHODS`` maps registry names to classes; ``get_method(name, eps, **hparams)``
builds one (``seed``, ``num_samples`` = training-set size and ``epochs`` are
accepted by every method). See ``base.py`` for the interface and conventions.

=====================  ==========================================================  =================
name                   method (paper, algorithm)                                    module
=====================  ==========================================================  =================
fgsm                   FGSM, step eps from zero (GradAlign Sec. 3)                  fgsm.py
fgsm_rs                FGSM-RS, uniform start, step 1.25 eps (Wong et al.)          fgsm_rs.py
fgsm_reduced           FGSM, step 7/8 eps (GradAlign Table 1)                       reduced_fgsm.py
n_fgsm                 N-FGSM, noise 2 eps, step eps, no projection (de Jorge+22)   n_fgsm.py
zerograd               ZeroGrad, q 0.35, step 2 eps (ZeroGrad Alg. 1)               zerograd.py
zerograd_rollback      ZeroGrad q0 0.25 -> q1 0.45 on CO (ZeroGrad 5.2, B.2)        zerograd_rollback.py
multigrad              MultiGrad, N 3, step eps (ZeroGrad Alg. 2)                   multigrad.py
gradalign              FGSM + GradAlign, lambda(eps) (GradAlign Eq. 7, App. B)      gradalign.py
grad_penalty           FGSM + L2 input-gradient penalty (GradAlign D.5)             grad_penalty.py
cure                   FGSM + CURE (GradAlign D.5)                                  cure.py
apart                  APART as its code runs it; variant=paper|code (APART Alg. 1)  apart.py
apart_simple           APART-Simple (APART Sec. 3.2)                                apart_simple.py
atta                   ATTA-1, carried perturbation, step eps/2 (ATAS App. B)       atta.py
atas                   ATAS, per-sample step, 16/255 and [4, 14]/255 at every eps    atas.py
pgd                    PGD-10, random start (Madry et al.; Wong et al.'s code)      pgd.py
pgd10, pgd2            PGD-10 / PGD-2 from zero (GradAlign Sec. 5 baselines)        pgd.py
free                   Free-m, m 8 (Shafahi et al.; GradAlign Sec. 5)               free.py
grad_clip              FGSM-RS step 2 eps + grad-norm clipping 0.06 (ZeroGrad C.5)  grad_clip.py
elle                   FGSM + local-linearity error on triplets (ELLE, ICLR 24)     elle.py
elle_a                 ELLE with the adaptive weight rule (ELLE-A)                  elle_a.py
aaer                   FGSM-RS + abnormal-example regulariser (NeurIPS 23)          aaer.py
fgsm_pgi               FGSM from the previous epoch's perturbation (FGSM-EP, ECCV 22) fgsm_pgi.py
gat                    guided single step + softmax L2 term (GAT, NeurIPS 20)       gat.py
nuat                   Bernoulli start, nuclear-norm term, clean CE (NeurIPS 21)    nuat.py
fgsm_mep               FGSM-MEP: momentum prior, label smoothing (FGSM-PGI code)    fgsm_mep.py
fgsm_rs_cs             FGSM-RS + convergence stride (ConvergeSmooth, ICCV 23)       converge_smooth.py
fgsm_mep_cs            FGSM-MEP + convergence stride (ConvergeSmooth, ICCV 23)      converge_smooth.py
fgsm_uap               FGSM from a learned universal perturbation (AAAI 24)         fgsm_uap.py
fgsm_cuap              FGSM-UAP with one perturbation per class (AAAI 24)           fgsm_uap.py
fgsm_fuap              FGSM-UAP with one perturbation per feature cluster (AAAI 24) fgsm_fuap.py
liet                   label-information start, JS term (ICCV 25)                   liet.py
ssat                   FGSM-RS at the first fooling checkpoint (AAAI 21)            ssat.py
fgsm_pco               prior FGSM, confidence-weighted mix (ECCV 24)                fgsm_pco.py
sora                   random-length step, adaptive alpha, PertAlign (ICML 26)      sora.py
=====================  ==========================================================  =================

Where a paper and its code differ, the default follows the code that produced the paper's
numbers and ``variant="paper"`` (``-m variant=paper``) offers the paper's text (APART). Each
class's ``lr_peak`` is where its paper's cyclic schedule peaks (2/5 GradAlign, 1/2 Wong et
al., ZeroGrad, N-FGSM, APART): the trainer's ``--lr-peak`` default. Settings that depend on
the dataset or eps (ZeroGrad's lower step at 16/255, GradAlign's lambda) are rows of
``settings.py``.

Trainer integration (what ``codiag.train`` calls, via ``codiag.trainer.build_method``)::

    method = get_method(name, eps, seed=seed, num_samples=len(train_set), epochs=epochs, **args)
    for epoch in range(epochs):
        method.on_epoch_start(epoch)
        for x, y, meta in loader:                      # meta: SampleMeta (index, aug)
            loss = method.train_step(model, optimizer, x, y, meta)
        mon.epoch_end()
        if method.on_epoch_end(epoch, model, optimizer, mon):   # ZeroGrad roll-back only
            mon.event("rollback", **method.last_rollback)
            mon.reset_co()

and ``codiag.monitor(..., attack=method.perturb, method=method)``: the monitor's
probe calls pass their own ``generator=``, which makes them pure (no method
state or RNG touched).
"""
from __future__ import annotations

import importlib

from .base import METHODS, Method, check_method, get_method, register

# Importing a module registers its class(es).
_MODULES = ("fgsm", "fgsm_rs", "reduced_fgsm", "n_fgsm", "pgd", "free", "grad_clip",
            "zerograd", "zerograd_rollback", "multigrad", "gradalign", "grad_penalty", "cure",
            "atta", "atas", "apart", "apart_simple", "elle", "elle_a", "aaer", "fgsm_pgi", "gat",
            "sora", "nuat", "fgsm_mep", "converge_smooth", "fgsm_uap", "fgsm_fuap", "liet", "ssat", "fgsm_pco")
for _m in _MODULES:
    importlib.import_module(f"{__name__}.{_m}")

__all__ = ["METHODS", "Method", "check_method", "get_method", "register"]
