"""Parsing the sweep spec: the one place where raw YAML becomes the typed, frozen values of
:mod:`spaces._spec`. Each error names the field, the rule and the value (:class:`SpecError`)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, Mapping

from slimtune.spaces._distributions import Fixed, IntRange, Param, check_values, parse_param
from slimtune.spaces._errors import SpecError, closest
from slimtune.spaces._methods import METHODS, Section, parse_section
from slimtune.spaces._metrics import METRICS, TASK_METRIC
from slimtune.spaces._spec import (
    BUILTIN_DATASETS,
    BUILTIN_MODELS,
    HOOK,
    LR_SCHEDULES,
    SAMPLERS,
    SCHEDULE_DEFAULTS,
    SPACE_DEFAULTS,
    Bound,
    EarlyStop,
    Objective,
    Promote,
    Resources,
    Search,
    Spec,
    Task,
)

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _mapping(path: str, raw: Any, known: Mapping[str, Any] | tuple[str, ...] | None) -> dict:
    if not isinstance(raw, dict):
        raise SpecError(path or "spec", "must be a mapping", raw)
    if known is not None:
        for key in raw:
            if not isinstance(key, str) or key not in known:
                shown = str(key).encode("unicode_escape").decode()  # keep the message one line
                raise SpecError(
                    f"{path}.{shown}" if path else shown, "unknown key", key, closest(str(key), known)
                )
    return raw


def _int(path: str, raw: Any, low: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < low:
        raise SpecError(path, f"must be an integer >= {low}", raw)
    return raw


def _number(path: str, raw: Any, rule: str, ok) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not ok(raw):
        raise SpecError(path, rule, raw)
    return float(raw)


def _one_of(path: str, raw: Any, allowed: tuple[str, ...]) -> str:
    if raw not in allowed:
        raise SpecError(path, f"must be one of {', '.join(allowed)}", raw)
    return raw


def _param(path: str, raw: Any, ok, rule: str, int_only: bool = False) -> Param:
    p = parse_param(path, raw)
    if int_only and not isinstance(p, IntRange):
        ok_ = ok
        ok = lambda v: isinstance(v, int) and not isinstance(v, bool) and ok_(v)  # noqa: E731
    return check_values(path, p, ok, rule, raw)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse_task(raw: Any) -> Task:
    known = ("dataset", "target", "kind", "model", "train", "epochs", "validation_split", "test_split", "split_seed")
    t = _mapping("task", raw, known)
    if "dataset" not in t:
        raise SpecError("task.dataset", "is required (digits, mnist1d, a .csv/.npz path or module:function)", None)
    dataset = t["dataset"]
    if not isinstance(dataset, str) or not (
        dataset in BUILTIN_DATASETS or dataset.endswith((".csv", ".npz")) or HOOK.match(dataset)
    ):
        raise SpecError(
            "task.dataset", "must be digits, mnist1d, a .csv or .npz path, or module:function", dataset
        )
    model = t.get("model", "mlp")
    if not isinstance(model, str) or not (model in BUILTIN_MODELS or HOOK.fullmatch(model)):
        raise SpecError("task.model", "must be mlp, cnn or module:function", model)
    loop = t.get("train")
    if loop is not None and not (isinstance(loop, str) and HOOK.fullmatch(loop)):
        raise SpecError("task.train", "must be module:function, a training loop train(model, data, config, ctx)",
                        loop)
    target = t.get("target")
    if target is not None and not isinstance(target, str):
        raise SpecError("task.target", "must be a column name", target)
    if target is not None and not dataset.endswith(".csv"):
        raise SpecError("task.target", "applies to .csv datasets only", target, "remove it")
    kind = t.get("kind")
    if kind is not None:
        _one_of("task.kind", kind, tuple(TASK_METRIC))
    epochs = _param("task.epochs", t.get("epochs", 10), lambda v: _is_int(v) and v >= 1, "must be an integer >= 1")
    split = lambda v: 0.0 < v < 0.9  # noqa: E731
    val = _number("task.validation_split", t.get("validation_split", 0.2), "`0 < validation_split < 0.9` must hold",
                  split)
    test = _number("task.test_split", t.get("test_split", 0.2), "`0 < test_split < 0.9` must hold", split)
    return Task(dataset=dataset, model=model, train=loop, epochs=epochs, target=target, kind=kind,
                validation_split=val, test_split=test, split_seed=_int("task.split_seed", t.get("split_seed", 0), 0))


def _parse_objectives(raw: Any, kind: str | None) -> tuple[Objective, ...]:
    if raw is None:
        raw = {TASK_METRIC.get(kind or "classification"): "max", "size_bytes": "min"}
    o = _mapping("objectives", raw, METRICS)
    if not o:
        raise SpecError("objectives", "needs at least one metric", o)
    objs = []
    for name, direction in o.items():
        if direction not in ("max", "min"):
            raise SpecError(f"objectives.{name}", "direction must be max or min", direction)
        if kind is not None and name in TASK_METRIC.values() and name != TASK_METRIC[kind]:
            raise SpecError(f"objectives.{name}", f"a {kind} task reports {TASK_METRIC[kind]}", name,
                            f"use {TASK_METRIC[kind]}")
        objs.append(Objective(name, direction))
    return tuple(objs)


def _parse_constraints(raw: Any) -> tuple[Bound, ...]:
    c = _mapping("constraints", raw or {}, METRICS)
    bounds = []
    for metric, b in c.items():
        b = _mapping(f"constraints.{metric}", b, ("min", "max"))
        if not b:
            raise SpecError(f"constraints.{metric}", "needs min and/or max", b)
        lo = b.get("min")
        hi = b.get("max")
        for k, v in (("min", lo), ("max", hi)):
            if v is not None:
                _number(f"constraints.{metric}.{k}", v, "must be a finite number",
                        lambda x: x == x and abs(x) != float("inf"))
        if lo is not None and hi is not None and lo > hi:
            raise SpecError(f"constraints.{metric}", "`min <= max` must hold", {"min": lo, "max": hi})
        bounds.append(Bound(metric, None if lo is None else float(lo), None if hi is None else float(hi)))
    return tuple(bounds)


def _parse_space(raw: Any, model_is_hook: bool) -> tuple[tuple[str, Param], ...]:
    s = _mapping("space", raw or {}, None if model_is_hook else {**SPACE_DEFAULTS, **SCHEDULE_DEFAULTS})
    merged = {**{k: v for k, v in SPACE_DEFAULTS.items()}, **s}
    merged = _schedule_keys(s, merged)
    positive = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0  # noqa: E731
    rules = {
        "lr": (positive, "must be > 0", False),
        "weight_decay": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0, "must be >= 0",
                         False),
        "batch_size": (lambda v: _is_int(v) and v >= 1, "must be an integer >= 1", True),
        "depth": (lambda v: _is_int(v) and v >= 1, "must be an integer >= 1", True),
        "width": (lambda v: _is_int(v) and v >= 1, "must be an integer >= 1", True),
        "lr_schedule": (lambda v: v in LR_SCHEDULES, f"must be one of {', '.join(LR_SCHEDULES)}", False),
        "warmup": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1,
                   "`0 <= warmup < 1` must hold (a fraction of the training's steps)", False),
        "decay": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1,
                  "`0 <= decay <= 1` must hold (a fraction of the training's steps)", False),
    }
    out = []
    for name, value in merged.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_]\w*", name):
            raise SpecError(f"space.{name}", "names must be identifiers", name)
        path = f"space.{name}"
        if name in rules:
            ok, rule, int_only = rules[name]
            out.append((name, _param(path, value, ok, rule, int_only)))
        else:
            out.append((name, parse_param(path, value)))
    return tuple(out)


def _schedule_keys(s: dict, merged: dict) -> dict:
    """The space with the schedule's keys: ``warmup``/``decay`` need ``lr_schedule``, which
    brings their defaults; fixed values must leave the stable phase ``warmup + decay <= 1``."""
    if "lr_schedule" not in s:
        for key in ("warmup", "decay"):
            if key in s:
                raise SpecError(f"space.{key}", "is only used with an lr_schedule", s[key],
                                "add space.lr_schedule: wsd (or cosine), or remove it")
        return merged
    merged = {**merged, **{k: v for k, v in SCHEDULE_DEFAULTS.items() if k not in s}}
    w, d = merged["warmup"], merged["decay"]
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (w, d))
    if numbers and 0 <= w < 1 and 0 <= d <= 1 < w + d:
        raise SpecError("space.decay", "`warmup + decay <= 1` must hold", {"warmup": w, "decay": d})
    return merged


def _parse_compress(raw: Any) -> tuple[Section, ...]:
    c = _mapping("compress", raw or {}, tuple(METHODS))
    sections = []
    for name, method in METHODS.items():
        given = _mapping(f"compress.{name}", c.get(name) or {}, tuple(k.name for k in method.keys))
        sections.append(parse_section(method, given))
    return tuple(sections)


def _parse_early_stop(raw: Any) -> "EarlyStop | None":
    if raw is None or raw is False:
        return None
    if raw is True:
        return EarlyStop()
    e = _mapping("search.early_stop", raw, ("grace_epochs", "eta", "min_peers"))
    return EarlyStop(
        grace_epochs=_int("search.early_stop.grace_epochs", e.get("grace_epochs", 2), 1),
        eta=_number("search.early_stop.eta", e.get("eta", 3.0), "`eta > 1` must hold", lambda v: v > 1),
        min_peers=_int("search.early_stop.min_peers", e.get("min_peers", 4), 1),
    )


def _parse_promote(raw: Any) -> Promote | None:
    if raw is None:
        return None
    p = _mapping("search.promote", raw, ("rungs", "keep"))
    rungs = p.get("rungs")
    if not (isinstance(rungs, list) and len(rungs) >= 2 and all(_is_int(r) and r >= 1 for r in rungs)
            and all(a < b for a, b in itertools.pairwise(rungs))):
        raise SpecError("search.promote.rungs", "must be a list of at least 2 increasing epoch budgets >= 1", rungs,
                        "e.g. rungs: [5, 15, 45]")
    keep = _number("search.promote.keep", p.get("keep", 1 / 3), "`0 < keep < 1` must hold", lambda v: 0 < v < 1)
    return Promote(rungs=tuple(rungs), keep=keep)


def _parse_search(raw: Any) -> Search:
    s = _mapping("search", raw or {}, ("trials", "concurrency", "sampler", "seed", "retries", "ladder",
                                       "early_stop", "reject_infeasible", "reproducible", "promote"))
    for key, default in (("reject_infeasible", True), ("reproducible", False)):
        if not isinstance(s.get(key, default), bool):
            raise SpecError(f"search.{key}", "must be true or false", s[key])
    return Search(
        trials=_int("search.trials", s.get("trials", 20), 1),
        concurrency=_int("search.concurrency", s.get("concurrency", 2), 1),
        sampler=_one_of("search.sampler", s.get("sampler", "tpe"), SAMPLERS),
        seed=_int("search.seed", s.get("seed", 0), 0),
        retries=_int("search.retries", s.get("retries", 2), 0),
        ladder=_int("search.ladder", s.get("ladder", 0), 0),
        early_stop=_parse_early_stop(s.get("early_stop")),
        reject_infeasible=s.get("reject_infeasible", True),
        reproducible=s.get("reproducible", False),
        promote=_parse_promote(s.get("promote")),
    )


def _parse_resources(raw: Any) -> Resources:
    r = _mapping("resources", raw or {}, ("cpu", "gpu"))
    return Resources(
        cpu=_number("resources.cpu", r.get("cpu", 1), "must be a number > 0", lambda v: v > 0),
        gpu=_number("resources.gpu", r.get("gpu", 0), "must be a number >= 0", lambda v: v >= 0),
    )


TOP_KEYS = ("name", "task", "objectives", "constraints", "space", "compress", "search", "resources")


def parse_spec(raw: Any) -> Spec:
    """Validate a spec mapping (as loaded from YAML) into a frozen :class:`Spec`."""
    top = _mapping("", raw, TOP_KEYS)
    name = top.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SpecError("name", "must be 1-64 letters, digits, - or _", name)
    if "task" not in top:
        raise SpecError("task", "is required", None, "add task: {dataset: digits, model: mlp}")
    task = _parse_task(top["task"])
    objectives = _parse_objectives(top.get("objectives"), task.kind)
    constraints = _parse_constraints(top.get("constraints"))
    space = _parse_space(top.get("space"), task.model_is_hook)
    sections = _parse_compress(top.get("compress"))
    search = _parse_search(top.get("search"))
    if search.promote is not None:  # the rungs set the epochs: new configurations train the first
        if "epochs" in (top.get("task") or {}):
            raise SpecError("task.epochs", "is set by search.promote.rungs when promoting (new configurations "
                            f"train {search.promote.rungs[0]} epochs)", top["task"]["epochs"], "remove task.epochs")
        import dataclasses

        task = dataclasses.replace(task, epochs=Fixed(search.promote.rungs[0]))
    return Spec(
        name=name,
        task=task,
        objectives=objectives,
        space=space,
        constraints=constraints,
        compress=sections,
        search=search,
        resources=_parse_resources(top.get("resources")),
        source=raw,
    )


def require_search(spec: Spec) -> None:
    """Refuse, before a sweep starts, a spec of several trials in which nothing is searched
    (each trial would train the same configuration). ``parse_spec`` accepts such a spec: a
    fixed configuration is a valid description, just not a sweep."""
    if spec.search.trials > 1 and not spec.searched:
        raise SpecError("space", f"must search at least one parameter: every value is fixed, so all "
                        f"{spec.search.trials} trials would train the same configuration",
                        spec.source.get("space", {}),
                        "add e.g. space: {lr: {log_uniform: [1.0e-4, 1.0e-2]}}, or set search.trials: 1")


def load_spec(path: str | Path) -> Spec:
    """Read a YAML spec file (safely) and validate it. Raises :class:`SpecError`."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise SpecError("spec", "must be an existing YAML file", str(path))
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError("spec", "must be valid YAML", f"{problem} at {where}") from None
    except UnicodeDecodeError as exc:
        raise SpecError("spec", "must be UTF-8 text", str(exc)) from None
    return parse_spec(raw)
