"""Confidence intervals: the one ``mean_ci`` used by evaluation reports and training tables.

The interval depends on what was measured, never on the values that happened to come out:

* a **0/1 metric** (exact match, format rate) gets Wilson's score interval, which stays inside
  [0, 1] and is sensible at 0 % and 100 %;
* a **continuous metric** (F1, SSim, reward, turns) gets the normal interval, mean ± z standard
  errors (sample standard deviation), clipped to the metric's plausible range ``bounds``.

Deciding from the values instead (Wilson "if every value is 0 or 1") gave an F1 of all zeros the
interval of a proportion, [0 %, 39 %] for six episodes, as if a seventh could score 1 with 39 %
probability. Here a continuous metric whose every value is 0 has the interval [0, 0].

Every function returns ``(mean, low, high)``.

>>> mean_ci([1, 0, 1, 1], binary=True)[0]
0.75
>>> [round(x, 4) for x in mean_ci([0.0] * 6, binary=True)]
[0.0, 0.0, 0.3903]
>>> mean_ci([0.0] * 6, bounds=(0.0, 1.0))
(0.0, 0.0, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["CI", "Z95", "format_ci", "mean_ci", "standard_error", "wilson_ci"]

#: ``(mean, low, high)``.
CI = tuple[float, float, float]

#: The two-sided 95 % normal quantile.
Z95 = 1.959963984540054

_NAN_CI: CI = (math.nan, math.nan, math.nan)


def wilson_ci(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` for ``successes`` out of ``n``; ``(0, 1)`` when ``n == 0``.

    >>> [round(x, 4) for x in wilson_ci(0, 10)]
    [0.0, 0.2775]
    >>> [round(x, 4) for x in wilson_ci(5, 10)]
    [0.2366, 0.7634]
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean (sample standard deviation / sqrt(n)); 0 for fewer than two values.

    >>> round(standard_error([0.0, 1.0, 0.5, 0.5]), 6)
    0.204124
    """
    n = len(values)
    if n < 2:
        return 0.0
    m = math.fsum(values) / n
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (n - 1) / n)


def mean_ci(
    values: Sequence[float],
    *,
    binary: bool = False,
    bounds: tuple[float, float] | None = None,
    z: float = Z95,
) -> CI:
    """``(mean, low, high)`` of ``values`` with a 95 % confidence interval (``z`` sets another level).

    ``binary=True``: the values are 0/1 outcomes and the interval is Wilson's (any other value is
    a ValueError: a graded metric must not get a proportion's interval). Otherwise the normal
    interval ``mean ± z·SE``, clipped to ``bounds`` (the metric's plausible range, e.g. ``(0, 1)``
    for F1); with a single value it is the whole of ``bounds`` (NaN without bounds), since one
    value says nothing about the spread. No values: all NaN.

    >>> m, lo, hi = mean_ci([0.2, 0.4, 0.6]); round(m, 3), round(hi - m, 3)
    (0.4, 0.226)
    >>> mean_ci([0.9, 1.0, 0.95, 1.0, 0.99], bounds=(0.0, 1.0))[2]
    1.0
    >>> mean_ci([0.5], bounds=(0.0, 1.0))
    (0.5, 0.0, 1.0)
    >>> mean_ci([])
    (nan, nan, nan)
    >>> mean_ci([0.5, 1.0], binary=True)
    Traceback (most recent call last):
    ...
    ValueError: mean_ci(binary=True) expects 0/1 values, got 0.5; use binary=False for a graded metric.
    """
    n = len(values)
    if n == 0:
        return _NAN_CI
    vals = [float(v) for v in values]
    mean = math.fsum(vals) / n
    if binary:
        for v in vals:
            if v not in (0.0, 1.0):
                raise ValueError(
                    f"mean_ci(binary=True) expects 0/1 values, got {v!r}; use binary=False for a graded metric."
                )
        lo, hi = wilson_ci(sum(vals), n, z)
        return mean, lo, hi
    low_b, high_b = bounds if bounds is not None else (-math.inf, math.inf)
    if n == 1:
        lo = low_b if math.isfinite(low_b) else math.nan
        hi = high_b if math.isfinite(high_b) else math.nan
        return mean, lo, hi
    half = z * standard_error(vals)
    return mean, max(low_b, mean - half), min(high_b, mean + half)


def format_ci(ci: CI, *, scale: float = 1.0, digits: int = 3, sign: bool = False) -> str:
    """``"mean [low, high]"`` (times ``scale``); ``"–"`` for no values, no bracket for an unknown interval.

    >>> format_ci((0.5, 0.2366, 0.7634), scale=100, digits=1)
    '50.0 [23.7, 76.3]'
    >>> format_ci((-0.25, -0.5, 0.0), sign=True)
    '-0.250 [-0.500, +0.000]'
    >>> format_ci((float("nan"),) * 3)
    '–'
    """
    mean, lo, hi = ci
    if math.isnan(mean):
        return "–"
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    text = f.format(scale * mean)
    if math.isnan(lo) or math.isnan(hi):
        return text
    return f"{text} [{f.format(scale * lo)}, {f.format(scale * hi)}]"
