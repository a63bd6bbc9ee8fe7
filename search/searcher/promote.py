"""Promotion (``search.promote``): successive halving over epoch budgets, with two objectives.

New configurations train ``rungs[0]`` epochs. Once ``n`` configurations have finished a rung
(ok or stopped early), the best ``floor(keep * n)`` of them are retrained from scratch at the
next rung's budget, each as a new trial of the study and a new row with ``parent`` (the trial
number it continues) and ``budget`` (its epochs). "Best" is the two-objective comparison the
results already use: nondominated rank among the feasible ok rows of that rung
(:func:`search.results.pareto.pareto_front`, peeled front by front), best first objective first
within a front. A configuration is promoted at most once from each rung, asynchronously as in
ASHA: whenever the rung's count grows, the quota grows with it, and the best of the rung's top
``quota`` not yet promoted fill it. Unlike ASHA, promotions made earlier count against the quota
even when later trials rank above them: a rung of ``n`` sends at most ``floor(keep * n)`` on.

The rule reads and writes only plain values (no Ray, no Optuna), and :meth:`Promotion.from_study`
rebuilds it from the study's user attributes, which are its whole state: a promotion is made
once its trial exists in the study (enqueued: ``WAITING`` with ``parent`` and ``budget``), so a
driver killed at any point neither loses nor repeats one.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from slimtune.search.results.pareto import pareto_front
from slimtune.spaces import Spec


class Promotion:
    """Which finished trials to retrain at the next budget."""

    def __init__(self, rungs: tuple[int, ...], keep: float, objectives: dict[str, str]) -> None:
        self.rungs, self.keep, self.objectives = tuple(rungs), float(keep), dict(objectives)
        self.finished: dict[int, dict[int, dict[str, Any]]] = {b: {} for b in self.rungs}  # budget -> number -> row
        self.promoted: set[tuple[int, int]] = set()  # (parent number, budget it was promoted to)

    def record(self, number: int, budget: int, row: dict[str, Any]) -> None:
        """A trial of ``budget`` epochs ended with results ``row`` (only ok and stopped count)."""
        if budget in self.finished and row.get("status") in ("ok", "stopped"):
            self.finished[budget][number] = row

    def mark(self, parent: int, budget: int) -> None:
        self.promoted.add((int(parent), int(budget)))

    def ranked(self, budget: int) -> list[int]:
        """Trial numbers of the feasible ok rows at ``budget``, best first (nondominated rank)."""
        rows = [{**r, "_number": n} for n, r in sorted(self.finished[budget].items()) if r.get("status") == "ok"]
        if not rows:
            return []
        df = pd.DataFrame(rows)
        order: list[int] = []
        while len(df):
            front = pareto_front(df, self.objectives)
            if not len(front):
                break  # what is left is infeasible or not finite: never promoted
            order += [int(n) for n in front["_number"]]
            df = df.drop(front.index)
        return order

    def due(self) -> list[tuple[int, int]]:
        """``(parent number, next budget)`` of the promotions earned and not yet made, in a fixed
        order (rung, then rank); they count as made from here on."""
        out = []
        for budget, nxt in zip(self.rungs, self.rungs[1:]):
            quota = math.floor(self.keep * len(self.finished[budget]) + 1e-9)
            slots = quota - sum(1 for _, b in self.promoted if b == nxt)  # never more than the quota in all
            best = [n for n in self.ranked(budget)[:quota] if (n, nxt) not in self.promoted]
            for number in best[:max(0, slots)]:
                self.mark(number, nxt)
                out.append((number, nxt))
        return out

    @classmethod
    def from_study(cls, spec: Spec, study: Any) -> tuple[Promotion, int]:
        """The rule as the study's trials leave it, and how many promotions wait in its queue."""
        from optuna.trial import TrialState

        p = spec.search.promote
        assert p is not None
        rule = cls(p.rungs, p.keep, dict(zip(spec.metric_names, spec.modes)))
        waiting = 0
        for t in study.get_trials(deepcopy=False):
            attrs = t.user_attrs
            if "budget" not in attrs:
                continue  # not a trial of a rung: a ladder rung, a warm start, a skipped configuration
            if attrs.get("parent") is not None:
                rule.mark(attrs["parent"], attrs["budget"])
                waiting += t.state == TrialState.WAITING
            if t.state.is_finished() and attrs.get("row") is not None:
                rule.record(t.number, int(attrs["budget"]), attrs["row"])
        return rule, waiting


def promotion_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """The user attributes that make a study trial a promotion (for its rerun after a kill)."""
    return {"parent": attrs["parent"], "budget": attrs["budget"]} if attrs.get("parent") is not None \
        and "budget" in attrs else {}


def promotions_left(spec: Spec, study: Any) -> bool:
    """Whether ``study`` has promotions waiting or earned and not yet made (resume drives them)."""
    if spec.search.promote is None:
        return False
    rule, waiting = Promotion.from_study(spec, study)
    return waiting > 0 or bool(rule.due())
