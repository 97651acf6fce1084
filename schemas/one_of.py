"""`oneOf` rules: of a set of properties, exactly one (or at most one) must be given.

The original checks these after the JSON schema, on the whole content, with rule `oneOf`:
"At least one of the parameters must be present" at the object when none is given (and one
is required), "Only one of the parameters must be present" at each given one when several
are. `params` lists the candidate paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.validation import ENTRY_TYPE

AT_LEAST_ONE = "At least one of the parameters must be present"
ONLY_ONE = "Only one of the parameters must be present"


@dataclass(frozen=True, slots=True)
class OneOf:
    # Where the objects are: keys from the root; a list on the way is walked item by item.
    path: tuple[str, ...]
    candidates: tuple[str, ...]
    required: bool


def check_one_of(content: dict[str, Any], rules: tuple[OneOf, ...]) -> list[dict[str, Any]]:
    """The `invalid` entries of every rule broken in `content`, in the order of `rules`."""
    # A first pass without the paths and params, which only a broken rule needs: a valid
    # package (the usual one) is checked at a third of the cost.
    if not any(_broken(content, rule, 0) for rule in rules):
        return []
    entries: list[dict[str, Any]] = []
    for rule in rules:
        for where, node in _objects_at(content, rule.path, "$"):
            given = [name for name in rule.candidates if name in node]
            params = [f"{where}.{name}" for name in rule.candidates]
            if not given and rule.required:
                entries.append(_entry(where, AT_LEAST_ONE, params))
            elif len(given) > 1:
                entries.extend(_entry(f"{where}.{name}", ONLY_ONE, params) for name in given)
    return entries


def _broken(node: Any, rule: OneOf, depth: int) -> bool:
    """Whether `rule` is broken at some object under `node` (`rule.path[depth:]` from it)."""
    if isinstance(node, list):
        return any(_broken(item, rule, depth) for item in node)
    if not isinstance(node, dict):
        return False
    if depth < len(rule.path):
        head = rule.path[depth]
        return head in node and _broken(node[head], rule, depth + 1)
    given = 0
    for name in rule.candidates:
        if name in node:
            given += 1
    return given > 1 or (given == 0 and rule.required)


def _objects_at(node: Any, path: tuple[str, ...], where: str) -> list[tuple[str, dict]]:
    if isinstance(node, list):
        found = []
        for index, item in enumerate(node):
            found.extend(_objects_at(item, path, f"{where}[{index}]"))
        return found
    if not isinstance(node, dict):
        return []
    if not path:
        return [(where, node)]
    head, *rest = path
    if head not in node:
        return []
    return _objects_at(node[head], tuple(rest), f"{where}.{head}")


def _entry(path: str, description: str, params: list[str]) -> dict[str, Any]:
    return {
        "entry_type": ENTRY_TYPE,
        "entry": path,
        "rules": [{"rule": "oneOf", "params": params, "description": description}],
    }


OBSERVATION_VALUES = (
    "value_quantity",
    "value_codeable_concept",
    "value_sampled_data",
    "value_string",
    "value_boolean",
    "value_range",
    "value_ratio",
    "value_time",
    "value_date_time",
    "value_period",
)

# The original's rules for an encounter package, in the order it checks them.
PACKAGE_ONE_OF = (
    OneOf(("allergy_intolerances",), ("report_origin", "asserter"), True),
    OneOf(("conditions",), ("report_origin", "asserter"), True),
    OneOf(("devices",), ("report_origin", "asserter"), True),
    OneOf(("diagnostic_reports", "performer"), ("reference", "text"), True),
    OneOf(("diagnostic_reports", "results_interpreter"), ("reference", "text"), True),
    OneOf(("immunizations",), ("report_origin", "performer"), True),
    OneOf(("immunizations", "explanation"), ("reasons", "reasons_not_given"), False),
    OneOf(("medication_statements",), ("report_origin", "asserter"), True),
    OneOf(("observations",), ("report_origin", "performer"), True),
    OneOf(("observations",), ("effective_date_time", "effective_period"), False),
    OneOf(("observations",), OBSERVATION_VALUES, True),
    OneOf(("observations", "components"), OBSERVATION_VALUES, True),
    OneOf(("risk_assessments", "predictions"), ("probability_range", "probability_decimal"), False),
    OneOf(("risk_assessments", "predictions"), ("when_range", "when_period"), False),
)
