"""The one error type for bad user input, with the field path, the rule and the value."""

from __future__ import annotations

import difflib
from typing import Any, Iterable


class SpecError(ValueError):
    """A spec (or a data file it names) breaks a rule.

    The message is one line: ``<field path>: <rule>, but got <value>[; <fix>]``.
    """

    def __init__(self, field: str, rule: str, value: Any, fix: str = "") -> None:
        self.field = field
        self.rule = rule
        self.value = value
        msg = f"{field}: {rule}, but got {value!r}"
        if fix:
            msg += f"; {fix}"
        super().__init__(" ".join(msg.splitlines()))  # always one line


def closest(name: str, known: Iterable[str]) -> str:
    """A 'did you mean' hint for an unknown key, or a list of the known keys."""
    known = sorted(known)
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    if match:
        return f"did you mean {match[0]!r}?"
    return "known keys: " + ", ".join(known)
