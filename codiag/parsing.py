"""Parsing of user-given numbers such as ``8/255``."""
from __future__ import annotations

import argparse
from fractions import Fraction
from typing import Callable

from .errors import UsageError


def parse_fraction(text: str | float | int, name: str = "value") -> float:
    """Read a float given as ``0.2``, ``8/255`` or ``1e-3``; raise UsageError otherwise."""
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip()
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            return float(Fraction(num.strip()) / Fraction(den.strip()))
        return float(s)
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"{name} must be a number such as 0.2 or 8/255, got {text!r}") from None


def parse_eps(text: str | float) -> float:
    """An L-inf radius in pixel units: a number in [0, 1]."""
    eps = parse_fraction(text, "eps")
    if not 0.0 <= eps <= 1.0:
        raise UsageError(f"eps must lie in [0, 1] (pixel units, e.g. 8/255), got {text}")
    return eps


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` reading an integer not below ``minimum`` (argparse turns the
    error into its one-line usage message)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must not be negative, got {v}" if minimum == 0
                                             else f"must be at least {minimum}, got {v}")
        return v
    return parse
