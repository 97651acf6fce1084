"""A job type of the tests' own, declared once as a module of `consumers/processors/` would
declare it: a note about a patient, submitted over HTTP, stored in `notes`."""

from __future__ import annotations

from schemas.rules import StrictSchema, String
from service.domain.jobs import JobOutcome, Link, entity_href
from service.usecases.job_types import HttpSubmission, JobContext, JobType


class NoteSchema(StrictSchema):
    text = String(required=True, max_length=100)


async def write_note(context: JobContext) -> JobOutcome:
    await context.jobs.database["notes"].insert_one(
        {"_id": context.job_id, "patient_id": context.patient_id, **context.data}
    )
    return JobOutcome.processed(
        [Link("note", entity_href(context.patient_id, "notes", context.job_id))]
    )


NOTE = JobType(
    name="note.create",
    schema=NoteSchema(),
    handler=write_note,
    required_scope="note:write",
    http=HttpSubmission("POST", "/api/patients/{patient_id}/notes", "Write a note"),
)
