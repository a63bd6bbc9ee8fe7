"""The trial function: the one place where training meets compression.

It runs inside a Ray worker: build the model, train (reporting validation metrics each
epoch), compress as the trial's configuration says, evaluate the compressed model, store
its artifact, and report the objectives.

No node needs the sweep's folder mounted: a trial of a sweep at a URI writes its artifact
there itself (credentials from the node's own standard chains); for a local folder the bytes
go through Ray to the driver's node (:attr:`TrialSetup.sink`), which writes them. A trial
reports its final result only once its artifact is stored.
"""

from __future__ import annotations

import importlib
import os
import random
import socket
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from slimtune import compress, spaces
from slimtune.search import deploy
from slimtune.search.storage import Storage
from slimtune.search.task import hooks
from slimtune.search.task.data import Data
from slimtune.search.task.recipe import BOOKKEEPING
from slimtune.search.task.recipe import model_recipe as recipe_for
from slimtune.search.task.rungs import RUNG_SEED_STRIDE, ladder_configs  # noqa: F401 (search.trial's API)
from slimtune.search.task.train import Fit, Schedule, distill_of, evaluate, train
from slimtune.spaces import PRUNE, QUANTIZE, MethodKeys

#: Seed offsets from the trial's seed, so each training phase of a trial shuffles its batches
#: differently yet reproducibly: fine-tuning after pruning, then QAT. Ladder rung ``k`` (from 1)
#: compresses with seed + ``k * RUNG_SEED_STRIDE``, clear of both. Changing them changes rows.
FINETUNE_SEED_OFFSET, QAT_SEED_OFFSET = 1, 2

#: The folder of a distilling sweep that holds each trained model before compression (teachers).
TEACHERS = "teachers"


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep shares (sent once through Ray's object store)."""

    out_dir: str  # the sweep's folder: an absolute path or a credential-free URI (s3://, gs://)
    model: str  # mlp | cnn | module:function
    kind: str
    threads: int = 1
    spec: spaces.Spec | None = None  # for the ladder's draws
    ladder: int = 0
    code_dir: str | None = None  # the spec's folder, put on sys.path so module:function hooks beside it import
    sink: Any = None  # a local folder: the Ray actor on the driver's node that writes artifacts there
    #: Declared metrics the trial computes through their hook (taken where the sweep starts: a
    #: worker process does not see declarations made there).
    metrics: tuple[spaces.Metric, ...] = field(default_factory=spaces.computed_metrics)
    #: Hooks given as Python objects (search.task.hooks), shipped to every worker with the setup.
    hooks: dict[str, tuple[str, Any]] = field(default_factory=dict)

    @property
    def methods(self) -> tuple[MethodKeys, ...]:
        """The compression methods of the sweep's spec (its own declarations travel with it)."""
        return tuple(s.declared for s in self.spec.compress) if self.spec is not None else ()


def store_artifact(setup: TrialSetup, rel: str, blob: bytes) -> int:
    """Store the artifact ``blob`` at ``rel`` in the sweep's folder; the stored object's length.

    Through ``setup.sink`` (a Ray actor on the driver's node) when there is one, else straight
    into ``setup.out_dir`` (a URI, or a folder this process sees).
    """
    if setup.sink is not None:
        import ray

        stored = int(ray.get(setup.sink.put.remote(rel, blob)))
    else:
        st = Storage.open(setup.out_dir)
        st.makedirs(rel.rpartition("/")[0])
        st.write_atomic(rel, blob)
        stored = st.size(rel)
    if stored != len(blob):
        raise OSError(f"artifact {rel}: stored {stored} bytes of {len(blob)}")
    return stored


def read_artifact(setup: TrialSetup, rel: str) -> bytes:
    """The stored object ``rel`` of the sweep's folder, read the way :func:`store_artifact`
    writes: through ``setup.sink`` when there is one (this node need not see the driver's
    disk), else from ``setup.out_dir``."""
    if setup.sink is not None:
        import ray

        return bytes(ray.get(setup.sink.get.remote(rel)))
    return Storage.open(setup.out_dir).read_bytes(rel)


def model_recipe(setup: TrialSetup, data: Data, config: dict[str, Any]) -> dict[str, Any]:
    """The recipe that builds the trial's model (:func:`search.task.recipe.model_recipe`)."""
    return recipe_for(setup.model, setup.spec, data, config)


def compression_configs(config: dict[str, Any], methods: Iterable[MethodKeys] | None = None) -> tuple[list, list, list]:
    """(prune, qat, quantize) configs chosen for this trial.

    ``qat`` holds the `compress.FakeQuantize` of quantization-aware fine-tuning
    (``quant_mode: qat``), empty for post-training quantization. ``quantize`` starts with the
    configs of the declared methods beyond prune and quantize (``methods``, default: those
    declared here), which apply after pruning and before quantization.
    """
    prune: list = []
    method = _given(config, PRUNE, "method")
    if method == "magnitude":
        scope = str(_given(config, PRUNE, "scope"))
        if _given(config, PRUNE, "threshold") is not None:
            prune.append(compress.MagnitudePrune(threshold=float(config["threshold"]), scope=scope))
        else:
            prune.append(compress.MagnitudePrune(sparsity=float(config["sparsity"]), scope=scope))
    elif method == "structured":
        prune.append(compress.StructuredPrune(ratio=float(config["sparsity"])))
    qat: list = []
    quant: list = [c for m in (spaces.METHODS.values() if methods is None else methods) if m.config
                   for c in [_declared_config(m, config)] if c is not None]
    if int(_given(config, QUANTIZE, "bits")) < 32:
        fields = _fields(QUANTIZE, config)
        if _given(config, QUANTIZE, "mode") == "qat":
            qat.append(compress.FakeQuantize(**fields))
        quant.append(compress.AffineQuantize(**fields))
    return prune, qat, quant


def _fields(method: MethodKeys, config: dict[str, Any]) -> dict[str, Any]:
    """The config fields the method's keys with a ``field`` give (declared defaults where not drawn)."""
    given = ((k, _given(config, method, k.name)) for k in method.keys if k.field)
    return {k.field: k.cast(v) for k, v in given if v is not None}  # None: the config's own default


def _declared_config(method: MethodKeys, config: dict[str, Any]) -> Any:
    """The config of a declared method, or None where the trial did not draw its keys."""
    if any(_missing(config.get(k.col)) for k in method.keys if k.field):
        return None
    module, name = method.config.split(":")
    return getattr(importlib.import_module(module), name)(**_fields(method, config))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _given(config: dict[str, Any], method: MethodKeys, key: str) -> Any:
    """The trial's value of ``method``'s ``key``, or its declared default where it was not drawn
    (missing, None or NaN: not applied)."""
    k = method.key(key)
    value = config.get(k.col)
    return k.default if _missing(value) else value


def schedule_of(config: dict[str, Any]) -> Schedule:
    """The learning-rate schedule of ``config`` (``lr_schedule``, ``warmup``, ``decay``; constant when unset)."""
    def get(key: str, default: Any) -> Any:
        return default if _missing(config.get(key)) else config[key]

    return Schedule(str(get("lr_schedule", "constant")), float(get("warmup", 0.0)), float(get("decay", 0.0)))


def compress_trained(model: nn.Module, config: dict[str, Any], data: Data, fit: Fit,
                     methods: Iterable[MethodKeys] | None = None) -> tuple[nn.Module, list]:
    """The compression chosen by ``config``, applied to a trained ``model`` (left unchanged):
    prune → fine-tune (magnitude: zeros held by masks, or reached along the cubic schedule when
    ``gradual``) → declared methods → QAT fine-tune (fake-quantized weights, straight-through
    gradients) → quantize. Fine-tuning and QAT decay the learning rate over their own epochs when
    the trial's schedule is not constant (:meth:`Schedule.finetune`). ``fit`` gives the learning
    rate, batch size and weight decay; epochs and seeds are each phase's. Returns (compressed model, configs)."""
    prune, qat, quant = compression_configs(config, methods)
    fit = replace(fit, schedule=schedule_of(config).finetune())
    seed = int(config["seed"])
    ft = int(_given(config, PRUNE, "finetune_epochs")) if prune else 0
    magnitude = bool(prune) and isinstance(prune[0], compress.MagnitudePrune)
    if magnitude and ft and _given(config, PRUNE, "gradual"):
        model = compress.compress(model)  # a copy, pruned step by step while it fine-tunes
        steps = ft * -(-len(data.x_train) // int(fit.batch_size))
        train(model, data, replace(fit, epochs=ft, seed=seed + FINETUNE_SEED_OFFSET, phase="finetune"),
              after_step=compress.gradual_pruning(model, prune[0], steps))
    else:
        model = compress.compress(model, *prune)  # a plain copy when nothing is pruned
        if ft:
            masks = compress.sparsity_masks(model)
            train(model, data, replace(fit, epochs=ft, seed=seed + FINETUNE_SEED_OFFSET, phase="finetune"),
                  after_step=(lambda m: compress.apply_masks_(m, masks)) if magnitude else None)
    declared = [c for c in quant if not isinstance(c, compress.AffineQuantize)]
    if declared:
        model = compress.compress(model, *declared)
        quant = quant[len(declared):]
    if quant and _given(config, QUANTIZE, "assign") == "sensitivity":
        # The same average width, placed by each layer's output error on a calibration batch
        # (KL divergence of the class probabilities for classifiers, MSE for regression).
        calib = torch.from_numpy(np.array(data.x_train[:256], dtype=np.float32))
        error = compress.output_kl if data.kind == "classification" else compress.output_mse
        quant = [compress.assign_bits(model, quant[0], calib, error=error)]
        qat = [compress.FakeQuantize(**vars(quant[0]))] if qat else []
    if qat:
        masks = compress.sparsity_masks(model)
        model = compress.compress(model, *qat)
        qat_fit = replace(fit, epochs=int(_given(config, QUANTIZE, "qat_epochs")), seed=seed + QAT_SEED_OFFSET,
                          phase="qat")
        train(model, data, qat_fit, after_step=(lambda m: compress.apply_masks_(m, masks)) if magnitude else None)
    if quant:
        model = compress.compress(model, *quant)
    return model, [*prune, *qat, *quant]


def layer_widths(model: nn.Module) -> tuple[str | None, float | None]:
    """(``layer_bits``, ``avg_bits``) of a row: each Linear/Conv layer's stored width in layer
    order (``"8,4,4,8"``; 32 for a layer left in floats), and their mean over the weights;
    (None, None) for a model with no quantized layer."""
    stored = compress.stored_widths(model)
    if all(w is None for w in stored.values()):
        return None, None
    widths = {n: 32 if w is None else w for n, w in stored.items()}
    return ",".join(str(w) for w in widths.values()), compress.average_bits(model, widths)


@dataclass(frozen=True)
class Trained:
    """A trial's trained model before compression (``dense``), the ``recipe`` that builds it and
    the ``data`` it was trained on: what each compressed copy is measured against."""

    dense: nn.Module
    recipe: dict[str, Any]
    data: Data


def measure(model: nn.Module, trained: Trained, setup: TrialSetup, name: str) -> dict[str, Any]:
    """Evaluate a compressed model, store its artifact as ``artifacts/<name>.slim``, and return
    the metrics of a row: those measured here, and each of ``setup.metrics`` through its
    declared ``compute`` hook."""
    dense, recipe, data, computed = trained.dense, trained.recipe, trained.data, setup.metrics
    val = evaluate(model, data.x_val, data.y_val, data.kind)
    test = evaluate(model, data.x_test, data.y_test, data.kind)
    params, nonzero = compress.count_params(model)
    rel = f"artifacts/{name}.slim"
    split = [m for m in spaces.METRIC_TABLE.values() if m.split and m.task in (None, data.kind)]
    metrics = {**{m.name: val[m.name] for m in split}, **{f"test_{m.name}": test[m.name] for m in split}}
    for m in computed:
        module, fn = m.compute.split(":")
        metrics[m.name] = float(getattr(importlib.import_module(module), fn)(model, data))
    size = store_artifact(setup, rel, _saved(model, recipe))
    wanted = deploy_wanted(setup.spec)
    if wanted:  # the deployed sizes, from the real exports of this model
        metrics.update(deploy.deployed_sizes(model, data.input_shape, data.preprocess, data.kind, wanted))
    dense_size = compress.dense_bytes(dense, recipe)  # the model before compression, as dense fp32
    return {
        **metrics,
        "size_bytes": size,
        "dense_bytes": dense_size,
        "compression_ratio": dense_size / size,
        "params": params,
        "uncompressed_params": sum(compress.unreached_layers(model).values()) if compress.applied_configs(model) else 0,
        "nonzero_params": nonzero,
        "latency_ms": compress.latency_ms(model, data.input_shape,
                                          dtype=torch.long if data.x_train.dtype.kind in "iu" else torch.float32),
        "artifact": rel,
        **dict(zip(("layer_bits", "avg_bits"), layer_widths(model))),
    }


def deploy_wanted(spec: spaces.Spec | None) -> tuple[str, ...]:
    """The deployment metrics the spec's objectives or constraints name (``search.deploy.wanted``)."""
    return deploy.wanted([*spec.metric_names, *(b.metric for b in spec.constraints)]) if spec is not None else ()


def _saved(model: nn.Module, recipe: dict[str, Any]) -> bytes:
    """``compress.save``'s bytes of ``model`` (in this node's scratch); a hook model's must reload the same."""
    with tempfile.TemporaryDirectory(prefix="slimtune-artifact-") as tmp:
        compress.save(model, Path(tmp) / "model.slim", recipe=recipe)
        blob = (Path(tmp) / "model.slim").read_bytes()
    if recipe.get("arch") == "hook":
        compress.check_reloads(model, blob, hooks.resolve(str(recipe["hook"])))
    return blob


def offer_teacher(trained: Trained, setup: TrialSetup, name: str, val: float) -> dict[str, Any]:
    """Store the trained dense model (uncompressed) as ``teachers/<name>.slim`` through the
    artifact seam, for later trials to distil from; what the final result says of it:
    ``dense_<metric>`` (``val``, its validation metric after the last epoch, by which the driver
    picks teachers) and ``dense_artifact`` (its path in the sweep's folder)."""
    rel = f"{TEACHERS}/{name}.slim"
    store_artifact(setup, rel, _saved(trained.dense, trained.recipe))
    return {f"dense_{spaces.task_metric(trained.data.kind)}": val, "dense_artifact": rel}


def fetch_teacher(setup: TrialSetup, config: dict[str, Any]) -> nn.Module | None:
    """The teacher the driver chose for this trial (``config["teacher"]``), read back through
    the artifact seam; None without one."""
    rel = config.get("teacher")
    if _missing(rel):
        return None
    return compress.load(read_artifact(setup, str(rel)), trust_code=setup.model not in ("mlp", "cnn"))


def run_trial(config: dict[str, Any], data: Data, setup: TrialSetup, report=None) -> dict[str, Any]:
    """Train, compress, evaluate and save one configuration; returns the final metrics.

    ``report(metrics)`` is called once per training epoch and once at the end
    (``ray.tune.report`` inside Ray; any callable in tests). With ``setup.ladder`` the final
    report also holds ``ladder``: more compression settings evaluated on the same trained model
    (train once, compress many): ``config["ladder_configs"]`` as the searcher proposed them.
    """
    if report is None:
        from ray import tune

        report = tune.report
        trial_name = tune.get_context().get_trial_id()
    else:
        trial_name = f"local-{config.get('trial_number', 0)}"
    torch.set_num_threads(setup.threads)
    hooks.install(setup.hooks)
    seed = int(config["seed"])
    torch.manual_seed(seed)  # every global RNG a model hook might draw from
    np.random.seed(seed % 2**32)
    random.seed(seed)
    t0 = time.perf_counter()
    recipe = model_recipe(setup, data, config)
    dense = compress.build_model(recipe)
    metric = spaces.task_metric(data.kind)

    last: dict[str, float] = {}  # the dense model's validation metrics after the last epoch

    def on_epoch(epoch: int, val: dict[str, float]) -> None:
        last.update(val)
        report({"epoch": epoch, "phase": "train", f"val_{metric}": val[metric], "val_loss": val["loss"]})

    device = trial_device()
    fit = Fit(lr=float(config["lr"]), batch_size=int(config["batch_size"]), epochs=int(config["epochs"]), seed=seed,
              weight_decay=float(config.get("weight_decay", 0.0)), schedule=schedule_of(config), device=device,
              loop=user_loop(setup.spec), params={k: v for k, v in config.items() if k not in BOOKKEEPING})
    train(dense, data, fit, on_epoch=on_epoch)
    trained = Trained(dense, recipe, data)
    # A distilling sweep's configs name a teacher (None for the first trials): offer this one's too.
    name = str(config.get("trial_number", trial_name))
    offered = offer_teacher(trained, setup, name, last[metric]) if "teacher" in config else {}
    teacher = fetch_teacher(setup, config)
    model, configs = compress_trained(dense, config, data, replace(fit, distill=distill_of(config, teacher)),
                                      setup.methods)
    train_seconds = time.perf_counter() - t0
    final = {**measure(model, trained, setup, trial_name), **offered,
             "phase": "final", "train_seconds": train_seconds, "node": _node(), "device": device}
    given = config.get("ladder_configs")  # proposed by the searcher; else drawn here (older configs)
    if given is not None or (setup.ladder and setup.spec is not None):
        rungs = []
        for k, rung in enumerate(given if given is not None else ladder_configs(setup.spec, config, setup.ladder)):
            t1 = time.perf_counter()
            rung_fit = replace(fit, distill=distill_of(rung, teacher))
            small, rung_configs = compress_trained(dense, rung, data, rung_fit, setup.methods)
            rungs.append({"config": rung,
                          **measure(small, trained, setup, f"{trial_name}-r{k}"),
                          "train_seconds": time.perf_counter() - t1, "node": final["node"], "device": device})
        final["ladder"] = rungs
    report(final)
    return final


def user_loop(spec: spaces.Spec | None):
    """The spec's ``task.train`` training loop (a Python object given to run_sweep, else imported), or None."""
    hook = spec.task.train if spec is not None else None
    return hooks.resolve(hook) if hook else None


def trial_device() -> str:
    """Where this trial trains: ``cuda`` (the GPU Ray gave it: Ray sets the trial's
    CUDA_VISIBLE_DEVICES, so it is device 0) when Ray assigned it one and torch sees a GPU, else ``cpu``."""
    try:
        import ray

        gpus = ray.get_gpu_ids() if ray.is_initialized() else []
    except Exception:
        gpus = []
    return "cuda" if gpus and torch.cuda.is_available() else "cpu"


def _node() -> str:
    try:
        import ray

        # Outside Ray (run_trial called directly) get_runtime_context() would start a local Ray.
        node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:
        node_id = None
    return f"{socket.gethostname()}/{node_id[:8]}" if node_id else f"{socket.gethostname()}/pid{os.getpid()}"
