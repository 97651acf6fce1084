"""The import rules of `make lint` (pyproject.toml's `[tool.importlinter]`) hold on the code, and
break on a module cycle made by lazy imports and on an import a layer may not make: each checked
on a copy of the packages, with `lint-imports` as `make lint` runs it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The three root packages and pyproject.toml, copied: a change here touches no real file."""
    for package in ("service", "consumers", "schemas"):
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def lint_imports(tree: Path) -> tuple[int, str]:
    done = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=tree, capture_output=True, text=True, timeout=60
    )
    return done.returncode, done.stdout


def add_lazy_import(module: Path, statement: str) -> None:
    with module.open("a") as file:
        file.write(f"\n\ndef _lazy() -> None:\n    {statement}  # noqa: F401\n")


def test_the_code_keeps_every_rule(tree: Path) -> None:
    status, output = lint_imports(tree)
    assert status == 0, output
    assert "0 broken" in output
    assert "Signatures are verified without a database, a broker or HTTP KEPT" in output


def test_a_cycle_of_lazy_imports_breaks_the_build(tree: Path) -> None:
    add_lazy_import(tree / "service/domain/eta.py", "from service.domain import outcome_counts")
    add_lazy_import(tree / "service/domain/outcome_counts.py", "from service.domain import eta")
    status, output = lint_imports(tree)
    assert status == 1
    assert "No cycles are allowed in service.domain." in output


def test_a_use_case_importing_the_http_api_breaks_the_build(tree: Path) -> None:
    add_lazy_import(
        tree / "service/usecases/jobs.py", "from service.api.responses import json_response"
    )
    status, output = lint_imports(tree)
    assert status == 1
    assert "service.usecases is not allowed to import service.api" in output
    assert "service.usecases is not allowed to import aiohttp" in output
    assert "consumers is not allowed to import aiohttp" in output


def test_signatures_importing_storage_breaks_the_build(tree: Path) -> None:
    """`service.signatures` is an adapter beside storage and messaging: neither uses it, nor
    it them, and it never reaches a database."""
    add_lazy_import(
        tree / "service/signatures.py", "from service.storage.entities import EntityStore"
    )
    status, output = lint_imports(tree)
    assert status == 1
    assert "service.signatures is not allowed to import service.storage" in output
    assert "service.signatures is not allowed to import pymongo" in output


def test_the_domain_importing_signatures_breaks_the_build(tree: Path) -> None:
    """Signature verification is I/O-free but not pure: the domain stays below it, and never
    loads `cryptography`."""
    add_lazy_import(
        tree / "service/domain/jobs.py", "from service.signatures import decode_unsigned"
    )
    status, output = lint_imports(tree)
    assert status == 1
    assert "service.domain is not allowed to import service.signatures" in output
    assert "service.domain is not allowed to import cryptography" in output
