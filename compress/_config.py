"""Config registry, JSON round-trip of configs, and the `compress` entry point.

A compression method is a frozen dataclass (its config) plus a function
``(model, config) -> model`` registered for that config type.  `compress`
deep-copies the model and applies the functions found by ``type(config)``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from typing import Any, Callable, TypeVar

import torch.nn as nn

__all__ = ["compress", "register", "config_to_json", "config_from_json", "applied_configs"]

Handler = Callable[[nn.Module, Any], nn.Module]
C = TypeVar("C", bound=type)

_HANDLERS: dict[type, Handler] = {}
# Only our own config types can be rebuilt from JSON (a whitelist, as in torchao).
_JSON_TYPES: dict[str, type] = {}
# Name of the attribute on which `compress` records the configs it applied.
_APPLIED_ATTR = "slimtune_configs"


def closest(word: str, known: Any) -> str:
    """A ' Did you mean ...?' hint, or '' when nothing is close."""
    match = difflib.get_close_matches(str(word), [str(k) for k in known], n=1)
    return f" Did you mean {match[0]!r}?" if match else ""


def register(config_type: C) -> Callable[[Handler], Handler]:
    """Decorator: register ``fn(model, config) -> model`` for ``config_type``.

    ``config_type`` must be a frozen dataclass.  The function may change the
    model in place; `compress` always hands it a private copy.  Config types
    defined inside the ``compress`` package are also whitelisted for
    `config_from_json`.
    """
    if not (isinstance(config_type, type) and dataclasses.is_dataclass(config_type)):
        raise TypeError(
            "`register` takes a dataclass type, e.g. `@register(MyConfig)`, "
            f"but got {config_type!r}"
        )
    if not config_type.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise TypeError(
            f"config types must be frozen dataclasses, but {config_type.__name__} is not; "
            "declare it with `@dataclass(frozen=True)`"
        )

    def decorator(fn: Handler) -> Handler:
        _HANDLERS[config_type] = fn
        if config_type.__module__.startswith("slimtune.compress."):
            _JSON_TYPES[config_type.__name__] = config_type
        return fn

    return decorator


def compress(model: nn.Module, *configs: Any) -> nn.Module:
    """Return a compressed deep copy of ``model``; ``configs`` apply in order.

    The input model is never changed.  The configs applied are recorded on the
    result (see `applied_configs`), so `save` can store them by default.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, but got {type(model).__name__}")
    out = copy.deepcopy(model)
    for config in configs:
        handler = _HANDLERS.get(type(config))
        if handler is None:
            known = ", ".join(sorted(t.__name__ for t in _HANDLERS))
            raise TypeError(
                f"no compression function is registered for {type(config).__name__} "
                f"(value {config!r}); known config types: {known}. "
                "Register one with `@compress.register(YourConfig)`."
            )
        result = handler(out, config)
        if not isinstance(result, nn.Module):
            raise TypeError(
                f"the function registered for {type(config).__name__} must return an "
                f"nn.Module, but returned {type(result).__name__}"
            )
        out = result
    previous = applied_configs(model)
    object.__setattr__(out, _APPLIED_ATTR, previous + tuple(configs))
    return out


def applied_configs(model: nn.Module) -> tuple[Any, ...]:
    """The configs `compress` has applied to ``model`` so far (oldest first)."""
    return tuple(getattr(model, _APPLIED_ATTR, ()))


def config_to_json(config: Any) -> dict[str, Any]:
    """``{"_type": name, "_version": n, "_data": {field: value}}`` for a config."""
    if type(config).__name__ not in _JSON_TYPES or not dataclasses.is_dataclass(config):
        known = ", ".join(sorted(_JSON_TYPES))
        raise TypeError(
            f"only slimtune config types can be written as JSON ({known}), "
            f"but got {type(config).__name__}"
        )
    data = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    data = {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}
    return {"_type": type(config).__name__, "_version": type(config).VERSION, "_data": data}


def config_from_json(d: dict[str, Any]) -> Any:
    """Rebuild a config written by `config_to_json` (our own types only)."""
    if not isinstance(d, dict):
        raise TypeError(f"a config JSON must be a dict, but got {type(d).__name__}")
    missing = {"_type", "_version", "_data"} - set(d)
    extra = set(d) - {"_type", "_version", "_data"}
    if missing or extra:
        raise ValueError(
            "a config JSON must have exactly the keys '_type', '_version', '_data', "
            f"but got {sorted(d)}"
        )
    name = d["_type"]
    cls = _JSON_TYPES.get(name)
    if cls is None:
        raise ValueError(
            f"unknown config type {name!r}; allowed: {sorted(_JSON_TYPES)}.{closest(name, _JSON_TYPES)}"
        )
    # An older version is read when the type says what its new fields were then (``UPGRADES``).
    upgrades = getattr(cls, "UPGRADES", {})
    if d["_version"] != cls.VERSION and d["_version"] not in upgrades:
        raise ValueError(
            f"{name} JSON has _version={d['_version']!r}, but this slimtune reads "
            f"version {cls.VERSION}{''.join(f' or {v}' for v in sorted(upgrades))}; "
            "use the slimtune release that wrote it"
        )
    data = d["_data"]
    if not isinstance(data, dict):
        raise TypeError(f"'_data' must be a dict, but got {type(data).__name__}")
    if d["_version"] != cls.VERSION:
        data = {**data, **upgrades[d["_version"]]}
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ValueError(
                f"unknown field {key!r} for {name}; known fields: {sorted(fields)}."
                f"{closest(key, fields)}"
            )
    return cls(**data)
