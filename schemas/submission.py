"""The body of a submission message on RabbitMQ:

    {"type": "encounter_package.create", "patient_id": "<uuid>",
     "requested_by": {"client_id", "user_id", "scope"}, "data": {...}, "params"?: {...}}

`data` (the request's body) and `params` (its path parameters, `{"episode_id": "<uuid>"}`)
are checked by the schema of the job type (`service.usecases.job_types`), with its errors
under `$.data`.
"""

from __future__ import annotations

from schemas.rules import JsonObject, Nested, StrictSchema, String, UUIDString

# The largest body a consumer parses; larger ones fail with 422 without being parsed. Far
# above what the HTTP API lets through (MAX_REQUEST_BYTES, 3 MiB at most) plus the envelope
# it wraps a body in, so that an accepted HTTP submission is never refused here.
MAX_BODY_BYTES = 4 * 1024 * 1024

# The longest identity a submission carries, in characters. `scope` is the caller's scopes,
# sorted and joined by single spaces (`Principal.scope_text`). The HTTP API refuses a token or
# gateway identity past these (`service.api.auth`), so that an accepted request never fails
# here: change them here only, and both follow.
MAX_CLIENT_ID_LENGTH = 255
MAX_USER_ID_LENGTH = 255
MAX_SCOPE_LENGTH = 4000


class RequestedBySchema(StrictSchema):
    client_id = String(required=True, max_length=MAX_CLIENT_ID_LENGTH)
    user_id = String(required=True, max_length=MAX_USER_ID_LENGTH)
    scope = String(required=True, min_length=0, max_length=MAX_SCOPE_LENGTH)


class SubmissionSchema(StrictSchema):
    type = String(required=True, max_length=100)
    patient_id = UUIDString(required=True)
    requested_by = Nested(RequestedBySchema, required=True)
    data = JsonObject(required=True)
    # The request's path parameters besides the patient (`{"episode_id": ...}`), checked by
    # the job type's own schema.
    params = JsonObject()


SUBMISSION = SubmissionSchema()
