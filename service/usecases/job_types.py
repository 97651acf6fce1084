"""The processor registry: a job `type` maps to the schema of its `data` and its handler.

A new job type is one module under `consumers/processors/` that defines `JOB_TYPE`; the
registry finds it by itself.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from marshmallow import Schema

from service.domain.jobs import JobOutcome
from service.storage.entities import EntityStore, PatientStore
from service.storage.jobs import JobStore


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a handler works with: the job, the checked submission, and the stores."""

    job: dict[str, Any]
    patient_id: str
    requested_by: dict[str, str]
    data: dict[str, Any]
    jobs: JobStore
    entities: EntityStore
    patients: PatientStore

    @property
    def job_id(self) -> str:
        return self.job["_id"]


Handler = Callable[[JobContext], Awaitable[JobOutcome]]


@dataclass(frozen=True, slots=True)
class JobType:
    name: str
    schema: Schema
    handler: Handler
    # The scope the requester needs; without it the job fails with 403.
    required_scope: str
    # Whether the patient must exist (else 404) and be active (else 409) first.
    needs_active_patient: bool = True


class ProcessorRegistry:
    def __init__(self, job_types: Iterable[JobType]) -> None:
        self._types: dict[str, JobType] = {}
        for job_type in job_types:
            if job_type.name in self._types:
                raise ValueError(f"job type {job_type.name!r} is registered twice")
            self._types[job_type.name] = job_type

    def get(self, name: str) -> JobType | None:
        return self._types.get(name)

    @property
    def names(self) -> list[str]:
        return sorted(self._types)

    def with_types(self, *job_types: JobType) -> ProcessorRegistry:
        return ProcessorRegistry([*self._types.values(), *job_types])


def builtin_registry() -> ProcessorRegistry:
    """Every `JOB_TYPE` defined by a module of `consumers.processors`."""
    from consumers import processors

    job_types = []
    for module_info in pkgutil.iter_modules(processors.__path__):
        module = importlib.import_module(f"{processors.__name__}.{module_info.name}")
        job_type = getattr(module, "JOB_TYPE", None)
        if isinstance(job_type, JobType):
            job_types.append(job_type)
    return ProcessorRegistry(job_types)
