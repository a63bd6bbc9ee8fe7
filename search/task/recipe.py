"""The recipe of a trial's model: what ``compress.build_model`` needs, and nothing else.

A model hook's recipe keeps only the configuration keys the hook read while building (recorded
with a reading mapping), never the searcher's bookkeeping, so the same model has the same
artifact whatever the searcher attached to the trial.
"""

from __future__ import annotations

import random
import sys
from typing import Any

import numpy as np
import torch

from slimtune import compress, spaces
from slimtune.search.task.data import Data
from slimtune.search.task.hooks import resolve

#: What the searcher and the driver add to a trial's configuration for themselves: never a
#: parameter of the model, so never shown to a model hook nor stored in its artifact.
BOOKKEEPING = frozenset({"seed", "trial_number", "ladder_configs", "teacher", "teacher_trial",
                         "predicted_size_bytes", "budget", "parent"})


def model_recipe(model: str, spec: spaces.Spec | None, data: Data, config: dict[str, Any]) -> dict[str, Any]:
    """The recipe that builds the trial's model (``compress.build_model``), and nothing else.

    A model hook is called with the trial's parameters (the spec's, when ``spec`` is
    known; else ``config`` less :data:`BOOKKEEPING`) and ``input_shape``/``output_dim``/
    ``depth``/``width``; its recipe's ``config`` keeps only the keys it read (all it was shown,
    when it read the whole mapping or kept it), so the same model has the same artifact
    whatever the searcher attached to the trial (ladder rungs, a teacher, a promotion).
    """
    recipe: dict[str, Any] = {
        "input_shape": data.input_shape,
        "output_dim": data.n_outputs,
        "depth": int(config.get("depth", 2)),
        "width": int(config.get("width", 64)),
    }
    if model in ("mlp", "cnn"):
        recipe["arch"] = model
        return recipe
    declared = ({name for name, _ in spec.space} | set(spec.compress_columns)
                if spec is not None else None)
    shown = {k: v for k, v in config.items()
             if k not in BOOKKEEPING and (declared is None or k in declared)}
    recipe.update(arch="hook", hook=model, config={**shown, **recipe})
    recipe["config"] = _read_by_hook(recipe)
    return recipe


class _Reads(dict):
    """A model hook's configuration that records what the hook reads of it: the keys it looked
    up (``read``), or ``whole`` once it used the mapping as a whole (iterated, copied, printed)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read: set[Any] = set()
        self.whole = False

    def _key(self, key: Any) -> Any:
        self.read.add(key)
        return key

    def __getitem__(self, key: Any) -> Any:
        return super().__getitem__(self._key(key))

    def get(self, key: Any, default: Any = None) -> Any:
        return super().get(self._key(key), default)

    def __contains__(self, key: Any) -> bool:
        return super().__contains__(self._key(key))

    def pop(self, key: Any, *default: Any) -> Any:
        return super().pop(self._key(key), *default)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        return super().setdefault(self._key(key), default)


def _reading_whole(method: Any) -> Any:
    def whole(self: _Reads, *args: Any) -> Any:
        self.whole = True
        return method(self, *args)

    return whole


for _name in ("__iter__", "__reversed__", "__len__", "__repr__", "__eq__", "__ne__", "__or__", "__ror__",
              "keys", "values", "items", "copy", "popitem"):
    setattr(_Reads, _name, _reading_whole(getattr(dict, _name)))
del _name


def _read_by_hook(recipe: dict[str, Any]) -> dict[str, Any]:
    """Of the hook recipe's ``config``, the keys its hook reads while building the model (the
    whole ``config`` when the hook reads it whole or keeps it in the model). The hook is built
    once here, with every global RNG put back after, so the caller's build draws the same weights."""
    shown = recipe["config"]
    try:
        hook = resolve(recipe["hook"])
    except (ImportError, AttributeError, ValueError):
        compress.build_model(recipe)  # raises build_model's own error for a hook that does not import
        return shown
    reads = _Reads(shown)
    alone = sys.getrefcount(reads)
    py_state, np_state = random.getstate(), np.random.get_state()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda):
            model = compress.build_model(recipe, builder=lambda _: hook(reads))
            kept = sys.getrefcount(reads) > alone  # the model (or the hook) holds on to the mapping
            del model
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    if reads.whole or kept:
        return shown
    return {k: v for k, v in shown.items() if k in reads.read}
