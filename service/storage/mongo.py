"""The MongoDB client, and what an outage looks like to the rest of the service.

Every driver error that means "the database cannot be reached right now" leaves the storage
adapters as `StoreUnavailable`, so their callers (the HTTP error middleware, the consumer)
decide what an outage means for them without knowing the driver.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from pymongo import AsyncMongoClient
from pymongo.errors import ConnectionFailure, PyMongoError

from service.config import Settings

P = ParamSpec("P")
T = TypeVar("T")


class StoreUnavailable(Exception):
    """MongoDB could not be reached or did not answer in time."""


def open_mongo_client(settings: Settings, url: str) -> AsyncMongoClient:
    timeout = settings.mongodb_timeout_ms
    return AsyncMongoClient(
        url,
        tz_aware=True,
        appname="medevents",
        serverSelectionTimeoutMS=timeout,
        connectTimeoutMS=timeout,
        # One operation may take longer than finding a server, but never hang a request.
        socketTimeoutMS=5 * timeout,
    )


def unavailable_on_outage(
    method: Callable[P, Awaitable[T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except ConnectionFailure as exc:  # includes server selection and network timeouts
            raise StoreUnavailable(str(exc)) from exc
        except PyMongoError as exc:
            if exc.timeout:
                raise StoreUnavailable(str(exc)) from exc
            raise

    return wrapper
