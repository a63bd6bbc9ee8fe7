"""More compression settings for one trained model (the ladder's rungs): train once, compress many."""

from __future__ import annotations

import warnings
from typing import Any

from slimtune import spaces

#: Rung k of a trial compresses with the trial's seed + ``k * RUNG_SEED_STRIDE`` (clear of the
#: fine-tuning and QAT offsets, search.trial's). Changing it changes rows.
RUNG_SEED_STRIDE = 1000


def ladder_configs(spec: spaces.Spec, config: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """``n`` more compression settings for the model trained with ``config``: the training
    parameters are kept, the compression parameters are drawn at random from the spec
    (seeded by the trial's seed); duplicates of the trial's own setting are dropped."""
    import optuna

    training = {name for name, _ in spec.space} | {"epochs"}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=int(config["seed"])))
    seen = {_key(config, training)}
    rungs = []
    for _ in range(4 * n):
        if len(rungs) == n:
            break
        study.enqueue_trial({k: v for k, v in config.items() if k in training})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rung = spec.sample(study.ask())
        if _key(rung, training) in seen:
            continue
        seen.add(_key(rung, training))
        rungs.append({**rung, "seed": int(config["seed"]) + RUNG_SEED_STRIDE * (len(rungs) + 1)})
    return rungs


def _key(cfg: dict[str, Any], training: set[str]) -> tuple:
    skip = training | {"seed", "trial_number"}
    return tuple(sorted((k, repr(v)) for k, v in cfg.items() if k not in skip))
