"""Early stopping that works with two objectives: successive halving among size peers.

Ray's schedulers and Optuna's pruners rank one metric. Here a trial is compared, at a few
epoch milestones, only with trials whose (predicted) compressed size is no larger than its
own: if enough of them had a better validation metric at the same epoch, the trial cannot
reach the accuracy/size front at its size, and it is stopped. A small model is never
stopped for being less accurate than larger ones.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any


class ParetoHalving:
    """The decision rule, independent of Ray (tested without it).

    Milestones are ``grace, grace*eta, grace*eta^2, ...`` epochs. At a milestone, among the
    peers that reached it with ``size <= this size``, a trial whose metric ranks below the
    top ``1/eta`` is stopped, once there are at least ``min_peers`` such peers. Higher values
    of ``metric`` are better (every task metric: accuracy, r2).
    """

    def __init__(self, metric: str, grace: int = 2, eta: float = 3.0, min_peers: int = 4,
                 deferred: bool = False) -> None:
        if grace < 1 or eta <= 1 or min_peers < 1:
            raise ValueError(f"`grace >= 1, eta > 1, min_peers >= 1` must hold, but got "
                             f"grace={grace}, eta={eta}, min_peers={min_peers}")
        self.metric = metric
        self.grace, self.eta, self.min_peers = grace, eta, min_peers
        self.seen: dict[int, dict[str, tuple[float, float]]] = defaultdict(dict)  # epoch -> id -> (size, value)
        # deferred (reproducible mode): a trial's values become peers only when committed, at
        # a batch boundary, so no decision depends on which trial of a batch reported first
        self.deferred = deferred
        self.pending: dict[int, dict[str, tuple[float, float]]] = defaultdict(dict)

    def milestone(self, epoch: int) -> bool:
        if epoch < self.grace:
            return False
        k = math.log(epoch / self.grace, self.eta)
        return abs(k - round(k)) < 1e-9

    def decide(self, trial_id: str, epoch: int, size: float, value: float) -> bool:
        """Record the trial's value at ``epoch``; True when it should stop."""
        if not self.milestone(epoch) or not math.isfinite(value):
            return False
        (self.pending if self.deferred else self.seen)[epoch][trial_id] = (size, value)
        peers = [v for tid, (s, v) in self.seen[epoch].items() if tid != trial_id and s <= size]
        if len(peers) < self.min_peers:
            return False
        better = sum(1 for v in peers if v > value)
        keep = max(1, math.floor((len(peers) + 1) / self.eta))
        return better >= keep

    def commit(self, trial_ids: list[str]) -> None:
        """Deferred mode: the recorded values of ``trial_ids`` become peers of later trials."""
        for epoch, here in self.pending.items():
            for tid in trial_ids:
                if tid in here:
                    self.seen[epoch][tid] = here.pop(tid)


def rule_for(spec: Any, kind: str) -> ParetoHalving:
    """The rule of ``spec.search.early_stop`` on a ``kind`` task's validation metric."""
    from slimtune.spaces import TASK_METRIC

    es = spec.search.early_stop
    return ParetoHalving(TASK_METRIC[kind], es.grace_epochs, es.eta, es.min_peers, deferred=spec.search.reproducible)


def ray_scheduler(rule: ParetoHalving, size_key: str = "predicted_size_bytes"):
    """A Ray Tune scheduler applying ``rule`` to per-epoch reports (``epoch``, ``val_<metric>``)."""
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class ParetoHalvingScheduler(FIFOScheduler):
        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            value = result.get(f"val_{rule.metric}")
            if result.get("phase") != "train" or value is None:
                return TrialScheduler.CONTINUE
            if int(result["epoch"]) >= int(trial.config.get("epochs", 0)):
                return TrialScheduler.CONTINUE  # training is done: stopping now saves nothing
            size = float(trial.config.get(size_key) or 0.0)
            if rule.decide(trial.trial_id, int(result["epoch"]), size, float(value)):
                return TrialScheduler.STOP
            return TrialScheduler.CONTINUE

    return ParetoHalvingScheduler()
