"""The job types: one module each, defining `JOB_TYPE` (a `service.usecases.job_types.JobType`).

A new job type is a new module here (and the schema of its `data` in `schemas/`): the registry
finds it by itself, the consumer processes it, and the HTTP API routes and documents its
submission when it declares one.
"""

from __future__ import annotations

import importlib
import pkgutil

from service.usecases.job_types import JobType, JobTypeRegistry


def builtin_registry() -> JobTypeRegistry:
    """Every `JOB_TYPE` defined by a module of this package, in the order of module names."""
    job_types = []
    for name in sorted(module.name for module in pkgutil.iter_modules(__path__)):
        job_type = getattr(importlib.import_module(f"{__name__}.{name}"), "JOB_TYPE", None)
        if isinstance(job_type, JobType):
            job_types.append(job_type)
    return JobTypeRegistry(job_types)
