"""Declarative hyper-parameter checks: each method states each option's type and range once.

A method lists them next to its defaults::

    defaults = {"q": 0.35, "step": 2.0}
    checks = {"q": Real(0, 1, hi_open=True), "step": Real(0, lo_open=True)}

``Method.check_hparams`` runs them (on the defaults as on the user's values) before
anything is built, so ``-m q=abc`` or ``-m step=-2`` is one line naming the method,
the option and the accepted values, before any data is loaded. A check returns the
value in its canonical type (``Real`` gives a float, ``Integer`` an int) or raises
``ValueError`` with what the value must be. An option without a declared check gets
one from the type of its default (``Real`` for a float, ``Integer`` for an int,
``Flag`` for a bool), so a new option is never unchecked.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Sequence


class Check:
    """One option's type and range; ``check(value)`` returns the canonical value or raises ValueError."""

    def __call__(self, value: Any) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def fail(self) -> ValueError:
        return ValueError(f"must be {self.describe()}")


def _interval(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is None and hi is None:
        return ""
    left = "(" if lo is None or lo_open else "["
    right = ")" if hi is None or hi_open else "]"
    return f" in {left}{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}{right}"


class Real(Check):
    """A finite real number (int or float, not bool) in the interval [lo, hi] (open ends as asked)."""

    def __init__(self, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                 hi_open: bool = False) -> None:
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open

    def describe(self) -> str:
        return "a finite number" + _interval(self.lo, self.hi, self.lo_open, self.hi_open)

    def __call__(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise self.fail()
        v = float(value)
        if not math.isfinite(v):
            raise self.fail()
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            raise self.fail()
        if self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)):
            raise self.fail()
        return v


class Integer(Check):
    """A whole number (an int, or a float with no fraction; not bool) in [lo, hi]."""

    def __init__(self, lo: int | None = None, hi: int | None = None) -> None:
        self.lo, self.hi = lo, hi

    def describe(self) -> str:
        return "an integer" + _interval(self.lo, self.hi, False, False)

    def __call__(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise self.fail()
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            raise self.fail()
        v = int(value)
        if (self.lo is not None and v < self.lo) or (self.hi is not None and v > self.hi):
            raise self.fail()
        return v


class Flag(Check):
    """true or false."""

    def describe(self) -> str:
        return "true or false"

    def __call__(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail()
        return value


class OneOf(Check):
    """One of a fixed set of values (compared with ==, bools kept apart from 0 and 1)."""

    def __init__(self, *choices: Any) -> None:
        self.choices = choices

    def describe(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices)

    def __call__(self, value: Any) -> Any:
        for c in self.choices:
            if type(c) is type(value) and c == value:
                return c
        raise self.fail()


class Text(Check):
    """A non-empty string (a path, a name)."""

    def describe(self) -> str:
        return "a non-empty string"

    def __call__(self, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail()
        return value


class Optional(Check):
    """None (the method derives the value, e.g. from eps) or a value that passes ``check``."""

    def __init__(self, check: Check) -> None:
        self.check = check

    def describe(self) -> str:
        return f"null or {self.check.describe()}"

    def __call__(self, value: Any) -> Any:
        return None if value is None else self.check(value)


class Several(Check):
    """A non-empty list of values that each pass ``check`` (one value counts as a list of one)."""

    def __init__(self, check: Check) -> None:
        self.check = check

    def describe(self) -> str:
        return f"a non-empty list, each {self.check.describe()}"

    def __call__(self, value: Any) -> tuple[Any, ...]:
        items: Sequence[Any] = value if isinstance(value, (list, tuple)) else (value,)
        if not items:
            raise self.fail()
        try:
            return tuple(self.check(v) for v in items)
        except ValueError:
            raise self.fail() from None


def inferred(default: Any) -> Check | None:
    """The check implied by a default's type (None: no type to infer from)."""
    if isinstance(default, bool):
        return Flag()
    if isinstance(default, int):
        return Integer()
    if isinstance(default, float):
        return Real()
    return None


#: the options every method accepts (Method.common)
COMMON_CHECKS: dict[str, Check] = {
    "seed": Integer(0, 2**63 - 1),
    "num_samples": Optional(Integer(1)),
    "epochs": Optional(Integer(0)),
}

POSITIVE = Real(0, lo_open=True)
NON_NEGATIVE = Real(0)
SHARE = Real(0, 1)
