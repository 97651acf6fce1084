"""The 422 builder: a marshmallow error tree becomes the `invalid` list of a failed job.

Every error is reported at once, each at a JSONPath, its rules in the original's vocabulary
(`schemas.rules`). The paths are written as the original writes them: a schema's errors with
a dot before a list index (`$.encounter.diagnoses.[0].role`, NExJsonSchema's style), a
business rule's without (`$.conditions[0].context.identifier.value`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import orjson
from marshmallow import Schema, fields
from marshmallow.schema import SCHEMA

from schemas.rules import Rule, cast_rule

ENTRY_TYPE = "json_data_property"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ValidationRuleSchema(Schema):
    rule = fields.String(required=True)
    params = fields.Raw(dump_default=list)
    description = fields.String(required=True)


class InvalidEntrySchema(Schema):
    entry_type = fields.String(dump_default=ENTRY_TYPE)
    entry = fields.String(required=True)
    rules = fields.List(fields.Nested(ValidationRuleSchema), required=True)


def json_path(parts: Sequence[str | int], *, schema_style: bool = False) -> str:
    """`$.a[0].b`, or with `schema_style` `$.a.[0].b`."""
    path = "$"
    for part in parts:
        if isinstance(part, int):
            path += f".[{part}]" if schema_style else f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            path += f".{part}"
        else:  # a key a client sent that is no identifier: bracket notation, quoted
            escaped = part.replace("\\", "\\\\").replace("'", "\\'")
            path += f"['{escaped}']"
    return path


def _as_rule(message: Any) -> Rule:
    if isinstance(message, Rule):
        return message
    # A message from marshmallow itself that has no rule of ours: keep its words.
    return Rule("invalid", str(message))


def invalid_entries(errors: Any, prefix: Sequence[str | int] | None = None) -> list[dict[str, Any]]:
    """Flatten marshmallow's `ValidationError.messages` of a schema into `invalid` entries, in
    order."""
    entries: dict[str, list[dict[str, Any]]] = {}

    def walk(node: Any, parts: list[str | int]) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                walk(child, parts if key == SCHEMA else [*parts, key])
            return
        messages = node if isinstance(node, list) else [node]
        for message in messages:
            if isinstance(message, dict | list):
                walk(message, parts)
                continue
            rules = entries.setdefault(json_path(parts, schema_style=True), [])
            rule = _as_rule(message).to_document(parts[-1] if parts else None)
            if rule not in rules:
                rules.append(rule)

    walk(errors, list(prefix or []))
    return [
        {"entry_type": ENTRY_TYPE, "entry": entry, "rules": rules}
        for entry, rules in entries.items()
    ]


def single_entry(parts: Sequence[str | int], rule: Rule) -> list[dict[str, Any]]:
    """An `invalid` list with one entry, for checks made outside a schema."""
    return [invalid_entry(parts, rule)]


def invalid_entry(parts: Sequence[str | int], *rules: Rule) -> dict[str, Any]:
    """One entry of a business rule's 422 (the original's `Core.ValidationError`)."""
    return {
        "entry_type": ENTRY_TYPE,
        "entry": json_path(parts),
        "rules": [rule.to_document(parts[-1] if parts else None) for rule in rules],
    }


def json_object(
    body: bytes, max_depth: int | None = None
) -> tuple[dict[str, Any] | None, list[dict[str, Any]] | None]:
    """The body as a JSON object, and the `invalid` entries that say why it is unusable (None
    when it is usable). A body with a key given twice in one object is read (so that its
    requester can still be known) but unusable: which value was meant cannot be told. A body
    nested deeper than `max_depth` (`MAX_JSON_DEPTH`) is unusable too."""
    max_depth = MAX_JSON_DEPTH if max_depth is None else max_depth
    try:
        value = orjson.loads(body)  # strict: no invalid UTF-8, lone surrogates or NaN
    except orjson.JSONDecodeError as exc:
        return None, single_entry([], Rule("json", f"is not valid JSON: {exc}"))
    if not isinstance(value, dict):
        return None, single_entry([], cast_rule("object", value))
    if nested_deeper_than(value, max_depth, body):
        return None, single_entry([], too_deep(max_depth))
    duplicated = duplicated_keys(body)
    if duplicated:
        return value, [
            {"entry_type": ENTRY_TYPE, "entry": json_path(path), "rules": [DUPLICATED_KEY]}
            for path in duplicated
        ]
    return value, None


DUPLICATED_KEY = Rule("unique", "the property is given more than once").to_document()

# How deeply a body may nest objects and arrays (ours): MongoDB's own limit on a document.
# No eHealth request comes near it (a package nests about 10 levels); past it a body could
# be parsed but not written again (orjson writes 254 levels at most), hashed nor stored.
MAX_JSON_DEPTH = 100


def too_deep(max_depth: int) -> Rule:
    return Rule(
        "length",
        f"objects and arrays are nested more than {max_depth} levels deep",
        {"max": max_depth},
    )


def nested_deeper_than(value: Any, limit: int, body: bytes) -> bool:
    """Whether `value` (parsed from `body`) nests objects and arrays more than `limit` levels.
    A body with no more brackets than `limit` cannot, and is not walked (counted in C, the
    usual case for a submission, whose package is one base64 string)."""
    if body.count(b"{") + body.count(b"[") <= limit:
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if type(node) is dict else node
        stack.extend((child, depth + 1) for child in children if type(child) in (dict, list))
    return False


class _Object(dict):
    duplicated: tuple[str, ...] = ()


def duplicated_keys(body: bytes) -> list[list[str | int]]:
    """The paths of keys given twice in one object. orjson keeps the last silently; the
    standard library's parser, with a hook, sees every pair (about 30 us for a package). The
    tree is walked for the paths only when the hook saw a duplicate."""
    seen_any = False

    def object_of(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal seen_any
        found = _Object(pairs)
        if len(found) != len(pairs):
            seen_any = True
            seen: set[str] = set()
            again: list[str] = []
            for key, _ in pairs:
                if key in seen:
                    again.append(key)
                else:
                    seen.add(key)
            found.duplicated = tuple(again)
        return found

    try:
        tree = json.loads(body, object_pairs_hook=object_of)
    except (ValueError, RecursionError):  # read by orjson already; too deep to check here
        return []
    if not seen_any:
        return []
    found: list[list[str | int]] = []

    def walk(node: Any, path: list[str | int]) -> None:
        if isinstance(node, _Object):
            found.extend([*path, key] for key in dict.fromkeys(node.duplicated))
            for key, child in node.items():
                walk(child, [*path, key])
        elif isinstance(node, list):
            for index, child in enumerate(node):
                walk(child, [*path, index])

    walk(tree, [])
    return found
