"""What the cancels of every signed package share: the package sent again compared with what
was created (property by property, as MongoDB keeps it), the conflicts in the original's
words, and the marks applied or taken back."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from service.domain.entities import EntityKind
from service.domain.jobs import JobOutcome, Link, entity_href
from service.usecases.job_types import JobContext

# Set on the package's root by a cancel: not compared with what was created.
CANCELLATION_FIELDS = ("cancellation_reason", "explanatory_letter")
# What a cancel may give otherwise than the create did: the id is the key, the rest is the
# cancellation itself.
NOT_COMPARED = {"id", *CANCELLATION_FIELDS}

# An entity of the package: its kind, where it is in the content (`observations.0`), what the
# content says of it.
Entity = tuple[EntityKind, str, dict[str, Any]]
Stored = dict[tuple[EntityKind, str], dict[str, Any]]


def conflict(message: str) -> JobOutcome:
    return JobOutcome.failed(409, "request_conflict", message)


def first_difference(entities: list[Entity], stored: Stored) -> str | None:
    """The first property the package gives otherwise than it was created, as a flat path
    (`conditions.0.code.coding.0.code`). Statuses and the cancellation are not compared, nor
    what the created package did not have (display values, a report's `origin_episode`: the
    original takes them out before comparing)."""
    for kind, where, entity in entities:
        document = stored.get((kind, entity["id"]))
        if document is None:
            return f"{where}.id"
        for name, value in entity.items():
            if name in NOT_COMPARED or name == kind.status_field or name not in document:
                continue
            if (path := differs(value, document.get(name), f"{where}.{name}")) is not None:
                return path
    return None


def content_conflict(entities: list[Entity], stored: Stored) -> JobOutcome | None:
    """The original's 409 for a package sent otherwise than it was created; None if it is not."""
    if (difference := first_difference(entities, stored)) is None:
        return None
    return conflict(
        "Submitted signed content does not correspond to previously created content: " + difference
    )


async def apply_cancel(
    context: JobContext,
    root: tuple[EntityKind, dict[str, Any]],
    marks: list[tuple[EntityKind, str]],
    stored: Stored,
) -> JobOutcome:
    """Mark `marks` entered in error (each keeping the status it had), set the cancellation
    on the package's root (`root`: its kind and what the content says of it), and link what
    was marked."""
    await context.entities.mark_entered_in_error(
        context.patient_id,
        context.job_id,
        [
            (kind, entity_id, (stored.get((kind, entity_id)) or {}).get(kind.status_field))
            for kind, entity_id in marks
        ],
    )
    kind, submitted = root
    cancellation = {name: submitted[name] for name in CANCELLATION_FIELDS if name in submitted}
    await context.entities.set_fields(
        kind, context.patient_id, submitted["id"], context.job_id, cancellation
    )
    return JobOutcome.processed(
        [
            Link(kind.entity, entity_href(context.patient_id, kind.collection, entity_id))
            for kind, entity_id in marks
        ]
    )


async def take_back_marks(context: JobContext) -> None:
    """A cancel refused (on a delivery again after a crash half-way, what held then may not
    any more): the entities it marked get their status back, its root the fields it set."""
    await context.entities.unmark(context.job_id)
    await context.entities.restore_changed_by(context.job_id)


def differs(submitted: Any, stored: Any, path: str) -> str | None:
    """The flat path (`conditions.0.code.coding.0.code`) of the first property `submitted`
    gives otherwise than `stored`; properties `stored` does not have are not compared."""
    if isinstance(submitted, dict):
        if not isinstance(stored, dict):
            return path
        for key, value in submitted.items():
            if key not in stored:
                continue  # not part of what was created: display values and the like
            if (found := differs(value, stored[key], f"{path}.{key}")) is not None:
                return found
        return None
    if isinstance(submitted, list):
        if not isinstance(stored, list) or len(stored) != len(submitted):
            return path
        for index, (one, other) in enumerate(zip(submitted, stored, strict=True)):
            if (found := differs(one, other, f"{path}.{index}")) is not None:
                return found
        return None
    if isinstance(submitted, datetime):
        return None if instant(submitted) == instant(stored) else path
    return None if submitted == stored else path


def instant(value: Any) -> Any:
    """A datetime as MongoDB keeps it: UTC, to the millisecond."""
    if not isinstance(value, datetime):
        return value
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    aware = aware.astimezone(UTC)
    return aware.replace(microsecond=aware.microsecond // 1000 * 1000)
