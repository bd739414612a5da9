"""L-inf attacks for probes and evaluation: input gradients, FGSM, PGD, PGD-50-10, AutoAttack.

Conventions (docs/CONVENTIONS.md, "Probe attacks", "Precision", "Side-effect freedom"):

* inputs live in [0, 1]; every perturbation is projected to the eps ball and
  ``x + delta`` clamped to [0, 1] after each step, before any loss is measured;
* attacks run in fp32 with autocast disabled, even inside the caller's autocast,
  because norms and losses are not scale-invariant;
* attacks switch the model to eval mode for their duration and restore every
  module's previous mode, so BatchNorm statistics never change;
* randomness comes only from the ``generator`` argument (default: a fresh
  ``torch.Generator`` seeded 0 on ``x``'s device), never from the global RNG;
* gradients come from ``torch.autograd.grad``, so ``param.grad`` is never written;
* the attack loops never call ``.item()`` or branch on tensor values, so they
  do not wait for the device at each step.

PGD follows the papers' evaluation code: step alpha = eps/4, uniform random
start, 50 steps and 10 restarts for the final evaluation (GradAlign, Andriushchenko
and Flammarion 2020, Sec. 2 and Appendix B, "PGD-50-10"); Wong et al.'s
(fast_adversarial) evaluation additionally stops updating points that are
already misclassified, available as ``early_stop=True``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .errors import UsageError
from .tensors import eval_mode, isolated_rng, project

__all__ = ["AUTOATTACK_VERSIONS", "attack_mode", "autoattack", "evaluate", "fgsm", "pgd", "require_autoattack"]

#: AutoAttack versions (torchattacks' names) and the members each one runs, in order.
AUTOATTACK_VERSIONS: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}


# ---------------------------------------------------------------------------------------------
# argument checks and shared helpers
# ---------------------------------------------------------------------------------------------
def _check_eps(eps: float) -> float:
    eps = float(eps)
    if not 0.0 <= eps <= 1.0:  # also rejects NaN
        raise ValueError(f"eps must be in [0, 1] (pixel units, inputs in [0, 1]); got {eps}")
    return eps


def _check_step(name: str, value: float) -> float:
    value = float(value)
    if not value > 0.0 or value == float("inf"):
        raise ValueError(f"{name} must be a positive finite number; got {value}")
    return value


def _check_count(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _check_unit_range(x: Tensor) -> None:
    # One host sync per call, outside any attack loop.
    if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise ValueError("inputs must lie in [0, 1]; put normalisation inside the model "
                         "(codiag.models' Normalize layer) so eps stays in pixel units")


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else fallback


def _per_sample(mask: Tensor, like: Tensor) -> Tensor:
    """Reshape a (B,) mask so it broadcasts over a (B, ...) tensor."""
    return mask.view(-1, *([1] * (like.dim() - 1)))


def _uniform_start(x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    """delta ~ U[-eps, eps]^d from ``generator`` only, then clamped so x + delta is in [0, 1]."""
    gen = generator if generator is not None else _default_generator(x.device)
    # Drawn on the generator's device so a CPU generator also serves a CUDA batch.
    u = torch.rand(x.shape, generator=gen, device=gen.device, dtype=torch.float32).to(x.device)
    return project(x, (2.0 * u - 1.0) * eps, eps)


def _default_generator(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(0)


@contextlib.contextmanager
def attack_mode(model: nn.Module, device_type: str) -> Iterator[None]:
    """Eval mode for every module, autocast off, autograd on; every module's mode restored after.

    Modes are restored module by module (``codiag.tensors.eval_mode``), so a
    caller who froze, e.g., BatchNorm layers inside a training model gets
    exactly that state back.
    """
    with eval_mode(model), torch.autocast(device_type=device_type, enabled=False), torch.enable_grad():
        yield


def _loss_grad(model: nn.Module, x: Tensor, y: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
    """(logits at x + delta, grad_delta of the sum-reduced CE), both detached."""
    delta = delta.detach().requires_grad_(True)
    logits = model(x + delta)
    loss = F.cross_entropy(logits.float(), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, delta)
    return logits.detach(), grad


# ---------------------------------------------------------------------------------------------
# FGSM and PGD
# ---------------------------------------------------------------------------------------------
def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, step: float | None = None,
         random_start: bool = False, generator: torch.Generator | None = None) -> Tensor:
    """One signed-gradient step: delta = P(start + step * sign(grad_x L(x + start, y))).

    Defaults give the probe FGSM, one step of eps from zero (GradAlign eq. 2);
    ``random_start=True, step=1.25 * eps`` gives FGSM-RS (Wong et al. 2020).
    P projects to the eps ball and keeps x + delta in [0, 1]. Returns the detached
    fp32 delta; eval mode, autocast off, randomness only from ``generator``.
    """
    eps = _check_eps(eps)
    step = eps if step is None else float(step)
    if not 0.0 <= step < float("inf"):
        raise ValueError(f"step must be a finite number >= 0; got {step}")
    x = x.detach().float()
    with attack_mode(model, x.device.type):
        start = _uniform_start(x, eps, generator) if random_start else torch.zeros_like(x)
        _, grad = _loss_grad(model, x, y, start)
        return project(x, start + step * grad.sign(), eps)


def pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, alpha: float | None = None,
        steps: int = 10, restarts: int = 1, random_start: bool = True, early_stop: bool = False,
        generator: torch.Generator | None = None) -> Tensor:
    """L-inf PGD (Madry et al. 2018) as in the papers' evaluation code; returns the worst-case delta.

    Each restart starts from U[-eps, eps]^d (or zero without ``random_start``) and
    takes ``steps`` steps of ``alpha`` (default eps/4, GradAlign Appendix B) along
    the gradient sign, projecting to the eps ball and clamping x + delta to [0, 1]
    after every step. Over restarts each sample keeps its strongest delta: a
    sample is broken if any restart misclassifies it; otherwise (and among the
    restarts that break it) the one with the highest loss is kept. So more
    restarts never lower the attack's success rate. ``early_stop=True`` freezes a
    sample as soon as it is misclassified (Wong et al.'s evaluation); GradAlign's
    evaluation does not stop early (default). The probe PGD is the default:
    10 steps, one random start, no early stop (docs/CONVENTIONS.md, "Probe attacks").
    """
    return _pgd(model, x, y, eps, alpha, steps, restarts, random_start, early_stop, generator)[0]


def _pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, alpha: float | None, steps: int,
         restarts: int, random_start: bool, early_stop: bool, generator: torch.Generator | None
         ) -> tuple[Tensor, Tensor, Tensor]:
    """PGD returning (delta, per-sample CE at x + delta, misclassified) of the kept restart."""
    eps = _check_eps(eps)
    alpha = eps / 4 if alpha is None else _check_step("alpha", alpha)
    steps = _check_count("steps", steps)
    restarts = _check_count("restarts", restarts)
    if generator is None:
        generator = _default_generator(x.device)
    x = x.detach().float()
    with attack_mode(model, x.device.type):
        for restart in range(restarts):
            delta = _uniform_start(x, eps, generator) if random_start else torch.zeros_like(x)
            for _ in range(steps):
                logits, grad = _loss_grad(model, x, y, delta)
                stepped = project(x, delta + alpha * grad.sign(), eps)
                if early_stop:
                    # The mask comes from the same forward pass as the gradient, as in
                    # Wong et al.'s attack_pgd; masking instead of breaking avoids a sync.
                    still_correct = logits.argmax(1) == y
                    stepped = torch.where(_per_sample(still_correct, x), stepped, delta)
                delta = stepped
            with torch.no_grad():
                logits = model(x + delta).float()
            loss = F.cross_entropy(logits, y, reduction="none")
            wrong = logits.argmax(1) != y
            if restart == 0:
                best_delta, best_loss, best_wrong = delta, loss, wrong
                continue
            better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss > best_loss))
            best_delta = torch.where(_per_sample(better, x), delta, best_delta)
            best_loss = torch.where(better, loss, best_loss)
            best_wrong = best_wrong | wrong
    return best_delta, best_loss, best_wrong


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------
def _first_points(data: Any, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The first ``n`` (x, y) of a tuple of tensors or of a loader yielding (x, y[, meta])."""
    if (isinstance(data, (tuple, list)) and len(data) == 2
            and all(isinstance(t, Tensor) for t in data)):
        x, y = data[0][:n], data[1][:n]
    elif isinstance(data, Iterable):
        xs: list[Tensor] = []
        ys: list[Tensor] = []
        have = 0
        for batch in data:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError("a loader must yield (x, y) or (x, y, meta) batches")
            xb, yb = batch[0][: n - have], batch[1][: n - have]
            xs.append(xb.to(device))
            ys.append(yb.to(device))
            have += len(xb)
            if have >= n:
                break  # stop drawing from the loader as soon as we have n points
        if not xs:
            raise ValueError("the loader yielded no data")
        x, y = torch.cat(xs), torch.cat(ys)
    else:
        raise ValueError("data must be a loader yielding (x, y[, meta]) or a tuple (x, y) of tensors")
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"need as many labels as inputs and at least one point; got {len(x)} and {len(y)}")
    return x.detach().to(device).float(), y.to(device).long()


def evaluate(model: nn.Module, data: Any, eps: float, n: int = 1000, pgd_steps: int = 50,
             restarts: int = 10, alpha: float | None = None, early_stop: bool = False,
             batch_size: int = 500, seed: int = 0, progress: bool = False) -> dict[str, float | int]:
    """Clean, FGSM and PGD accuracy and mean CE loss on the first ``n`` points of ``data``.

    The default is GradAlign's evaluation (Appendix B): PGD-50-10, i.e. 50 steps of
    eps/4 with 10 uniform random restarts, fp32, no early stop, on the first 1000
    test points. ``data`` is a loader yielding (x, y[, meta]) (pass an unshuffled
    one: the *first* n points are used) or a tuple (x, y) of tensors; with fewer
    than ``n`` points all of them are used and the returned ``n`` says how many.
    Random starts come from one ``torch.Generator(seed)`` on the model's device,
    consumed batch after batch, so results depend on ``seed`` and ``batch_size``
    only. FGSM is one step of eps from zero (:func:`fgsm`'s default, GradAlign eq. 2),
    the attack catastrophic overfitting is defined against: a final FGSM accuracy far
    above the PGD accuracy is the collapse's signature (GradAlign Fig. 1). It costs
    one more forward and backward per batch and draws no randomness, so the PGD
    numbers do not depend on it. Returns ``{"clean_acc", "clean_loss", "fgsm_acc",
    "fgsm_loss", "pgd_acc", "pgd_loss", "n"}``.
    """
    eps = _check_eps(eps)
    n = _check_count("n", n)
    batch_size = _check_count("batch_size", batch_size)
    _check_count("pgd_steps", pgd_steps)
    _check_count("restarts", restarts)
    if alpha is not None:
        _check_step("alpha", alpha)
    device = _model_device(model, torch.device("cpu"))
    x, y = _first_points(data, n, device)
    _check_unit_range(x)
    generator = torch.Generator(device=device).manual_seed(int(seed))

    sums = {key: torch.zeros((), device=device) for key in
            ("clean_acc", "clean_loss", "fgsm_acc", "fgsm_loss", "pgd_acc", "pgd_loss")}
    starts = range(0, len(x), batch_size)
    if progress:

        starts = tqdm(starts, desc=f"PGD-{pgd_steps}-{restarts}", unit="batch")
    for i in starts:
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        with attack_mode(model, device.type):
            logits, grad = _loss_grad(model, xb, yb, torch.zeros_like(xb))   # clean forward + FGSM gradient
            with torch.no_grad():
                fgsm_logits = model(xb + project(xb, eps * grad.sign(), eps)).float()
        for name, out in (("clean", logits.float()), ("fgsm", fgsm_logits)):
            sums[f"{name}_acc"] += (out.argmax(1) == yb).sum()
            sums[f"{name}_loss"] += F.cross_entropy(out, yb, reduction="sum")
        _, loss, wrong = _pgd(model, xb, yb, eps, alpha, pgd_steps, restarts, True, early_stop, generator)
        sums["pgd_acc"] += (~wrong).sum()
        sums["pgd_loss"] += loss.sum()
    total = len(x)
    return {**{key: float(value) / total for key, value in sums.items()}, "n": total}


# ---------------------------------------------------------------------------------------------
# AutoAttack (torchattacks)
# ---------------------------------------------------------------------------------------------
AUTOATTACK_MISSING = ("AutoAttack needs the optional package torchattacks: "
                      "pip install 'codiag[autoattack]'")


def require_autoattack() -> Any:
    """The torchattacks module; UsageError (one line: how to install it) when it is missing.

    torchattacks is an optional extra; its releases 3.4 and 3.5 pin an old ``requests``, so the
    extra takes one that pins nothing: installing codiag must not downgrade a user's environment.
    """
    try:
        import torchattacks
    except ImportError:
        raise UsageError(AUTOATTACK_MISSING) from None
    return torchattacks


def _member_name(attack: Any) -> str:
    torchattacks = require_autoattack()

    if isinstance(attack, torchattacks.APGDT):
        return "apgd-t"
    if isinstance(attack, torchattacks.APGD):
        return f"apgd-{attack.loss}"
    if isinstance(attack, torchattacks.FAB):
        return "fab-t" if attack.multi_targeted else "fab"
    if isinstance(attack, torchattacks.Square):
        return "square"
    return type(attack).__name__.lower()


def build_autoattack(model: nn.Module, eps: float, version: str = "standard", seed: int = 0,
                     attacks: Sequence[str] | None = None, steps: int = 100,
                     n_classes: int = 10) -> tuple[Any, list[str]]:
    """A torchattacks.AutoAttack with the original paper's iteration counts; (runner, member names).

    torchattacks 3.5 builds APGD, APGD-T and FAB with 10 iterations, where AutoAttack
    (Croce and Hein 2020) uses 100 (a known gap in torchattacks), so ``steps`` is set on
    every iterative member. ``attacks`` keeps a subset of the version's members in
    their order (e.g. ``("apgd-ce",)`` for a cheap check). Runs the package's own
    attack classes and its worst-case ensemble (``MultiAttack``); nothing is rewritten.
    """
    torchattacks = require_autoattack()

    if version not in AUTOATTACK_VERSIONS:
        raise ValueError(f"version must be one of {sorted(AUTOATTACK_VERSIONS)}; got {version!r}")
    steps = _check_count("steps", steps)
    wanted = list(AUTOATTACK_VERSIONS[version] if attacks is None else attacks)
    unknown = [a for a in wanted if a not in AUTOATTACK_VERSIONS[version]]
    if not wanted or unknown or len(set(wanted)) != len(wanted):
        raise ValueError(f"attacks must be distinct names from AutoAttack {version!r}: "
                         f"{AUTOATTACK_VERSIONS[version]}; got {tuple(wanted)}")
    full = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version=version,
                                   n_classes=n_classes, seed=seed)
    members = list(full._autoattack.attacks)
    for member in members:
        if hasattr(member, "steps"):  # Square has queries, not steps
            member.steps = steps
    chosen = [m for name in wanted for m in members if _member_name(m) == name]
    if [_member_name(m) for m in chosen] != wanted:
        raise RuntimeError("torchattacks.AutoAttack's members changed; update codiag.attacks")
    if len(chosen) == len(members):
        return full, wanted
    runner = chosen[0] if len(chosen) == 1 else torchattacks.MultiAttack(chosen)
    return runner, wanted


@contextlib.contextmanager
def _frozen_parameters(model: nn.Module) -> Iterator[None]:
    # FAB takes logit gradients with y.backward(), which would accumulate into
    # param.grad; with the parameters frozen only the input gradient is formed.
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def autoattack(model: nn.Module, x: Tensor, y: Tensor, eps: float, version: str = "standard",
               seed: int = 0, attacks: Sequence[str] | None = None, steps: int = 100,
               batch_size: int = 500) -> dict[str, float | int]:
    """Robust accuracy under AutoAttack (Croce and Hein 2020, L-inf) from the torchattacks package.

    ``version`` is torchattacks' ("standard": APGD-CE, APGD-T, FAB-T, Square
    5000 queries; "plus"; "rand": APGD-CE and APGD-DLR with EOT 20, for randomised
    models). ``steps`` (default 100, the paper's value) is the iteration count of
    APGD/APGD-T/FAB, and ``attacks`` runs a subset of the version's members, e.g.
    ``attacks=("apgd-ce",), steps=20`` as a cheap check; see :func:`build_autoattack`.
    The standard version is slow on a CPU (minutes per 100 points for a ResNet).

    Inputs must lie in [0, 1] (normalisation belongs inside the model). Runs in
    eval mode with autocast off on the model's device; torchattacks reseeds the
    global RNG with ``seed``, so the caller's RNG state is saved and restored, and
    the parameters are frozen for the duration so ``param.grad`` is untouched.
    Each adversarial input is re-projected to the eps ball and [0, 1] before it is
    scored. Returns ``{"aa_acc", "n"}``.
    """
    require_autoattack()
    eps = _check_eps(eps)
    batch_size = _check_count("batch_size", batch_size)
    if version not in AUTOATTACK_VERSIONS:
        raise ValueError(f"version must be one of {sorted(AUTOATTACK_VERSIONS)}; got {version!r}")
    device = _model_device(model, x.device)
    x = x.detach().to(device).float()
    y = y.detach().to(device).long()
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"need as many labels as inputs and at least one point; got {len(x)} and {len(y)}")
    _check_unit_range(x)

    correct = torch.zeros((), device=device)
    with isolated_rng(device), attack_mode(model, device.type), _frozen_parameters(model):
        with torch.no_grad():
            n_classes = model(x[:1]).shape[1]
        runner, _ = build_autoattack(model, eps, version, int(seed), attacks, steps, n_classes)
        runner.set_device(device)
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            adv = torch.clamp(xb + (runner(xb, yb).detach().float() - xb).clamp(-eps, eps), 0.0, 1.0)
            with torch.no_grad():
                correct += (model(adv).argmax(1) == yb).sum()
    return {"aa_acc": float(correct) / len(x), "n": len(x)}
