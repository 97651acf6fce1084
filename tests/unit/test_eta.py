"""The ETA arithmetic: mean processing time x (1 + jobs ahead / parallelism), and the
Retry-After that pending responses carry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.domain.eta import Load, MovingAverage, retry_after

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("load", "seconds"),
    [
        (Load(ahead=0, mean_seconds=2.0, parallelism=4), 2.0),
        (Load(ahead=8, mean_seconds=2.0, parallelism=4), 6.0),
        (Load(ahead=100, mean_seconds=0.1, parallelism=16), 0.725),
    ],
)
def test_the_formula(load, seconds) -> None:
    assert load.eta(NOW) == NOW + timedelta(seconds=seconds)


@pytest.mark.parametrize(("seconds", "expected"), [(-5, 1), (0.2, 1), (6.1, 7), (600, 30)])
def test_retry_after_is_bounded(seconds, expected) -> None:
    assert retry_after(NOW + timedelta(seconds=seconds), NOW) == expected


def test_the_moving_average_follows_recent_times() -> None:
    average = MovingAverage(weight=0.5)
    for sample in (1.0, 3.0, 3.0):
        average.add(sample)
    assert average.value == 2.5
