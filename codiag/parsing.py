"""Parsing of user-given numbers such as ``8/255``."""
from __future__ import annotations

from fractions import Fraction

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
