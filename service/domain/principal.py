"""Who asks, and what their scope allows: the same check for a request over HTTP and for a
submission the consumer processes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self


class ScopeDenied(Exception):
    """The caller's scope lacks what the action needs; the message names what is missing, in
    the words eHealth's medical events service uses."""

    def __init__(self, missing: list[str]) -> None:
        super().__init__(
            "Your scope does not allow to access this resource. "
            f"Missing allowances: {', '.join(missing)}"
        )
        self.missing = missing


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    client_id: str
    scopes: frozenset[str]

    @classmethod
    def from_scope_text(cls, user_id: str, client_id: str, scope: str) -> Self:
        """A principal whose scopes are given as one space-separated string (`scope`)."""
        return cls(user_id, client_id, frozenset(scope.split()))

    @property
    def scope_text(self) -> str:
        """The scopes as one string, sorted and joined by single spaces: what a submission
        carries as `requested_by.scope`, and what its length limit counts."""
        return " ".join(sorted(self.scopes))

    def require(self, *scopes: str) -> None:
        """`ScopeDenied` unless every one of `scopes` is allowed."""
        missing = [scope for scope in scopes if scope not in self.scopes]
        if missing:
            raise ScopeDenied(missing)
