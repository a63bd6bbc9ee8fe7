"""Hooks given as Python objects (``run_sweep(model=MyNet, train=my_loop, data=...)``): each is
known by its ``module:qualname`` name, as a spec names a hook, and resolved from this registry
before any import, in the driver and, shipped with the trial's setup, in every worker.

A model class or function defined in a script or notebook cannot be imported by name from a
Ray worker (its ``__main__`` is not the script); Ray ships the object itself (cloudpickle), and
this registry lets every place that resolves the name (building, reloading, exporting) find it.
"""

from __future__ import annotations

import importlib
import re
from typing import Any, Callable

from slimtune import compress

#: name -> (kind, object); kind is "model", "train" or "data".
PYTHON_HOOKS: dict[str, tuple[str, Any]] = {}


def name_of(obj: Any) -> str:
    """The ``module:qualname`` a Python object is known by; a nested or local name is folded into
    one identifier (``outer_Inner``), so the name reads as a spec's ``module:function``."""
    qualname = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    module = getattr(obj, "__module__", None) or type(obj).__module__ or "__main__"
    return f"{module}:{re.sub(r'[^A-Za-z0-9_]', '_', qualname.replace('<locals>.', ''))}"


class Arrays:
    """``data=(x, y)`` given to run_sweep, as a data hook returning them."""

    def __init__(self, x: Any, y: Any) -> None:
        self.x, self.y = x, y

    def __call__(self) -> tuple[Any, Any]:
        return self.x, self.y


def register(kind: str, obj: Any) -> str:
    """Know ``obj`` (a model builder or class, a training loop, a data function) by its name;
    models are registered with ``compress`` too, so building and loading need no import."""
    if not callable(obj):
        raise TypeError(f"{kind}= must be callable (a function or a class), but got {type(obj).__name__}")
    name = name_of(obj)
    install({name: (kind, obj)})
    return name


def install(hooks: dict[str, tuple[str, Any]]) -> None:
    """Put ``hooks`` (as :data:`PYTHON_HOOKS` holds them) in this process's registry."""
    for name, (kind, obj) in hooks.items():
        PYTHON_HOOKS[name] = (kind, obj)
        if kind == "model":
            compress.register_builder(name, obj)


def resolve(name: str) -> Callable[..., Any]:
    """The object a ``module:function`` hook names: a registered Python object, else imported."""
    if name in PYTHON_HOOKS:
        return PYTHON_HOOKS[name][1]
    module, _, fn = name.partition(":")
    return getattr(importlib.import_module(module), fn)
