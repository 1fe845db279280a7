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
from .dispatch import stage

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
    v = xp.where(valid, values.astype(xp.float64, copy=False), xp.inf)  # a new array: sorted in place
    v.sort(axis=-1)
    return v, valid.sum(axis=-1)


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


def sort_planes(values, valid):
    """Sort every row once; views of the row are then selected from the sorted order.

    Returns
    -------
    order : (R, P) int ndarray
        ``argsort`` of each row, invalid entries last.
    sorted_values : (R, P) float64 ndarray
        The row's values in that order (+inf for invalid entries).
    """
    xp = array_module(values)
    v = xp.where(valid, values.astype(xp.float64, copy=False), xp.inf)
    order = xp.argsort(v, axis=-1)
    return order, xp.take_along_axis(v, order, axis=-1)


def view_members(order, sorted_values, view):
    """Compact, per-row sorted values of a view (a boolean (R, P) subset of each row).

    Returns
    -------
    values : (M,) float64 ndarray
        The members of row 0 ascending, then those of row 1, ... (M = total members).
    n : (R,) int64 ndarray
        Members per row.
    """
    xp = array_module(sorted_values)
    in_order = xp.take_along_axis(view, order, axis=-1)
    return sorted_values[in_order], in_order.sum(axis=-1)


def _segment_kth_vshape(d, starts, split, n, k):
    """k-th smallest (0-based) of each segment of ``d`` whose first ``split`` entries decrease
    and the rest increase (|x - c| over ascending x): a k-th-of-two-sorted-lists search."""
    xp = array_module(d)
    if d.shape[0] == 0:
        return xp.full(n.shape, xp.nan)
    a = split
    t = k + 1  # how many of the smallest entries to take
    lo = xp.maximum(0, t - (n - split))
    hi = xp.minimum(t, a)
    last = d.shape[0] - 1

    def A(i):  # i-th smallest of the left part (which is stored decreasing)
        return d[xp.clip(starts + split - 1 - i, 0, last)]

    def B(j):  # j-th smallest of the right part
        return d[xp.clip(starts + split + j, 0, last)]

    for _ in range(64):  # bisection on how many of the t smallest come from the left part
        active = lo < hi
        if not bool(active.any()):  # host sync, ~log2(n) times
            break
        mid = (lo + hi) // 2
        j = t - mid
        more = active & (mid < a) & (j > 0) & (B(j - 1) > A(mid))
        lo, hi = xp.where(more, mid + 1, lo), xp.where(active & ~more, mid, hi)
    j = t - lo
    left = xp.where(lo > 0, A(lo - 1), -xp.inf)
    right = xp.where(j > 0, B(j - 1), -xp.inf)
    return xp.maximum(left, right)


def _compact_examples(rng):
    for r, p, top in ((40, 60, 1000.0), (25, 300, 50.0)):
        values = np.round(rng.gamma(2.0, top / 4, (r, p)), 1)  # ties
        valid = rng.random((r, p)) < rng.random((r, 1))
        valid[:2] = False
        valid[1, 7] = True  # one member
        valid[3] = True
        values[3] = 3.0  # constant segment
        order, sv = sort_planes(values, valid)
        yield view_members(order, sv, valid), {}
    yield (np.zeros(0), np.zeros(3, dtype=np.int64)), {}  # only empty segments


#: partial sums per segment of the central moments in compact_statistics and its kernels (the
#: numba sorted_stats, kernels/intensity.cu's INT_LANES threads per view)
MOMENT_LANES = 16


@stage("stats.compact_statistics", examples=_compact_examples)
def compact_statistics(values, n):
    """The 11 intensity statistics of segments of compact, per-segment ascending values.

    The stage ``stats.compact_statistics``: this is the reference semantics of the
    masked-statistics CUDA kernel.

    Parameters
    ----------
    values : (M,) float64 ndarray
        Segment 0's values ascending, then segment 1's, ... (see ``view_members``).
    n : (R,) int ndarray
        Segment lengths (``sum(n) == M``); empty segments give NaN.

    Returns
    -------
    (R, 11) float64 ndarray, columns as ``STATISTICS`` (see ``masked_statistics``).
    """
    xp = array_module(values)
    r = n.shape[0]
    n = n.astype(xp.int64)
    starts = xp.cumsum(n) - n
    seg = xp.repeat(xp.arange(r), n)
    nf = n.astype(xp.float64)
    last = max(int(values.shape[0]) - 1, 0)

    def at(pos):
        return values[xp.clip(pos, 0, last)] if values.shape[0] else xp.full(pos.shape, xp.nan)

    def quantile(q):
        virtual = xp.maximum(n - 1, 0).astype(xp.float64) * q
        lo = xp.floor(virtual).astype(xp.int64)
        hi = xp.minimum(lo + 1, xp.maximum(n - 1, 0))
        return _lerp(xp, at(starts + lo), at(starts + hi), virtual - lo)

    with np.errstate(invalid="ignore", divide="ignore"):
        total = xp.bincount(seg, weights=values, minlength=r)
        mean = total / nf
        dev = values - mean[seg]
        dev2 = dev * dev
        # central moments in MOMENT_LANES partial sums per segment (member i into partial
        # i mod MOMENT_LANES, in order), added as a pairwise tree: the order of the numba and
        # CUDA kernels (NumPy's bincount adds in order, so all three agree to the last bit)
        lane = seg * MOMENT_LANES + (xp.arange(values.shape[0]) - starts[seg]) % MOMENT_LANES

        def lane_sum(w):
            p = xp.bincount(lane, weights=w, minlength=r * MOMENT_LANES).reshape(r, MOMENT_LANES)
            off = MOMENT_LANES // 2
            while off:
                p = p[:, :off] + p[:, off:2 * off]
                off //= 2
            return p[:, 0]

        m2 = lane_sum(dev2) / nf
        m3 = lane_sum(dev2 * dev) / nf
        m4 = lane_sum(dev2 * dev2) / nf
        zero = m2 <= (np.finfo(np.float64).eps * mean) ** 2
        # m2^(3/2) as m2 * sqrt(m2), not a power: sqrt and * are correctly rounded in NumPy,
        # numba and CUDA alike, while pow(m2, 1.5) differs in its last bit between libm, CUDA and
        # NumPy's SIMD power (NumPy 2.4: about 5 % of values)
        skew = xp.where(zero, xp.nan, m3 / (m2 * xp.sqrt(m2)))
        kurt = xp.where(zero, xp.nan, m4 / (m2 * m2) - 3.0)
        q0, q1, q2, q3, q4 = (quantile(q) for q in (0.0, 0.25, 0.5, 0.75, 1.0))
        # MAD: median of |x - median|, selected from the V-shaped sequence without sorting
        med_seg = q2[seg]
        dist = xp.abs(values - med_seg)
        split = xp.bincount(seg, weights=(values <= med_seg).astype(xp.float64), minlength=r).astype(xp.int64)
        k_lo = xp.maximum(n - 1, 0) // 2
        k_hi = xp.maximum(n, 1) // 2
        lo_v = _segment_kth_vshape(dist, starts, split, n, k_lo)
        hi_v = _segment_kth_vshape(dist, starts, split, n, xp.minimum(k_hi, xp.maximum(n - 1, 0)))
        gamma = xp.where(k_lo == k_hi, 0.0, 0.5)
        mad = _lerp(xp, lo_v, hi_v, gamma)
        out = xp.stack([mean, q2, q4, q0, xp.sqrt(m2), mad, q1, q3, total, skew, kurt], axis=-1)
    return xp.where((n > 0)[:, None], out, xp.nan)


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
    order, sv = sort_planes(values, valid)
    members, n = view_members(order, sv, valid)
    return compact_statistics(members, n)


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
