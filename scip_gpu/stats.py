"""Batched statistics over masked rows.

These small, pure functions are the reference semantics of the masked-statistics CUDA kernel:
each takes ``values`` (R, P) and a boolean ``valid`` (R, P) and reduces every row over its
valid entries only. They follow NumPy's definitions (``numpy.percentile`` with linear
interpolation, population standard deviation) and SciPy's biased ``skew`` and Fisher
``kurtosis``. A row without valid entries gives NaN.
"""

from __future__ import annotations

import numpy as np

from .backend import array_module

#: The 11 intensity statistics, in SCIP's column order.
STATISTICS = (
    "mean",
    "median",
    "max",
    "min",
    "std",
    "mad",
    "lower_quartile",
    "upper_quartile",
    "sum",
    "skewness",
    "kurtosis",
)


def sort_valid(values, valid):
    """Sort each row's valid entries to its front (invalid entries become +inf).

    Returns
    -------
    sorted : (R, P) float64 ndarray
    n : (R,) int64 ndarray
        Number of valid entries per row.
    """
    xp = array_module(values)
    v = xp.where(valid, values.astype(xp.float64, copy=False), xp.inf)
    return xp.sort(v, axis=-1), valid.sum(axis=-1)


def _lerp(xp, a, b, t):
    # numpy's own interpolation formula (numpy/lib/_function_base_impl.py::_lerp), so that
    # quantiles agree to the last bit with numpy.quantile.
    diff = b - a
    low = a + diff * t
    high = b - diff * (1 - t)
    return xp.where(t >= 0.5, high, low)


def quantile_sorted(sorted_rows, n, q: float):
    """Quantile ``q`` of each row as ``numpy.quantile(..., method='linear')``.

    Parameters
    ----------
    sorted_rows : (R, P) ndarray
        Rows sorted ascending with the ``n`` valid entries first (see ``sort_valid``).
    n : (R,) int ndarray
        Valid entries per row. Rows with ``n == 0`` give NaN.
    q : float in [0, 1]
    """
    xp = array_module(sorted_rows)
    last = xp.maximum(n - 1, 0)
    virtual = last.astype(xp.float64) * q
    lo = xp.floor(virtual).astype(xp.int64)
    hi = xp.minimum(lo + 1, last)
    gamma = virtual - lo
    a = xp.take_along_axis(sorted_rows, lo[:, None], axis=-1)[:, 0]
    b = xp.take_along_axis(sorted_rows, hi[:, None], axis=-1)[:, 0]
    with np.errstate(invalid="ignore"):  # empty rows: inf - inf
        out = _lerp(xp, a, b, gamma)
    return xp.where(n > 0, out, xp.nan)


def masked_quantile(values, valid, q: float):
    """``numpy.quantile(row[valid_row], q)`` for each row (NaN for empty rows)."""
    s, n = sort_valid(values, valid)
    return quantile_sorted(s, n, q)


def masked_statistics(values, valid):
    """The 11 intensity statistics of each row's valid entries.

    Parameters
    ----------
    values : (R, P) ndarray
    valid : (R, P) bool ndarray

    Returns
    -------
    (R, 11) float64 ndarray
        Columns in the order of ``STATISTICS``:

        - mean, std (ddof=0), sum;
        - median, max, min, lower/upper quartile: ``numpy.percentile`` (linear);
        - mad: :math:`\\mathrm{median}(|x - \\mathrm{median}(x)|)`, unscaled;
        - skewness :math:`m_3 / m_2^{3/2}` and kurtosis :math:`m_4 / m_2^2 - 3` from the
          central moments :math:`m_k`, as ``scipy.stats.skew``/``kurtosis`` with
          ``bias=True``; NaN when :math:`m_2` is zero to machine precision.

        Rows without valid entries are all NaN.
    """
    xp = array_module(values)
    x = values.astype(xp.float64, copy=False)
    s, n = sort_valid(x, valid)
    nf = n.astype(xp.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        total = xp.where(valid, x, 0.0).sum(axis=-1)
        mean = total / nf
        dev = xp.where(valid, x - mean[:, None], 0.0)
        dev2 = dev * dev
        m2 = dev2.sum(axis=-1) / nf
        m3 = (dev2 * dev).sum(axis=-1) / nf
        m4 = (dev2 * dev2).sum(axis=-1) / nf
        zero = m2 <= (np.finfo(np.float64).eps * mean) ** 2
        skew = xp.where(zero, xp.nan, m3 / m2**1.5)
        kurt = xp.where(zero, xp.nan, m4 / m2**2.0 - 3.0)
        q0, q1, q2, q3, q4 = (quantile_sorted(s, n, q) for q in (0.0, 0.25, 0.5, 0.75, 1.0))
        absdev = xp.where(valid, xp.abs(x - q2[:, None]), xp.inf)
        mad = quantile_sorted(xp.sort(absdev, axis=-1), n, 0.5)
        out = xp.stack(
            [mean, q2, q4, q0, xp.sqrt(m2), mad, q1, q3, total, skew, kurt], axis=-1
        )
    return xp.where((n > 0)[:, None], out, xp.nan)


def reference_statistics(x: np.ndarray) -> np.ndarray:
    """Per-object reference: the 11 statistics of a 1-D sample with NumPy and SciPy.

    This is the definition the batched functions are tested against (and SCIP's).
    """
    import warnings

    import scipy.stats

    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return np.full(len(STATISTICS), np.nan)
    p = np.percentile(x, (0, 25, 50, 75, 100))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy: "catastrophic cancellation"
        skew = scipy.stats.skew(x)
        kurt = scipy.stats.kurtosis(x)
    return np.array(
        [x.mean(), p[2], p[4], p[0], x.std(), np.median(np.abs(x - p[2])), p[1], p[3], x.sum(),
         skew, kurt]
    )
