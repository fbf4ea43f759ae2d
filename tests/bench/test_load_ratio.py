"""The load bench's CPU-bound capacity ratio (``bench.load --recording-pairs``), without running it."""

from __future__ import annotations

import pytest

from bench.load import recording_ratio


def test_the_ratio_is_off_over_on_and_the_cost_is_per_hundred_sessions() -> None:
    out = recording_ratio(250, [(0.65, 0.91), (0.60, 0.80), (0.70, 1.00)])
    assert out["cpu_bound_capacity_ratio_median"] == pytest.approx(0.714, abs=0.001)
    assert out["cpu_bound_capacity_ratio_range"] == [0.7, 0.75]
    assert out["recording_core_per_100_sessions"] == pytest.approx(100 * 0.26 / 250, abs=1e-4)


def test_a_run_that_measured_no_cpu_gives_no_ratio() -> None:
    out = recording_ratio(10, [(0.1, 0.0)])
    assert out["cpu_bound_capacity_ratio_median"] is None
