"""The embedded MongoDB stand-in is the `local` extra: without it, and without `MONGODB_URL`,
every command that needs MongoDB stops at once with one line saying what to do. (The image,
which does not carry it, is run that way in tests/image.)"""

import importlib.util

import pytest

from service.cli.main import main
from service.storage import embedded


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
