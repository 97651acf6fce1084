"""What an installed package has and says: the embedded MongoDB stand-in is the `local` extra
(without it, and without `MONGODB_URL`, every command that needs MongoDB stops at once with one
line saying what to do; the image, which does not carry it, is run that way in tests/image), and
the banner of `medevents run` names the examples where they are."""

import importlib.util
from pathlib import Path

import pytest

from service.cli.main import EXAMPLES_ELSEWHERE, examples_hint, main
from service.storage import embedded

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("command", ["api", "consumer", "run"])
def test_without_the_local_extra_a_command_needs_mongodb_url(
    command, tmp_path, monkeypatch, capsys
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        embedded.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "nx_27017" else real_find_spec(name, *a),
    )
    monkeypatch.delenv("MONGODB_URL", raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SIGNATURE_MODE", "decode")
    monkeypatch.setenv("HTTP_PORT", "0")

    assert main([command]) == 2

    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"medevents: configuration error: {embedded.NOT_INSTALLED}"]
    assert "pip install 'medevents[local]'" in err[0]
    assert not (tmp_path / "mongo").exists() or not any((tmp_path / "mongo").iterdir())


def test_the_banner_names_an_example_that_exists(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    line = examples_hint()
    command, verb, example, wait = line.split()
    assert (verb, wait) == ("publish", "--wait")
    assert Path(example).is_file() and Path(example).name == "encounter_package.json"
    assert Path(command).name == "medevents" and Path(command).exists()


def test_without_a_checkout_the_banner_says_where_the_examples_are(tmp_path) -> None:
    # An installed wheel carries no examples/: the banner says where they are.
    assert examples_hint(tmp_path / "examples") == EXAMPLES_ELSEWHERE
    assert "examples/ directory of the source repository" in EXAMPLES_ELSEWHERE
