"""What `medevents <command> --help` says of the environment: the variables of
`service.config.ENVIRONMENT` that the command uses, each with its default and meaning."""

from __future__ import annotations

import textwrap
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from service.config import ENVIRONMENT, Variable

WIDTH = 78  # as argparse wraps its own text on an 80-column terminal
INDENT = "      "


def shown_default(variable: Variable) -> str:
    """The variable's default as `--help` prints it: `unset`, `empty`, a number as written
    in the environment, a list comma separated; a password in a URL as `***`, and a
    secret's default never."""
    value = variable.default
    if value is None:
        return "unset"
    if variable.secret:
        return "(secret, not shown)"
    return _text(value)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(_text(item) for item in value) or "empty"
    if isinstance(value, Path):
        return str(value)
    text = str(value)
    return _without_password(text) if text else "empty"


def _without_password(text: str) -> str:
    parts = urlsplit(text)
    if not parts.scheme or parts.password is None:
        return text
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def variables_of(command: str) -> list[Variable]:
    """The variables `command` uses, in the table's order."""
    return [variable for variable in ENVIRONMENT if command in variable.commands]


def environment_epilog(command: str) -> str:
    """The `--help` epilog of `command`: its variables, each its name and default on one line
    and its meaning, wrapped, below."""
    lines = ["environment variables it reads (docs/configuration.md has every one):"]
    for variable in variables_of(command):
        lines.append(f"  {variable.name} (default: {shown_default(variable)})")
        lines.extend(
            textwrap.wrap(variable.meaning, WIDTH, initial_indent=INDENT, subsequent_indent=INDENT)
        )
    return "\n".join(lines)
