"""The arithmetic of a real `eta` for new jobs, and of `Retry-After` for pending ones.

    eta = now + mean * (1 + ahead / parallelism)

- `mean`: a moving average (EWMA, weight 0.2 for the newest) of recent processing times
  (delivery to terminal), as each consumer reports it; averaged over the live consumers.
- `ahead`: the messages ready in the jobs queue, as the broker counts them.
- `parallelism`: the messages the live consumers work on at once (the sum of their prefetch).

A consumer reports every few seconds into the `consumers` collection; one that has not
reported for 30 s is not live. With no live consumer the estimate uses 1 s and a parallelism
of 1: the job waits until one starts, and the estimate cannot know when. `usecases.eta` reads
the inputs, at most once a second per process, so the estimate adds nothing to most
submissions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Self

from service.domain.clock import utcnow

DEFAULT_MEAN_SECONDS = 1.0
LIVE_WITHIN = timedelta(seconds=30)
REFRESH_SECONDS = 1.0
EWMA_WEIGHT = 0.2
RETRY_AFTER_BOUNDS = (1, 30)


class MovingAverage:
    def __init__(self, weight: float = EWMA_WEIGHT) -> None:
        self.weight = weight
        self.value: float | None = None

    def add(self, sample: float) -> None:
        self.value = (
            sample
            if self.value is None
            else (self.weight * sample + (1 - self.weight) * self.value)
        )


@dataclass(frozen=True, slots=True)
class Load:
    ahead: int
    mean_seconds: float
    parallelism: int

    @classmethod
    def of(cls, ahead: int, live_consumers: Iterable[Mapping[str, Any]]) -> Self:
        """The load from the queue depth and the live consumers' reports (`mean_seconds`,
        `prefetch`)."""
        reports = list(live_consumers)
        if not reports:
            return cls(ahead, DEFAULT_MEAN_SECONDS, 1)
        mean = sum(report["mean_seconds"] for report in reports) / len(reports)
        return cls(ahead, mean, max(1, sum(report["prefetch"] for report in reports)))

    def eta(self, now: datetime) -> datetime:
        seconds = self.mean_seconds * (1 + self.ahead / self.parallelism)
        return now + timedelta(seconds=seconds)


def retry_after(eta: datetime, now: datetime | None = None) -> int:
    """Seconds until `eta`, within 1..30: when a polling client should look again."""
    low, high = RETRY_AFTER_BOUNDS
    seconds = math.ceil((eta - (now or utcnow())).total_seconds())
    return max(low, min(high, seconds))
