"""What every test may use: the log set-up, tokens, job documents. Nothing here starts a
server; the fixtures of the broker and MongoDB are in `tests/integration/conftest.py`."""

from __future__ import annotations

import io
import json
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from service.api.auth import mint_token
from service.cli.demo import DEMO_CLIENT
from service.domain.jobs import NewJob, new_job_id
from service.observability.logs import configure_logging

TEST_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
# The demo MIS: its legal entity owns the doctor, division and episode the examples name.
CLIENT_ID = DEMO_CLIENT
OTHER_CLIENT_ID = "mis-client-2"


def _logging_defaults() -> None:
    configure_logging("console", "info")


@pytest.fixture(scope="session", autouse=True)
def _logging() -> None:
    _logging_defaults()


class CapturedLogs:
    def __init__(self) -> None:
        self.stream = io.StringIO()

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines() if line.strip()]

    def events(self, name: str) -> list[dict]:
        return [line for line in self.lines() if line.get("event") == name]


@pytest.fixture
def captured_logs() -> Iterator[CapturedLogs]:
    """The service's log output while the test runs, as JSON lines."""
    logs = CapturedLogs()
    configure_logging("json", "debug", logs.stream)
    yield logs
    _logging_defaults()


def bearer(client_id: str = CLIENT_ID, scopes: tuple[str, ...] = ("job:read",), **claims) -> dict:
    token = mint_token(TEST_SECRET, client_id, list(scopes), claims.pop("user_id", "user-1"), 3600)
    return {"Authorization": f"Bearer {token}"}


def new_job(client_id: str = CLIENT_ID, **overrides) -> NewJob:
    values = {
        "job_id": new_job_id(),
        "type": "encounter_package.create",
        "hash": uuid.uuid4().hex,
        "client_id": client_id,
        "user_id": "user-1",
        "request_id": "req-test",
        "eta": datetime.now(UTC) + timedelta(seconds=30),
    }
    values.update(overrides)
    return NewJob(**values)


def pytest_terminal_summary(terminalreporter) -> None:
    """How many packages the property-based test generated, of each kind of mutation."""
    module = sys.modules.get("tests.unit.test_package_content_properties")
    cases = getattr(module, "CASES", None)
    if cases:
        terminalreporter.write_sep("-", "generated package contents, by what each broke")
        terminalreporter.write_line(
            ", ".join(f"{kind}: {count}" for kind, count in sorted(cases.items()))
            + f" (total {sum(cases.values())})"
        )
