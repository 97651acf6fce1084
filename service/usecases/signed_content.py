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

from schemas.rules import bounded_errors, compiled_load, invalid, use_dictionaries
from schemas.validation import invalid_entries, single_entry
from service.domain.jobs import JobOutcome
from service.signatures import SignatureDecoder, SignatureRejected, SignedContent, Signer
from service.usecases.cpu_bound import off_loop
from service.usecases.job_types import JobContext, JobFailed

log = structlog.get_logger("medevents.signatures")

# `signed_data` up to this many characters (the example package's is 12,000) is decoded and,
# when valid, checked on the event loop: by the schemas' compiled loads, about 0.3 ms for the
# example package, where a hop to a thread costs about as much. Larger content, and content
# the compiled load does not take (marshmallow then finds what is wrong, at 20 times the
# cost), are read in the pool of `cpu_bound`.
INLINE_SIGNED_CHARS = 16 * 1024


async def read_signed_content(
    context: JobContext, schema: Schema
) -> tuple[dict[str, Any], dict[str, Any], Signer | None]:
    """The content as signed, the content as `schema` loaded it, and its signer (None in
    `decode` mode); `JobFailed` with the 422 otherwise. Decoding, verifying and checking run
    off the event loop (`cpu_bound`), within the schemas' bounds on work, unless the content
    is small and valid."""
    dictionaries = await context.registries.dictionaries()
    signed_data = context.data["signed_data"]
    if len(signed_data) > INLINE_SIGNED_CHARS:
        return await off_loop(_read, context.signatures, signed_data, schema, dictionaries)
    signed = _decoded(context.signatures, signed_data)
    with use_dictionaries(dictionaries):
        taken, loaded = compiled_load(schema, signed.content)
    if taken:
        return signed.content, loaded, signed.signer
    return await off_loop(_checked, signed, schema, dictionaries)


def _read(
    signatures: SignatureDecoder,
    signed_data: str,
    schema: Schema,
    dictionaries: Mapping[str, Collection[str]],
) -> tuple[dict[str, Any], dict[str, Any], Signer | None]:
    return _checked(_decoded(signatures, signed_data), schema, dictionaries)


def _decoded(signatures: SignatureDecoder, signed_data: str) -> SignedContent:
    try:
        return signatures.decode(signed_data)
    except SignatureRejected as rejected:
        log.info("signature_rejected", reason=rejected.reason, mode=signatures.mode)
        entries = single_entry(["signed_data"], invalid(rejected.description))
        raise JobFailed(JobOutcome.validation_failed(entries)) from None


def _checked(
    signed: SignedContent, schema: Schema, dictionaries: Mapping[str, Collection[str]]
) -> tuple[dict[str, Any], dict[str, Any], Signer | None]:
    with use_dictionaries(dictionaries), bounded_errors() as budget:
        try:
            loaded = schema.load(signed.content)
        except ValidationError as exc:
            outcome = JobOutcome.validation_failed(
                invalid_entries(exc.messages), incomplete=budget.skipped
            )
            raise JobFailed(outcome) from None
    return signed.content, loaded, signed.signer
