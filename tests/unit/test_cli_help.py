"""`medevents <command> --help` lists the environment variables the command reads, from the
one table `Settings.from_env` reads by (`service.config.ENVIRONMENT`), with their real
defaults and never a secret; one version for the package, the command and the OpenAPI
document; `medevents token --demo` holds every scope the service checks."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path

import jwt
import pytest

from consumers.processors import builtin_registry
from schemas.submission import MAX_SCOPE_LENGTH
from service import __version__
from service.api.openapi import build_openapi
from service.cli.demo import DEMO_CLIENT, DEMO_USER
from service.cli.main import build_parser, main
from service.cli.scopes import known_scopes
from service.config import ENVIRONMENT, Settings
from service.domain.entities import READABLE_KINDS

ROOT = Path(__file__).resolve().parents[2]


class RecordingEnvironment(Mapping[str, str]):
    """An empty environment that remembers every name it was asked for."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.asked.add(name)
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        self.asked.add(str(name))
        return False

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _commands() -> list[str]:
    subparsers = build_parser()._subparsers
    assert subparsers is not None
    (action,) = subparsers._group_actions
    return list(action.choices)  # type: ignore[arg-type]


def _help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def _listed(help_text: str) -> dict[str, str]:
    """The variables a help text lists: name -> the default it shows."""
    return dict(re.findall(r"^  ([A-Z][A-Z0-9_]+) \(default: (.*)\)$", help_text, re.MULTILINE))


def test_from_env_reads_exactly_the_variables_of_the_table() -> None:
    environment = RecordingEnvironment()
    Settings.from_env(environment)
    assert environment.asked == {variable.name for variable in ENVIRONMENT}


def test_the_table_names_each_setting_once() -> None:
    names = [variable.name for variable in ENVIRONMENT]
    settings = [variable.setting for variable in ENVIRONMENT]
    assert len(set(names)) == len(names)
    assert sorted(settings) == sorted(field.name for field in dataclasses.fields(Settings))


def test_a_variable_read_but_not_described_is_refused() -> None:
    from service.config import _Reader

    with pytest.raises(LookupError, match="UNDESCRIBED_VARIABLE"):
        _Reader({}).text("UNDESCRIBED_VARIABLE")


def test_every_variable_is_in_the_help_of_the_commands_that_use_it(capsys) -> None:
    commands = _commands()
    listed = {command: _listed(_help(command, capsys)) for command in commands}
    for variable in ENVIRONMENT:
        assert variable.commands, variable.name
        assert variable.commands <= set(commands), variable.name
        for command in commands:
            assert (variable.name in listed[command]) == (command in variable.commands), (
                variable.name,
                command,
            )
    assert {name for shown in listed.values() for name in shown} == {
        variable.name for variable in ENVIRONMENT
    }


def test_each_command_shows_the_real_defaults(capsys) -> None:
    """A default as shown, set as the variable, gives the setting's default; `unset` is a
    default of None, `empty` one of nothing."""
    defaults = Settings()
    for command in _commands():
        for name, shown in _listed(_help(command, capsys)).items():
            (variable,) = [v for v in ENVIRONMENT if v.name == name]
            default = getattr(defaults, variable.setting)
            if shown == "unset":
                assert default is None, name
            elif shown == "empty":
                assert default in ("", ()), name
            else:
                shown = shown.replace(":***@", ":guest@")  # the default broker's password
                read = Settings.from_env({name: shown, "AMQP_PREFIX": ""})
                assert getattr(read, variable.setting) == default, name
    api = _listed(_help("api", capsys))
    assert api["HTTP_PORT"] == "8080"
    assert api["MONGODB_URL"] == "unset"
    assert api["AMQP_URL"] == "amqp://guest:***@127.0.0.1:5672/"
    assert api["WEBHOOK_RETRY_SCHEDULE"] == "5,30,300,1800,7200"
    assert api["DATA_DIR"] == ".data"
    assert _listed(_help("consumer", capsys))["JOB_DEADLINE_GRACE_SECONDS"] == "300"


def test_help_never_prints_a_secret_or_a_password(monkeypatch, capsys) -> None:
    secret = "a-configured-secret-that-must-never-be-printed"
    monkeypatch.setenv("JWT_SECRET", secret)
    monkeypatch.setenv("AMQP_URL", "amqp://user:broker-password@rabbit:5672/")
    for command in _commands():
        text = _help(command, capsys)
        assert secret not in text and "broker-password" not in text
        assert "guest:guest" not in text


def test_one_version_for_the_package_the_command_and_the_openapi_document(capsys) -> None:
    installed = importlib.metadata.version("medevents")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"medevents {installed}\n"
    assert build_openapi(builtin_registry())["info"]["version"] == installed
    assert __version__ == installed == declared


def test_publish_help_documents_its_exit_codes(capsys) -> None:
    text = _help("publish", capsys)
    codes = re.findall(r"^  (\d)  ", text, re.MULTILINE)
    assert codes == ["0", "1", "2", "3", "4"]
    assert "failed_with_error" in text and "--timeout" in text


def test_the_demo_token_holds_every_scope_the_service_checks(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("JWT_SECRET", raising=False)
    monkeypatch.delenv("JWT_PUBLIC_KEY", raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    assert main(["token", "--demo"]) == 0
    token = capsys.readouterr().out.strip()
    claims = jwt.decode(token, (tmp_path / "jwt_secret").read_text(), algorithms=["HS256"])
    assert claims["client_id"] == DEMO_CLIENT and claims["sub"] == DEMO_USER
    scopes = claims["scope"].split()
    assert scopes == known_scopes(builtin_registry())
    registry = builtin_registry()
    expected = {
        "job:read",
        "jobs:admin",
        "webhook:write",
        *(registry.get(name).required_scope for name in registry.names),  # type: ignore[union-attr]
        *(f"{kind.entity}:read" for kind in READABLE_KINDS),
    }
    assert set(scopes) == expected
    assert len(claims["scope"]) <= MAX_SCOPE_LENGTH  # a submission carries it


def test_demo_and_client_id_exclude_each_other(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["token", "--demo", "--client-id", "c"])
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
