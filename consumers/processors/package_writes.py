"""Writing a signed package, for every package job type: each document with the job's id (a
delivery again after a crash finds its own and goes on), nothing MongoDB would refuse (a 422,
never an insert that fails as a 500), and ids another job wrote reported as the original's
422s, all at once; and the undo that leaves nothing of a package not stored whole."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import bson
from bson.errors import InvalidDocument
from bson.raw_bson import RawBSONDocument

from schemas.rules import invalid
from schemas.validation import invalid_entry
from service.domain.entities import EntityKind
from service.domain.jobs import JobOutcome
from service.usecases.job_types import JobContext, JobFailed, Undo

# A package's documents by kind, its root first (written first: two packages of one root
# conflict there, before either wrote anything else).
Written = list[tuple[EntityKind, list[dict[str, Any]]]]
# Where the `index`-th document of a kind is in the client's content (`["observations", 0]`).
PathOf = Callable[[EntityKind, int], list[str | int]]


async def write_package(
    context: JobContext,
    written: Written,
    path_of: PathOf,
    *,
    such_id: Collection[EntityKind] = (),
) -> None:
    """Insert `written`; `JobFailed` with the 422 when a document cannot be stored or an id is
    another job's ("<Kind> with id '<id>' already exists", or "<Kind> with such id already
    exists" for the kinds of `such_id`, in the original's words). When the root is taken,
    nothing else is tried; what was written is removed by the job type's undo."""
    unstorable, encoded = _encoded(written, path_of)
    if unstorable:
        raise JobFailed(JobOutcome.validation_failed(unstorable))
    taken: list[dict[str, Any]] = []
    for position, ((kind, documents), raw) in enumerate(zip(written, encoded, strict=True)):
        ids = [document["_id"] for document in documents]
        for entity_id in await context.entities.insert(kind, raw, context.job_id):
            said = (
                f"{kind.title} with such id already exists"
                if kind in such_id
                else f"{kind.title} with id '{entity_id}' already exists"
            )
            path = [*path_of(kind, ids.index(entity_id)), "id"]
            taken.append(invalid_entry(path, invalid(said)))
        if taken and position == 0:
            break  # another package's root: nothing of this one is written
    if taken:
        raise JobFailed(JobOutcome.validation_failed(taken))


def _encoded(
    written: Written, path_of: PathOf
) -> tuple[list[dict[str, Any]], list[list[RawBSONDocument]]]:
    """Each document as BSON, and an entry for each one MongoDB would refuse, whatever the
    schema let through (a key with a NUL in the items of a diagnostic report's category after
    the first, which the original's schema does not check). The driver sends the BSON as it
    is: each document is encoded once (about 7 us per observation)."""
    unstorable: list[dict[str, Any]] = []
    encoded: list[list[RawBSONDocument]] = []
    for kind, documents in written:
        raw: list[RawBSONDocument] = []
        for index, document in enumerate(documents):
            try:
                raw.append(RawBSONDocument(bson.encode(document)))
            except (InvalidDocument, OverflowError, ValueError) as exc:
                entry = invalid_entry(path_of(kind, index), invalid(f"cannot be stored: {exc}"))
                unstorable.append(entry)
        encoded.append(raw)
    return unstorable, encoded


def leave_nothing_of(root: EntityKind) -> Undo:
    """The undo of a package whose root is `root`: a package refused, or found half-written by
    another's ids, leaves nothing. The root is written first, so without it this job wrote
    nothing (one query)."""

    async def leave_nothing(context: JobContext) -> None:
        if await context.entities.wrote_any(root, context.job_id):
            await context.entities.remove_written_by(context.job_id)

    return leave_nothing
