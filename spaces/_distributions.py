"""Typed, frozen search-space values, validated once where they enter.

A spec field is either a fixed value or a one-key mapping naming a distribution::

    lr: {log_uniform: [1.0e-4, 1.0e-1]}
    depth: {int: [1, 4]}
    width: {choice: [16, 32, 64]}
    sparsity: {uniform: [0.0, 0.95]}
    epochs: 10
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Union

from slimtune.spaces._errors import SpecError

Scalar = Union[bool, int, float, str]


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float

    def values_ok(self, ok: Callable[[Any], bool]) -> bool:
        return ok(self.low) and ok(self.high)


@dataclass(frozen=True)
class LogUniform:
    low: float
    high: float

    def values_ok(self, ok: Callable[[Any], bool]) -> bool:
        return ok(self.low) and ok(self.high)


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    log: bool = False

    def values_ok(self, ok: Callable[[Any], bool]) -> bool:
        return ok(self.low) and ok(self.high)


@dataclass(frozen=True)
class Choice:
    values: tuple[Scalar, ...]

    def values_ok(self, ok: Callable[[Any], bool]) -> bool:
        return all(ok(v) for v in self.values)


@dataclass(frozen=True)
class Fixed:
    value: Scalar

    def values_ok(self, ok: Callable[[Any], bool]) -> bool:
        return ok(self.value)


Param = Union[Uniform, LogUniform, IntRange, Choice, Fixed]
KINDS = ("uniform", "log_uniform", "int", "int_log", "choice")
#: How each distribution is written in a spec, and what it draws (the generated spec reference shows it).
KIND_DOCS: dict[str, str] = {
    "uniform": "{uniform: [low, high]}: a float drawn evenly from low..high",
    "log_uniform": "{log_uniform: [low, high]}: a float drawn evenly on a log scale (0 < low)",
    "int": "{int: [low, high]}: an integer in low..high, both included",
    "int_log": "{int_log: [low, high]}: an integer drawn on a log scale (1 <= low)",
    "choice": "{choice: [a, b, ...]}: one of the listed numbers, strings or booleans",
}


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _pair(field: str, kind: str, raw: Any) -> tuple[Any, Any]:
    if not isinstance(raw, (list, tuple)) or len(raw) != 2:
        raise SpecError(field, f"`{kind}` takes a list [low, high]", raw)
    low, high = raw
    if not (_is_number(low) and _is_number(high)):
        raise SpecError(field, f"`{kind}` bounds must be finite numbers", raw)
    if low > high:
        raise SpecError(field, "`low <= high` must hold", {"low": low, "high": high})
    return low, high


def parse_param(field: str, raw: Any) -> Param:
    """Turn one spec value into a :data:`Param`; raise :class:`SpecError` when it is malformed."""
    if isinstance(raw, dict):
        if len(raw) != 1:
            raise SpecError(
                field, f"a distribution is a mapping with exactly one of {', '.join(KINDS)}", raw
            )
        (kind, arg), = raw.items()
        if kind == "uniform":
            return Uniform(*(float(v) for v in _pair(field, kind, arg)))
        if kind == "log_uniform":
            low, high = _pair(field, kind, arg)
            if low <= 0:
                raise SpecError(field, "`log_uniform` needs 0 < low", low, "use uniform for ranges touching 0")
            return LogUniform(float(low), float(high))
        if kind in ("int", "int_log"):
            low, high = _pair(field, kind, arg)
            if int(low) != low or int(high) != high:
                raise SpecError(field, f"`{kind}` bounds must be integers", arg)
            if kind == "int_log" and low <= 0:
                raise SpecError(field, "`int_log` needs 1 <= low", low)
            return IntRange(int(low), int(high), log=(kind == "int_log"))
        if kind == "choice":
            if not isinstance(arg, (list, tuple)) or len(arg) == 0:
                raise SpecError(field, "`choice` takes a non-empty list", arg)
            for v in arg:
                if not isinstance(v, (bool, int, float, str)) or v is None:
                    raise SpecError(field, "`choice` values must be numbers, strings or booleans", v)
            if len(set(map(repr, arg))) != len(arg):
                raise SpecError(field, "`choice` values must be distinct", arg)
            return Choice(tuple(arg))
        from slimtune.spaces._errors import closest

        raise SpecError(field, f"unknown distribution {kind!r} ({closest(kind, KINDS)})", raw)
    if isinstance(raw, (bool, int, float, str)):
        if isinstance(raw, float) and not math.isfinite(raw):
            raise SpecError(field, "a fixed value must be finite", raw)
        return Fixed(raw)
    raise SpecError(field, "must be a number, string, boolean or a {distribution: ...} mapping", raw)


def check_values(field: str, param: Param, ok: Callable[[Any], bool], rule: str, raw: Any = None) -> Param:
    """Check every value ``param`` can take against ``ok``; raise naming ``rule`` otherwise.

    The error shows ``raw`` (the value as the user wrote it) when given, else the spec form of
    ``param`` (:func:`to_json`), never the internal object."""
    if not param.values_ok(ok):
        raise SpecError(field, rule, raw if raw is not None else to_json(param))
    return param


def to_json(param: Param) -> Any:
    """The spec form of ``param`` (inverse of :func:`parse_param`)."""
    if isinstance(param, Fixed):
        return param.value
    if isinstance(param, Uniform):
        return {"uniform": [param.low, param.high]}
    if isinstance(param, LogUniform):
        return {"log_uniform": [param.low, param.high]}
    if isinstance(param, IntRange):
        return {"int_log" if param.log else "int": [param.low, param.high]}
    return {"choice": list(param.values)}


def suggest(trial: Any, name: str, param: Param) -> Scalar:
    """Draw ``param`` from an Optuna-style ``trial`` (define-by-run). Fixed values are not suggested."""
    if isinstance(param, Fixed):
        return param.value
    if isinstance(param, Uniform):
        return trial.suggest_float(name, param.low, param.high)
    if isinstance(param, LogUniform):
        return trial.suggest_float(name, param.low, param.high, log=True)
    if isinstance(param, IntRange):
        return trial.suggest_int(name, param.low, param.high, log=param.log)
    return trial.suggest_categorical(name, list(param.values))
