"""`examples/`: each submission is what its readable content makes (`examples/build.py`), in
the original's request shape."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import orjson
import pytest

from schemas.encounter_package import PackageCancelRequestSchema, PackageCreateRequestSchema
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
def test_every_example_is_an_original_request(path: Path) -> None:
    submission = SUBMISSION.load(orjson.loads(path.read_bytes()))
    request = (
        PackageCreateRequestSchema()
        if submission["type"] == "encounter_package.create"
        else PackageCancelRequestSchema()
    )
    assert set(request.load(submission["data"])) <= {"visit", "signed_data"}
    content_name = _build_module().EXAMPLES[path.stem][3]
    content = orjson.loads((EXAMPLES / "content" / f"{content_name}.json").read_bytes())
    assert decode_unsigned(submission["data"]["signed_data"]) == content
