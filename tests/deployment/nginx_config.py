"""Just enough of nginx's configuration syntax to check deploy/nginx.conf by its structure
rather than by regular expressions over its text: directives with their arguments (quotes
removed), blocks, comments skipped. (nginx itself checks the syntax: `nginx -t`.)"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

TOKEN = re.compile(
    r"""\s+|\#[^\n]*|"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|([{};])|((?:[^\s{};"'\\]|\\.)+)""",
    re.DOTALL,
)


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None

    def find(self, name: str, *args: str) -> list[Directive]:
        """The directives `name` directly inside this block whose arguments start with `args`."""
        return [
            child
            for child in self.block or []
            if child.name == name and child.args[: len(args)] == list(args)
        ]

    def one(self, name: str, *args: str) -> Directive:
        (found,) = self.find(name, *args)
        return found

    def walk(self) -> Iterator[Directive]:
        for child in self.block or []:
            yield child
            yield from child.walk()


def parse(text: str) -> Directive:
    """The whole file as the block of a root directive named `main`."""
    tokens: list[tuple[str, bool]] = []  # (value, quoted)
    position = 0
    while position < len(text):
        match = TOKEN.match(text, position)
        if match is None:
            raise ValueError(f"cannot read nginx.conf at {text[position : position + 20]!r}")
        position = match.end()
        double, single, punctuation, word = match.groups()
        if punctuation is not None:
            tokens.append((punctuation, False))
        elif double is not None or single is not None:
            tokens.append((double if double is not None else single, True))
        elif word is not None:
            tokens.append((word, False))
    root = Directive("main", [], [])
    stack = [root]
    words: list[str] = []
    for value, quoted in tokens:
        if quoted or value not in ("{", "}", ";"):
            words.append(value)
        elif value == ";":
            if not words:
                raise ValueError("an empty directive")
            stack[-1].block.append(Directive(words[0], words[1:]))  # type: ignore[union-attr]
            words = []
        elif value == "{":
            block = Directive(words[0], words[1:], [])
            stack[-1].block.append(block)  # type: ignore[union-attr]
            stack.append(block)
            words = []
        else:  # "}"
            if words or len(stack) == 1:
                raise ValueError("an unbalanced }")
            stack.pop()
    if words or len(stack) != 1:
        raise ValueError("an unterminated directive or block")
    return root
