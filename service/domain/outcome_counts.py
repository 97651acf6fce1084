"""Finished jobs counted per minute, by outcome and processing time: the keys and buckets of
`job_minutes` (see `storage.outcome_stats`), and the percentiles read back from them."""

from __future__ import annotations

import bisect
from collections import Counter
from datetime import datetime, timedelta

# Upper bounds of the processing-time buckets, in milliseconds; slower jobs count as "inf".
BUCKET_BOUNDS_MS = (10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000)
# How long the minutes are kept: the dashboard reads a day of them.
KEPT_FOR = timedelta(days=2)


def minute_key(at: datetime) -> str:
    """The minute `at` falls in, as an id that sorts as time does."""
    return at.strftime("%Y-%m-%dT%H:%M")


def bucket_of(seconds: float) -> str:
    index = bisect.bisect_left(BUCKET_BOUNDS_MS, seconds * 1000)
    return str(BUCKET_BOUNDS_MS[index]) if index < len(BUCKET_BOUNDS_MS) else "inf"


def percentile_ms(buckets: Counter[str], share: float) -> float | None:
    """The upper bound of the bucket holding the `share` quantile (None without samples; the
    last finite bound's double for the open bucket)."""
    total = sum(buckets.values())
    if not total:
        return None
    seen = 0
    for bound in [*map(str, BUCKET_BOUNDS_MS), "inf"]:
        seen += buckets.get(bound, 0)
        if seen >= share * total:
            return float(bound) if bound != "inf" else BUCKET_BOUNDS_MS[-1] * 2.0
    return None
