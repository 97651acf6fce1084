"""What the benchmark scripts share."""

from __future__ import annotations

import asyncio

import aiohttp


async def wait_up(url: str, attempts: int = 300, *, any_status: bool = False) -> None:
    """Until `url` answers 200, or answers at all with `any_status` (a process just started)."""
    async with aiohttp.ClientSession() as http:
        for _ in range(attempts):
            try:
                async with http.get(url) as response:
                    await response.read()
                    if any_status or response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")
