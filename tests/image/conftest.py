"""The image tests' measurements (size, build times), shown at the end of the run."""

from __future__ import annotations

import pytest

_MEASURED: list[str] = []


@pytest.fixture
def measured() -> list[str]:
    """Lines the terminal summary shows under "image measurements"."""
    return _MEASURED


def pytest_terminal_summary(terminalreporter) -> None:
    if _MEASURED:
        terminalreporter.write_sep("-", "image measurements")
        for line in _MEASURED:
            terminalreporter.write_line(line)
