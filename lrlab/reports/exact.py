"""Means and sample standard deviations of many small samples at once, equal bit for bit to statistics.fmean and
statistics.stdev.

A comparison's replicate groups need a mean and a standard deviation per group, epoch and metric: 128k of them
for 256 runs x 1000 epochs, and `statistics.stdev` (an exact rational computation, correctly rounded) costs
~40 us each. Both functions are defined by exact arithmetic: fmean is the correctly rounded sum (math.fsum)
divided by n, stdev the correctly rounded square root of the exact sample variance. So any method that finds
those correctly rounded values gives the same bits. Here every column is computed at once in double-double
arithmetic (error-free transformations: TwoSum, Dekker's TwoProduct), which carries ~100 bits, together with a
bound on its error; where the bound does not prove which float the exact value rounds to (a value within ~2^-40
of a rounding boundary, all values equal, subnormal or huge magnitudes), that column falls back to the
statistics module itself. The fallback is rare (none in random data of ordinary magnitudes) and always right.

Columns are samples: `values` is (rows, columns), NaN marks an absent value.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import numpy as np

U = 2.0**-53  # unit roundoff of float64
SPLIT = 2.0**27 + 1.0  # Dekker's splitter
SAFE_MIN, SAFE_MAX = 2.0**-900, 2.0**400  # outside: squares and products could underflow or overflow
MARGIN = 2.0**-40  # relative error a fast result may carry and still be trusted (the arithmetic gives ~2^-100)

Array = np.ndarray


def _two_sum(a: Array, b: Array) -> tuple[Array, Array]:
    """s + e == a + b exactly, s = fl(a + b) (Knuth)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _split(a: Array) -> tuple[Array, Array]:
    c = SPLIT * a
    high = c - (c - a)
    return high, a - high


def _two_product(a: Array, b: Array) -> tuple[Array, Array]:
    """p + e == a * b exactly, p = fl(a * b) (Dekker), for |a|, |b| within SAFE_MIN..SAFE_MAX."""
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def _half_gap(h: Array) -> Array:
    """Half the distance from |h| to its nearer float neighbour (the one below, at a power of two)."""
    below = np.nextafter(np.abs(h), 0.0)
    return np.spacing(below) / 2.0


def _rounds_to(high: Array, low: Array, bound: Array) -> Array:
    """Whether every value within `bound` of high + low rounds to high (|low| <= half an ulp of high, and
    high = fl(high + low)); with bound 0, high + low is the exact value and high its rounding, ties included."""
    with np.errstate(invalid="ignore", over="ignore"):
        finite = np.isfinite(high) & np.isfinite(low) & np.isfinite(bound)
        return finite & ((bound == 0.0) | (np.abs(low) + bound < _half_gap(high)))


def _granularity(x: Array) -> Array:
    """Per column: the largest power of two that divides every nonzero value (inf for none)."""
    mantissa, exponent = np.frexp(x)  # x = mantissa * 2**exponent, 0.5 <= |mantissa| < 1
    whole = np.abs(np.ldexp(mantissa, 53)).astype(np.int64)  # the 53-bit integer significand
    g = np.ldexp((whole & -whole).astype(np.float64), exponent - 53)
    g[x == 0] = np.inf
    return g.min(axis=0)


def _dd_sum(terms: Array, extra: Array | None = None) -> tuple[Array, Array, Array]:
    """Column sums of `terms` (rows, cols) in double-double: (high, low, error bound of high + low).

    `extra` (rows, cols) are small corrections added to the low part; their sizes enter the bound. Without them,
    the bound is 0 where the TwoSum errors were summed exactly: all are multiples of the terms' granularity g,
    so while their running total stays below 2^52 g no addition rounds. Then high is fl(exact sum) itself, ties
    included (the common case: same-sized values).
    """
    rows = terms.shape[0]
    s = terms[0].copy()
    c = np.zeros_like(s) if extra is None else extra[0].copy()
    mass = np.abs(terms).sum(axis=0)  # sum of |terms|: every error below is a fraction of it
    error_mass = np.zeros_like(s)
    for i in range(1, rows):
        s, e = _two_sum(s, terms[i])
        error_mass += np.abs(e)
        c += e if extra is None else e + extra[i]
    if extra is not None:
        mass = mass + np.abs(extra).sum(axis=0)
    high, low = _two_sum(s, c)
    # |sum of the TwoSum errors - c| <= rows * u * sum|e|, sum|e| <= rows * u * mass: doubled, and a margin
    # for `mass` itself being rounded.
    bound = 4.0 * (rows + 1) ** 2 * U * U * mass
    if extra is None:
        exact = error_mass * (1.0 + 4.0 * rows * U) < 2.0**52 * _granularity(terms)
        bound = np.where(exact, 0.0, bound)
    return high, low, bound


def _present(values: Array) -> tuple[Array, Array, Array]:
    present = ~np.isnan(values)
    n = present.sum(axis=0)
    return present, n, np.where(present, values, 0.0)


def _in_safe_range(x: Array, present: Array) -> Array:
    a = np.abs(x)
    tiny = present & (a != 0.0) & (a < SAFE_MIN)
    return ~(tiny.any(axis=0) | (a > SAFE_MAX).any(axis=0) | ~np.isfinite(x).all(axis=0))


BLOCK = 4096  # columns at a time: the double-double temporaries stay a few MB


def _blockwise(fn: Callable[[Array], Array], values: Array) -> Array:
    if values.shape[1] <= BLOCK:
        return fn(values)
    return np.concatenate([fn(values[:, j : j + BLOCK]) for j in range(0, values.shape[1], BLOCK)])


def fmeans(values: Array) -> Array:
    """Per column: statistics.fmean of its present values (NaN where none)."""
    return _blockwise(_fmeans, values)


def stdevs(values: Array) -> Array:
    """Per column: statistics.stdev of its present values (NaN where fewer than two)."""
    return _blockwise(_stdevs, values)


def _fmeans(values: Array) -> Array:
    present, n, x = _present(values)
    out = np.full(values.shape[1], np.nan)
    if values.shape[0] == 0:
        return out
    high, low, bound = _dd_sum(x)
    ok = (n > 0) & _in_safe_range(x, present) & (high != 0.0) & _rounds_to(high, low, bound)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[ok] = high[ok] / n[ok]
    for j in np.flatnonzero((n > 0) & ~ok):
        out[j] = statistics.fmean(values[present[:, j], j].tolist())
    return out


def _stdevs(values: Array) -> Array:
    present, n, x = _present(values)
    out = np.full(values.shape[1], np.nan)
    if values.shape[0] < 2:
        return out
    nf = np.maximum(n, 1).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        total, total_low, _ = _dd_sum(x)
        mean = np.where(n > 0, total / nf, 0.0)  # any float near the mean: the deviations below are exact
        dh, dl = _two_sum(x, -mean[None, :])
        dh, dl = np.where(present, dh, 0.0), np.where(present, dl, 0.0)
        # sum of squared deviations from `mean`: (dh + dl)^2 = dh*dh (exact as p + pe) + 2*dh*dl + dl*dl
        p, pe = _two_product(dh, dh)
        a_high, a_low, a_bound = _dd_sum(p, pe + (2.0 * dh * dl + dl * dl))
        a_bound = a_bound + 8.0 * U * U * a_high  # the small terms' own rounding
        # minus n * (exact mean - mean)^2 = (sum of deviations)^2 / n
        d_high, d_low, d_bound = _dd_sum(dh, dl)
        d = d_high + d_low
        b = d * d / nf
        b_bound = 8.0 * U * b + (2.0 * np.abs(d) + d_bound) * d_bound / nf
        ss_high, ss_low = _two_sum(a_high, -b)
        ss_low = ss_low + a_low
        ss_high, ss_low = _two_sum(ss_high, ss_low)
        rel = (a_bound + b_bound + 4.0 * U * U * np.abs(ss_high)) / ss_high
        # variance = ss / (n - 1), in double-double
        m1 = nf - 1.0
        v_high = ss_high / m1
        q, qe = _two_product(v_high, m1)
        v_low = (((ss_high - q) - qe) + ss_low) / m1
        # square root: one Newton step from the float root, in double-double
        t = np.sqrt(v_high)
        q, qe = _two_product(t, t)
        t_low = (((v_high - q) - qe) + v_low) / (2.0 * t)
        high, low = _two_sum(t, t_low)
        bound = 4.0 * (rel / 2.0 + 16.0 * U * U) * high
        ok = (
            (n >= 2)
            & _in_safe_range(x, present)
            & (ss_high > 0.0)
            & (rel < MARGIN)
            & _in_safe_range(np.where(present, dh, 1.0), present)
            & _rounds_to(high, low, bound)
        )
    out[ok] = high[ok]
    for j in np.flatnonzero((n >= 2) & ~ok):
        out[j] = statistics.stdev(values[present[:, j], j].tolist())
    return out
