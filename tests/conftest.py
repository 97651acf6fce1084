"""What every test may use: the log set-up, tokens, job documents. Nothing here starts a
server; the fixtures of the broker and MongoDB are in `tests/integration/conftest.py`."""

from __future__ import annotations

import fnmatch
import io
import json
import os
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from service.api.auth import mint_token
from service.cli.demo import DEMO_CLIENT
from service.domain.jobs import NewJob, new_job_id
from service.observability.logs import configure_logging
from service.storage.embedded import EmbeddedMongo

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


# A skipped test is a test that did not run: CI would count it as a pass. Any skip fails the
# run, unless this variable names it: comma-separated node ids or patterns (`fnmatch`), e.g.
# `tests/deployment/test_deployment.py::*` on a machine without docker-compose, or `*`.
ALLOWED_SKIPS_VARIABLE = "MEDEVENTS_ALLOWED_SKIPS"
_skipped: list[tuple[str, str]] = []


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else longrepr
    return str(reason).removeprefix("Skipped: ")


def pytest_runtest_logreport(report) -> None:
    """Remember each skipped test (an expected failure, `xfail`, is not a skip)."""
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append((report.nodeid, _skip_reason(report)))


def pytest_collectreport(report) -> None:
    """Remember each module skipped whole (`pytest.skip(allow_module_level=True)`,
    `pytest.importorskip`)."""
    if report.skipped:
        _skipped.append((report.nodeid, _skip_reason(report)))


def unexpected_skips() -> list[tuple[str, str]]:
    """The skips of this run that `MEDEVENTS_ALLOWED_SKIPS` does not allow."""
    allowed = [
        pattern.strip()
        for pattern in os.environ.get(ALLOWED_SKIPS_VARIABLE, "").split(",")
        if pattern.strip()
    ]
    return [
        (nodeid, reason)
        for nodeid, reason in _skipped
        if not any(fnmatch.fnmatchcase(nodeid, pattern) for pattern in allowed)
    ]


def pytest_sessionfinish(session, exitstatus) -> None:
    """A run that passed but skipped a test it was not told it may skip fails (exit 1)."""
    if exitstatus == pytest.ExitCode.OK and unexpected_skips():
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    """Unexpected skips, which fail the run; then how many packages the property-based test
    generated, of each kind of mutation."""
    skips = unexpected_skips()
    if skips:
        terminalreporter.write_sep("=", "unexpected skips: the run fails", red=True, bold=True)
        for nodeid, reason in skips:
            terminalreporter.write_line(f"SKIPPED {nodeid}: {reason}")
        terminalreporter.write_line(
            f"A skipped test did not run. Install what it needs, or allow the skip by name: "
            f"{ALLOWED_SKIPS_VARIABLE}='<node id or pattern>,...' (`*` allows every skip)."
        )
    module = sys.modules.get("tests.unit.test_package_content_properties")
    cases = getattr(module, "CASES", None)
    if cases:
        terminalreporter.write_sep("-", "generated package contents, by what each broke")
        terminalreporter.write_line(
            ", ".join(f"{kind}: {count}" for kind, count in sorted(cases.items()))
            + f" (total {sum(cases.values())})"
        )


@pytest.fixture(scope="session")
def mongodb_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The MongoDB server of the suite: the one MONGODB_URL names, or an embedded one on
    loopback (the image's containers, on the host's network, reach it there too)."""
    configured = os.environ.get("MONGODB_URL")
    if configured:
        yield configured
        return
    with EmbeddedMongo(tmp_path_factory.mktemp("embedded-mongo")) as url:
        yield url
