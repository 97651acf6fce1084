"""`Client`: the same operations as `AsyncClient`, blocking, for code without an event loop.

It runs an `AsyncClient` on an event loop of its own, in a daemon thread started with the
client and stopped by `close()` (or the end of its `with` block): one HTTP stack, aiohttp, for
both. A `Client` may be used from several threads at once. Inside async code use
`AsyncClient`: a blocking call would stall the caller's own loop.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Coroutine, Iterator, Mapping
from concurrent.futures import Future
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

from .aio import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    DEFAULT_WAIT_SECONDS,
    AsyncClient,
    JobPage,
    Token,
)
from .models import Job, JobStatus, Link

T = TypeVar("T")


class Client:
    """`with Client(url, token) as client:`; the options are `AsyncClient`'s."""

    def __init__(
        self,
        base_url: str,
        token: Token,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        **options: Any,
    ) -> None:
        self._client = AsyncClient(base_url, token, timeout=timeout, retries=retries, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="medevents-client", daemon=True
        )
        self._thread.start()
        self._closed = False
        # A client never closed is closed when it is collected (or at exit): its session, loop
        # and thread do not outlive it.
        self._finalizer = weakref.finalize(self, _shut_down, self._client, self._loop, self._thread)

    @property
    def base_url(self) -> str:
        return self._client.base_url

    @property
    def requests_sent(self) -> int:
        return self._client.requests_sent

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._finalizer()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coroutine.close()
            raise RuntimeError("the client is closed")
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # interrupted (Ctrl-C): the request does not go on alone
            raise

    def submit(self, path: str, body: Mapping[str, Any], *, request_id: str | None = None) -> Job:
        return self._run(self._client.submit(path, body, request_id=request_id))

    def submit_encounter_package(
        self, patient_id: str, visit: Mapping[str, Any], signed_data: str, **options: Any
    ) -> Job:
        return self._run(
            self._client.submit_encounter_package(patient_id, visit, signed_data, **options)
        )

    def get_job(self, job_id: str) -> Job:
        return self._run(self._client.get_job(job_id))

    def wait(self, job_id: str, timeout: float = DEFAULT_WAIT_SECONDS) -> Job:
        return self._run(self._client.wait(job_id, timeout))

    def follow(self, link: Link | str) -> dict[str, Any]:
        return self._run(self._client.follow(link))

    def cancel(self, job_id: str) -> Job:
        return self._run(self._client.cancel(job_id))

    def list_jobs_page(self, **options: Any) -> JobPage:
        return self._run(self._client.list_jobs_page(**options))

    def list_jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        type: str | None = None,
        since: datetime | str | None = None,
        limit: int | None = None,
    ) -> Iterator[Job]:
        """The caller's jobs through every page, each page fetched when reached."""
        token: str | None = None
        while True:
            page = self.list_jobs_page(
                status=status, type=type, since=since, limit=limit, page_token=token
            )
            yield from page.jobs
            token = page.next_page_token
            if not token:
                return

    def url(self, href: str) -> str:
        return self._client.url(href)


def _shut_down(
    client: AsyncClient, loop: asyncio.AbstractEventLoop, thread: threading.Thread
) -> None:
    """Close the session on its own loop, then stop the loop and its thread."""
    try:
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(client.close(), loop).result(timeout=10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        if not thread.is_alive():
            loop.close()
