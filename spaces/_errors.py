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
        msg = f"{field}: {rule}, but got {yaml_form(value)}"
        if fix:
            msg += f"; {fix}"
        super().__init__(" ".join(msg.splitlines()))  # always one line


class RunError(RuntimeError):
    """A run failed for a reason that is not the user's input (a node that will not start,
    a dashboard that does not answer, an external command that fails): exit 1, one line.

    The message reads like :class:`SpecError`'s: ``<what>: <what went wrong>[; <next step>]``.
    """

    def __init__(self, what: str, problem: str, hint: str = "") -> None:
        msg = f"{what}: {problem}" + (f"; {hint}" if hint else "")
        super().__init__(" ".join(msg.split()))


def yaml_form(value: Any) -> str:
    """``value`` as the user writes it in YAML flow style: ``{uniform: [0.2, 1.0]}``, not a
    Python repr of an internal object; scalars keep their repr (strings quoted)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_form(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_form(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def closest(name: str, known: Iterable[str]) -> str:
    """A 'did you mean' hint for an unknown key, or a list of the known keys."""
    known = sorted(known)
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    if match:
        return f"did you mean {match[0]!r}?"
    return "known keys: " + ", ".join(known)
