"""Checks that run before Ray starts: everything that can fail on bad input (the folder or URI,
the data, the task kind, the model hook) is a :class:`spaces.SpecError` (exit 2), not N failed trials."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from slimtune.search.results.table import RESULTS, STUDY, SWEEP
from slimtune.search.storage import Storage
from slimtune.search.task.data import Data, check_hooks_resolve, check_no_shadow, importable, load_data
from slimtune.search.trial import TrialSetup
from slimtune.spaces import TASK_METRIC, Spec, SpecError, require_search


def check_task(spec: Spec, data: Data) -> None:
    want = TASK_METRIC[data.kind]
    for name in spec.metric_names + [b.metric for b in spec.constraints]:
        if name in TASK_METRIC.values() and name != want:
            raise SpecError(f"objectives.{name}", f"this is a {data.kind} task, which reports {want}", name,
                            f"use {want}")
    # Build the model of the spec's first configuration once, so a model hook that does not
    # import, or returns something that is not an nn.Module, is a bad spec (exit 2), not N failed trials.
    from slimtune import compress
    from slimtune.search.trial import model_recipe

    cfg = {**spec.sample(_FirstValues()), "seed": 0, "trial_number": 0}
    setup = TrialSetup(out_dir="", model=spec.task.model, kind=data.kind)
    try:
        model = compress.build_model(model_recipe(setup, data, cfg))
    except Exception as exc:  # user code: any exception is the user's error to see
        raise SpecError("task.model", "must build a torch.nn.Module from the trial's config", spec.task.model,
                        f"{type(exc).__name__}: {exc}") from None
    _check_forward(spec, data, model)
    _check_deployable(spec, data, model)
    if spec.task.train:
        from slimtune.search.trial import user_loop

        try:
            loop = user_loop(spec)
        except (ImportError, AttributeError, ValueError) as exc:
            raise SpecError("task.train", "must be an importable module:function", spec.task.train,
                            f"{type(exc).__name__}: {exc}") from None
        if not callable(loop):
            raise SpecError("task.train", "must name a function train(model, data, config, ctx)", spec.task.train)
    unreached = compress.unreached_layers(model)
    if unreached:  # said once per sweep, never silently: the rows count them in uncompressed_params
        listed = ", ".join(f"{kind} ({n} parameters)" for kind, n in unreached.items())
        print(f"slimtune: warning: compression prunes and quantizes Linear, Conv, ConvTranspose and Embedding layers "
              f"only; {listed} stay float32 (column uncompressed_params)", file=sys.stderr)


def _check_deployable(spec: Spec, data: Data, model) -> None:
    """An objective or constraint on a deployed size needs its export to cover the model (and a
    C compiler for flash_bytes/ram_bytes), checked here rather than in every trial."""
    from slimtune.search.trial import deploy_wanted

    wanted = deploy_wanted(spec)
    if not wanted:
        return
    from slimtune.search import deploy

    named = next(m for m in spec.metric_names + [b.metric for b in spec.constraints] if m in wanted)
    field = f"objectives.{named}" if named in spec.metric_names else f"constraints.{named}"
    if any(m in wanted for m in deploy.C_METRICS) and deploy.find_compiler() is None:
        raise SpecError(field, "is measured by compiling each trial's C export, which needs a C compiler", "none found",
                        "install gcc or clang (or set CC) on every machine that runs trials, or drop this metric")
    try:
        graph = deploy.graph_of(model, data.input_shape, data.preprocess, data.kind)
        if any(m in wanted for m in deploy.C_METRICS):
            from slimtune.search.deploy.c_source import c_source

            c_source(graph)
    except deploy.Unsupported as exc:
        raise SpecError(field, "needs an export that covers every layer of the model", str(exc),
                        "see the supported layers in the docs (compression page)") from None


def _check_forward(spec: Spec, data: Data, model) -> None:
    """One forward pass on two training rows: a model that builds but does not fit the data
    (input shape, output size) is a bad spec, not N failed trials."""
    import torch

    x = torch.from_numpy(data.x_train[:2])
    try:
        with torch.no_grad():
            y = model.eval()(x)
    except Exception as exc:
        raise SpecError("task.model", f"must run on a batch of shape {list(x.shape)} (input_shape "
                        f"{data.input_shape})", spec.task.model, f"{type(exc).__name__}: {exc}") from None
    want = [2, data.n_outputs]
    fits = isinstance(y, torch.Tensor) and (list(y.shape) == want or (data.n_outputs == 1 and list(y.shape) == [2]))
    if not fits:
        got = list(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise SpecError("task.model", f"must return outputs of shape {want} for a batch of 2 "
                        f"(output_dim {data.n_outputs})", spec.task.model, f"it returned {got}")


class _FirstValues:
    """A stand-in Optuna trial that draws the first value of every distribution."""

    number = 0

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
        return low

    def suggest_int(self, name: str, low: int, high: int, log: bool = False) -> int:
        return low

    def suggest_categorical(self, name: str, choices: list) -> Any:
        return choices[0]


def prepare(spec: Spec, out: str | Path | Storage, base_dir: str | Path | None = None) -> tuple[Data, Storage]:
    """Everything that can fail on bad input, before Ray starts: the folder or URI (reachable,
    bucket there, credentials accepted), the data, the hooks."""
    st = Storage.open(out).check()
    where = st.uri
    if st.local_path is not None and st.local_path.exists() and not st.local_path.is_dir():
        raise SpecError("out", "must be a folder", where)
    if any(st.exists(name) for name in (SWEEP, RESULTS, STUDY)):
        raise SpecError("out", "must not already hold a sweep", where,
                        f"choose another folder, or: slimtune resume {where} / slimtune extend {where} --trials N")
    require_search(spec)
    check_no_shadow(os.getcwd(), base_dir)
    hooks = [("task.dataset", spec.task.dataset)] if spec.task.dataset_is_hook else []
    hooks += [("task.model", spec.task.model)] if spec.task.model_is_hook else []
    hooks += [("task.train", spec.task.train)] if spec.task.train else []
    check_hooks_resolve(hooks, base_dir)
    importable(base_dir)
    data = load_data(spec.task, spec.task.split_seed, Path(base_dir) if base_dir else None)
    check_task(spec.for_kind(data.kind), data)
    return data, st


def check_fits(spec: Spec, nodes: list[dict[str, float]], where: str) -> None:
    """A trial's ``resources`` must fit on one of ``nodes`` (each node's resources, Ray's names
    ``CPU``/``GPU``), else Ray would wait for them for ever: one line naming the field."""
    need = {"GPU": float(spec.resources.gpu), "CPU": float(spec.resources.cpu)}
    if any(all(n.get(k, 0.0) >= v for k, v in need.items()) for n in nodes):
        return
    most = {k: max((float(n.get(k, 0.0)) for n in nodes), default=0.0) for k in need}
    key = next((k for k in need if need[k] > most[k]), "GPU" if need["GPU"] else "CPU")
    have = f"the most on one node of {where} is {most[key]:g}"
    if all(need[k] <= most[k] for k in need):
        have = f"no node of {where} has {need['CPU']:g} CPUs and {need['GPU']:g} GPUs together"
    fix = ("use gpu: 0 (train on CPUs), or run on a cluster with a GPU node" if key == "GPU" else
           f"use cpu: {max(1, int(most['CPU']))} or less, or add a larger node")
    raise SpecError(f"resources.{key.lower()}", f"must fit on one node ({have})", need[key],
                    f"{fix}; otherwise Ray waits for it for ever")


def local_nodes() -> list[dict[str, float]]:
    """The one node a local Ray started here will have: this machine's CPUs and the GPUs torch sees."""
    import torch

    return [{"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}]


def cluster_nodes() -> list[dict[str, float]]:
    """The resources of each live node of the Ray cluster this process is connected to."""
    import ray

    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]
