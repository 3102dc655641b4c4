"""``mmbench.workloads.quantiles`` equals NumPy's median and linear percentile bit for bit
(the rom-access metrics use them so that a run does not import numpy.ma)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mmbench.workloads.quantiles import median, percentile

finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, width=64)
special = st.sampled_from([0.0, -0.0, 1.5, math.inf, -math.inf, math.nan, 5e-324, 1e308])
samples = st.lists(st.one_of(finite, finite, finite, special), min_size=1, max_size=300)


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (
        a == b and math.copysign(1, a) == math.copysign(1, b)
    )


@settings(max_examples=400, deadline=None)
@given(samples)
def test_median_is_numpys(xs: list[float]) -> None:
    with np.errstate(invalid="ignore", over="ignore"):
        want = float(np.median(np.array(xs)))
        got = median(xs)
    assert same(got, want), xs


@settings(max_examples=400, deadline=None)
@given(samples, st.one_of(st.sampled_from([0, 1, 50, 99, 100, 99.9]), st.floats(0, 100)))
def test_percentile_is_numpys(xs: list[float], q: float) -> None:
    with np.errstate(invalid="ignore"):
        want = float(np.percentile(np.array(xs), q))
        got = percentile(xs, q)
    assert same(got, want), (xs, q)


def test_ms_samples_like_rom_access() -> None:
    """Delete times in ms as the workload has them: many ties, a few outliers."""
    rng = np.random.default_rng(7)
    for n in (1, 2, 3, 10, 101, 1000, 4096):
        xs = np.round(rng.gamma(2.0, 0.05, n), 4)
        xs[rng.integers(0, n, max(1, n // 50))] *= 40
        assert median(xs) == float(np.median(xs))
        assert percentile(xs, 99) == float(np.percentile(xs, 99))


def test_inputs_left_unchanged() -> None:
    xs = np.array([3.0, 1.0, 2.0, 5.0])
    median(xs)
    percentile(xs, 99)
    assert xs.tolist() == [3.0, 1.0, 2.0, 5.0]


def test_no_numpy_ma() -> None:
    code = (
        "import sys; from mmbench.workloads.quantiles import median, percentile;"
        "median([3., 1., 2., 4.]); percentile([3., 1., 2.], 99);"
        "print('numpy.ma' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
