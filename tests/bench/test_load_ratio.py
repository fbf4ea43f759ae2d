"""The load bench's CPU-bound capacity ratio (``bench.load --recording-pairs``), without running it."""

from __future__ import annotations

import pytest

from bench.load import recording_ratio


def test_the_ratio_is_off_over_on_and_the_cost_is_per_hundred_sessions() -> None:
    out = recording_ratio(250, [(0.55, 0.77), (0.60, 0.80), (0.49, 0.70)])
    assert out["cpu_bound_capacity_ratio_median"] == pytest.approx(0.714, abs=0.001)
    assert out["cpu_bound_capacity_ratio_range"] == [0.7, 0.75]
    assert out["recording_core_per_100_sessions"] == pytest.approx(100 * 0.21 / 250, abs=1e-4)
    assert out["saturated_pairs"] == 0


def test_a_pair_with_a_saturated_run_is_left_out() -> None:
    """A run at the core's ceiling understates its load: 0.72 / 0.90 would flatter recording."""
    out = recording_ratio(250, [(0.72, 0.90), (0.45, 0.75), (0.86, 0.84)])
    assert out["saturated_pairs"] == 2
    assert out["cpu_bound_capacity_ratio_range"] == [0.6, 0.6]
    assert out["recording_core_per_100_sessions"] == pytest.approx(100 * 0.30 / 250, abs=1e-4)
    assert recording_ratio(250, [(0.72, 0.90)])["cpu_bound_capacity_ratio_median"] is None


def test_a_run_that_measured_no_cpu_gives_no_ratio() -> None:
    out = recording_ratio(10, [(0.1, 0.0)])
    assert out["cpu_bound_capacity_ratio_median"] is None
