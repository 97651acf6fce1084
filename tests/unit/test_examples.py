"""`examples/`: each submission is what its readable content makes (`examples/build.py`), in
the original's request shape."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import orjson
import pytest

from consumers.processors import builtin_registry
from schemas.submission import SUBMISSION
from service.signatures import decode_unsigned

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _build_module():
    spec = importlib.util.spec_from_file_location("build_examples", EXAMPLES / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_built_from_its_content() -> None:
    assert _build_module().main(["--check"]) == 0


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.stem)
def test_every_example_is_a_request_of_its_job_type(path: Path) -> None:
    submission = SUBMISSION.load(orjson.loads(path.read_bytes()))
    job_type = builtin_registry().get(submission["type"])
    job_type.schema.load(submission["data"])
    if job_type.params is not None:
        job_type.params.load(submission["params"])


@pytest.mark.parametrize("name", sorted(_build_module().EXAMPLES))
def test_every_package_example_carries_its_content(name: str) -> None:
    submission = orjson.loads((EXAMPLES / f"{name}.json").read_bytes())
    content_name = _build_module().EXAMPLES[name][3]
    content = orjson.loads((EXAMPLES / "content" / f"{content_name}.json").read_bytes())
    assert decode_unsigned(submission["data"]["signed_data"]) == content
