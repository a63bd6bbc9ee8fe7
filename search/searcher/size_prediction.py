"""Zero-cost feasibility: size and parameter counts of a configuration, before training.

The artifact of a compressed model is the same container whether its weights are trained
or freshly initialised, so building the model, compressing it untrained and writing it to
a scratch file predicts ``size_bytes``, ``params``, ``nonzero_params`` and
``compression_ratio`` in milliseconds. (Entropy coding of trained weights may differ a
little, hence the tolerance in :func:`surely_infeasible`.)
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from slimtune import compress
from slimtune.search.task.data import Data
from slimtune.search.trial import TrialSetup, compression_configs, model_recipe
from slimtune.spaces import Spec

PREDICTABLE = ("size_bytes", "params", "nonzero_params", "compression_ratio")


def predict(spec: Spec, data: Data, config: dict[str, Any]) -> dict[str, float]:
    """Predicted compressed size and parameter counts of ``config`` (no training)."""
    setup = TrialSetup(out_dir="", model=spec.task.model, kind=data.kind, spec=spec)  # the trial's recipe
    recipe = model_recipe(setup, data, config)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(int(config.get("seed", 0)))
        model = compress.build_model(recipe)
        dense = compress.dense_bytes(model, recipe)
        configs = [c for part in compression_configs(config) for c in part]
        small = compress.compress(model, *configs) if configs else model
        with tempfile.TemporaryDirectory() as d:
            size = compress.save(small, Path(d) / "m.slim", recipe=recipe)
    finally:
        torch.random.set_rng_state(state)
    params, nonzero = compress.count_params(small)
    return {"size_bytes": float(size), "params": float(params), "nonzero_params": float(nonzero),
            "compression_ratio": dense / size}


def needs_prediction(spec: Spec) -> bool:
    return any(b.metric in PREDICTABLE for b in spec.constraints)


def surely_infeasible(spec: Spec, predicted: dict[str, float], tolerance: float = 0.1) -> bool:
    """True when a predictable constraint is broken by more than ``tolerance`` (relative)."""
    for b in spec.constraints:
        if b.metric not in predicted:
            continue
        v = predicted[b.metric]
        if b.max is not None and v > b.max * (1 + tolerance):
            return True
        if b.min is not None and v < b.min * (1 - tolerance):
            return True
    return False
