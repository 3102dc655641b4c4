"""Median and percentile of a sample, equal to NumPy's to the last bit, without numpy.ma.

``np.percentile`` partitions at ``np.unique`` of its indexes, and ``np.unique`` imports
``numpy.ma`` on first use (numpy 2.4: 15-50 ms on these hosts, once per process; a
workload's metrics were its only users in a rom-access run). These do the same
arithmetic on the same order statistics as NumPy's linear method (``_quantile``,
``_get_indexes``, ``_lerp`` and ``_median`` in ``numpy/lib/_function_base_impl.py``):
partition, then interpolate between the two neighbours; a NaN anywhere gives NaN.
``tests/test_quantiles.py`` checks equality with NumPy's over generated samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _sample(values: Any) -> np.ndarray:
    a = np.array(values, dtype=np.float64).ravel()  # a copy: partitioned in place
    if a.size == 0:
        raise ValueError("empty sample")
    return a


def median(values: Any) -> float:
    """``float(np.median(values))`` for a non-empty 1-D sample: the mean (``np.mean``, as
    numpy's ``_median``) of the middle order statistic or the two middle ones."""
    a = _sample(values)
    n = a.size
    k = n // 2
    kth = [k, n - 1] if n % 2 else [k - 1, k, n - 1]
    a.partition(kth)
    if np.isnan(a[-1]):  # NaN sorts last
        return float("nan")
    middle = a[k : k + 1] if n % 2 else a[k - 1 : k + 1]
    return float(np.mean(middle))  # numpy's _median: the mean of the middle (0.0 + x) / n


def percentile(values: Any, q: float) -> float:
    """``float(np.percentile(values, q))`` (method ``linear``) for a non-empty 1-D sample,
    ``0 <= q <= 100``."""
    a = _sample(values)
    n = a.size
    virtual = (n - 1) * np.true_divide(q, 100)
    if virtual >= n - 1:  # numpy: both neighbours are the last element
        lo = hi = -1
    elif virtual < 0:
        lo = hi = 0
    else:
        lo = int(np.floor(virtual))
        hi = lo + 1
    gamma = virtual - np.float64(lo)  # numpy's, from the neighbour's index as set above
    a.partition(sorted({0, n - 1, lo % n, hi % n}))
    if np.isnan(a[-1]):
        return float("nan")
    prev, nxt = a[lo], a[hi]
    diff = nxt - prev
    if gamma >= 0.5:
        return float(nxt - diff * (1 - gamma))
    return float(prev + diff * gamma)
