"""Pre-mask filters, batched: decide per object and channel whether a channel has signal.

A channel that fails gets an empty mask; when the main channel fails, the object's features are
NaN for that mask (its row is kept). Definitions (SCIP's):

- ``normaltest``: ``scipy.stats.normaltest(x.ravel()).pvalue < 0.05`` (not normal = signal);
- ``std``: ``x.std() > threshold``;
- ``value_range``: ``x.max() - x.min() > threshold``.
"""

from __future__ import annotations

import numpy as np

from ..backend import array_module


def _moments(x, valid):
    xp = array_module(x)
    n = valid.sum(axis=1).astype(xp.float64)
    xf = x.astype(xp.float64)
    mean = xp.where(valid, xf, 0).sum(axis=1) / n
    d = xp.where(valid, xf - mean[:, None], 0)
    d2 = d * d
    return n, mean, d2.sum(axis=1) / n, (d2 * d).sum(axis=1) / n, (d2 * d2).sum(axis=1) / n


def normaltest_pvalue(x, valid):
    """D'Agostino-Pearson omnibus test p-value of each row's valid entries, as
    ``scipy.stats.normaltest`` (rows need at least 8 entries, else NaN)."""
    xp = array_module(x)
    with np.errstate(all="ignore"):
        n, mean, m2, m3, m4 = _moments(x, valid)
        zero = m2 <= (np.finfo(np.float64).eps * mean) ** 2
        skew = xp.where(zero, xp.nan, m3 / m2**1.5)
        kurt = xp.where(zero, xp.nan, m4 / m2**2.0)  # Pearson (not excess)
        # skewtest
        y = skew * xp.sqrt(((n + 1) * (n + 3)) / (6.0 * (n - 2)))
        beta2 = 3.0 * (n**2 + 27 * n - 70) * (n + 1) * (n + 3) / ((n - 2.0) * (n + 5) * (n + 7) * (n + 9))
        w2 = -1 + xp.sqrt(2 * (beta2 - 1))
        delta = 1 / xp.sqrt(0.5 * xp.log(w2))
        alpha = xp.sqrt(2.0 / (w2 - 1))
        y = xp.where(y == 0, 1, y)
        zs = delta * xp.log(y / alpha + xp.sqrt((y / alpha) ** 2 + 1))
        # kurtosistest
        e = 3.0 * (n - 1) / (n + 1)
        varb2 = 24.0 * n * (n - 2) * (n - 3) / ((n + 1) * (n + 1.0) * (n + 3) * (n + 5))
        t = (kurt - e) / xp.sqrt(varb2)
        sb1 = 6.0 * (n * n - 5 * n + 2) / ((n + 7) * (n + 9)) * xp.sqrt(
            (6.0 * (n + 3) * (n + 5)) / (n * (n - 2) * (n - 3)))
        a = 6.0 + 8.0 / sb1 * (2.0 / sb1 + xp.sqrt(1 + 4.0 / (sb1**2)))
        term1 = 1 - 2 / (9.0 * a)
        denom = 1 + t * xp.sqrt(2 / (a - 4.0))
        term2 = xp.sign(denom) * xp.where(denom == 0.0, xp.nan,
                                          xp.power((1 - 2.0 / a) / xp.abs(denom), 1 / 3.0))
        zk = (term1 - term2) / xp.sqrt(2 / (9.0 * a))
        k2 = zs * zs + zk * zk
        p = xp.exp(-k2 / 2)  # chi2(2).sf
    return xp.where(n >= 8, p, xp.nan)


def normaltest(x, valid):
    return normaltest_pvalue(x, valid) < 0.05


def std(x, valid, *, threshold: float):
    xp = array_module(x)
    with np.errstate(all="ignore"):
        _, _, m2, _, _ = _moments(x, valid)
    return xp.sqrt(m2) > threshold


def value_range(x, valid, *, threshold: float):
    xp = array_module(x)
    xf = x.astype(xp.float64)
    return (xp.where(valid, xf, -xp.inf).max(axis=1) - xp.where(valid, xf, xp.inf).min(axis=1)) > threshold


#: filter name -> (function, options with defaults; None marks a required option)
FILTERS = {
    "normaltest": (normaltest, {}),
    "std": (std, {"threshold": None}),
    "value_range": (value_range, {"threshold": None}),
}
