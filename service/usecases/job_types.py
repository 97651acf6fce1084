"""What a job type is: the contract every module of `consumers/processors/` fulfils.

A job type declares everything about itself in one `JobType`: its name (the `type` of a
submission, and its routing key), the schema of its `data`, its handler, the scope its
requester needs, and, when it can be submitted over HTTP, the method and path of that
submission. The consumer processes it by its name; the HTTP API routes its submissions and
documents them in OpenAPI from the same declaration.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from marshmallow import Schema

from service.domain.entities import EntityKind
from service.domain.jobs import JobOutcome
from service.signatures import SignatureDecoder
from service.storage.entities import EntityStore
from service.storage.jobs import JobStore
from service.storage.patients import PatientStore
from service.storage.registries import RegistryStore


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a handler works with: the job, the checked submission, the stores, and how
    `signed_data` is read."""

    job: dict[str, Any]
    patient_id: str
    requested_by: dict[str, str]
    data: dict[str, Any]
    jobs: JobStore
    entities: EntityStore
    patients: PatientStore
    registries: RegistryStore
    signatures: SignatureDecoder
    # The submission's path parameters besides the patient (`{"episode_id": ...}`), checked.
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def job_id(self) -> str:
        return self.job["_id"]

    @property
    def client_id(self) -> str:
        """The submitting client: in eHealth, the MIS's legal entity."""
        return self.requested_by["client_id"]


class JobFailed(Exception):
    """Raised by a handler's checks: the job ends with `outcome` (a 4xx)."""

    def __init__(self, outcome: JobOutcome) -> None:
        super().__init__(outcome.status_code)
        self.outcome = outcome


Handler = Callable[[JobContext], Awaitable[JobOutcome]]
Undo = Callable[[JobContext], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class HttpSubmission:
    """How a job type is submitted over HTTP: the request body is the submission's `data`,
    the path names the patient (`{patient_id}`), the answer is 202 with the pending job."""

    method: str
    path: str
    # What the operation does, for the OpenAPI document ("Submit an encounter package").
    summary: str
    # The entity a path parameter names, which must exist for the patient (else 404 at once,
    # as the original checks an episode before an update): `("episode_id", EPISODE)`.
    names: tuple[str, EntityKind] | None = None

    METHODS = ("POST", "PUT", "PATCH")
    PATH_PREFIX = "/api/patients/{patient_id}/"

    def __post_init__(self) -> None:
        if self.method.upper() not in self.METHODS:
            raise ValueError(f"a submission is one of {', '.join(self.METHODS)}: {self.method}")
        if not self.path.startswith(self.PATH_PREFIX):
            raise ValueError(f"a submission's path starts with {self.PATH_PREFIX}: {self.path}")


@dataclass(frozen=True, slots=True)
class JobType:
    name: str
    schema: Schema
    handler: Handler
    # The scope the requester needs: over HTTP a 403 at once, over AMQP a job failed 403.
    required_scope: str
    # Whether the patient must exist (else 404) and be active (else 409) first.
    needs_active_patient: bool = True
    # None: submitted over AMQP only.
    http: HttpSubmission | None = None
    # The schema of the path parameters besides the patient (`{episode_id}`), which a message
    # carries as `params`; None: there are none.
    params: Schema | None = None
    # What the request's `signed_data` carries, when it has one: documented in OpenAPI beside
    # the request; the handler checks it once the signature is read.
    signed_content: Schema | None = None
    # Undoes what a job of this type wrote when it ends otherwise than processed: a message
    # delivered again after a crash half-way, and refused now (a certificate expired since,
    # a patient deactivated), leaves nothing half-done. Cheap when nothing was written.
    undo: Undo | None = None


class JobTypeRegistry:
    def __init__(self, job_types: Iterable[JobType]) -> None:
        self._types: dict[str, JobType] = {}
        routes: set[tuple[str, str]] = set()
        for job_type in job_types:
            if job_type.name in self._types:
                raise ValueError(f"job type {job_type.name!r} is registered twice")
            if job_type.http is not None:
                route = (job_type.http.method.upper(), job_type.http.path)
                if route in routes:
                    raise ValueError(f"{route[0]} {route[1]} is declared by two job types")
                routes.add(route)
            self._types[job_type.name] = job_type

    def get(self, name: str) -> JobType | None:
        return self._types.get(name)

    @property
    def names(self) -> list[str]:
        return sorted(self._types)

    @property
    def submitted_over_http(self) -> list[JobType]:
        """The job types with an HTTP submission, in the order they were registered."""
        return [job_type for job_type in self._types.values() if job_type.http is not None]

    def with_types(self, *job_types: JobType) -> JobTypeRegistry:
        return JobTypeRegistry([*self._types.values(), *job_types])
