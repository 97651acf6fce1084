"""Reading a request's `signed_data` in a job: decoded (and verified, in `cms` mode), then
checked by the schema of its content, with the dictionaries of eHealth's registry.

The same for every signed job type. A failure ends the job as the original ends it: a 422 at
`$.signed_data` (rule `invalid`) for the signature, the schema's 422 for the content, with
paths from the content's root (`$.encounter.id`), as the original renders them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import structlog
from marshmallow import Schema, ValidationError

from schemas.rules import bounded_errors, invalid, use_dictionaries
from schemas.validation import invalid_entries, single_entry
from service.domain.jobs import JobOutcome
from service.signatures import SignatureDecoder, SignatureRejected, Signer
from service.usecases.cpu_bound import off_loop
from service.usecases.job_types import JobContext, JobFailed

log = structlog.get_logger("medevents.signatures")


async def read_signed_content(
    context: JobContext, schema: Schema
) -> tuple[dict[str, Any], dict[str, Any], Signer | None]:
    """The content as signed, the content as `schema` loaded it, and its signer (None in
    `decode` mode); `JobFailed` with the 422 otherwise. Decoding, verifying and checking run
    off the event loop (`cpu_bound`), within the schemas' bounds on work."""
    dictionaries = await context.registries.dictionaries()
    return await off_loop(
        _read, context.signatures, context.data["signed_data"], schema, dictionaries
    )


def _read(
    signatures: SignatureDecoder,
    signed_data: str,
    schema: Schema,
    dictionaries: Mapping[str, Collection[str]],
) -> tuple[dict[str, Any], dict[str, Any], Signer | None]:
    try:
        signed = signatures.decode(signed_data)
    except SignatureRejected as rejected:
        log.info("signature_rejected", reason=rejected.reason, mode=signatures.mode)
        entries = single_entry(["signed_data"], invalid(rejected.description))
        raise JobFailed(JobOutcome.validation_failed(entries)) from None
    with use_dictionaries(dictionaries), bounded_errors() as budget:
        try:
            loaded = schema.load(signed.content)
        except ValidationError as exc:
            outcome = JobOutcome.validation_failed(
                invalid_entries(exc.messages), incomplete=budget.skipped
            )
            raise JobFailed(outcome) from None
    return signed.content, loaded, signed.signer
