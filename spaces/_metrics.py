"""Every metric a trial reports, declared once (one :class:`Metric` line each), and
:func:`declare`, which adds a metric or a compression method's keys at run time.

Derived from the table: the metrics a spec may name as objectives or constraints
(:data:`METRICS`, with their direction), which task kind reports which (:data:`TASK_METRIC`),
the result columns and their order (:func:`result_columns`), the columns each view shows
(:func:`shown_columns`), the whole-number columns, and the value told for a configuration that
was never trained (:func:`worst_value`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slimtune.spaces._methods import METHODS, MethodKeys

#: Views, narrowest first: a metric ``shown`` in one is shown in the wider ones too.
VIEWS = ("table", "report", "export")


@dataclass(frozen=True)
class Metric:
    """One metric of a results row.

    direction: ``max`` | ``min``, the better way. task: the task kind that reports it (None:
    every kind). split: also measured on the test split, as ``test_<name>``. objective: may be
    an objective or a constraint (else a column only). whole: whole numbers (an ``Int64``
    column). shown: the narrowest view that shows it (``table``: ``slimtune results``;
    ``report``: the HTML report; ``export``: an export's manifest). worst: the value told, when
    it is maximised, for a configuration never trained (default 0; minimised: 1e12). compute: ``"module:function"``
    taking ``(model, data)`` and returning the value for the compressed model (None: the trial
    measures it itself).
    """

    name: str
    direction: str
    doc: str = ""
    task: str | None = None
    split: bool = False
    objective: bool = True
    whole: bool = False
    shown: str = "report"
    worst: float | None = None
    compute: str | None = None

    def __post_init__(self) -> None:
        if self.direction not in ("max", "min") or self.shown not in VIEWS:
            raise ValueError(f"Metric {self.name!r}: direction must be max or min and shown one of "
                             f"{', '.join(VIEWS)}, but got direction={self.direction!r}, shown={self.shown!r}")


METRIC_TABLE: dict[str, Metric] = {m.name: m for m in (
    Metric("accuracy", "max", "validation accuracy of the compressed model", task="classification", split=True,
           shown="table", worst=0.0),
    Metric("r2", "max", "validation R^2 of the compressed model", task="regression", split=True, shown="table",
           worst=-1.0),
    Metric("loss", "min", "validation loss of the compressed model", split=True, shown="export"),
    Metric("size_bytes", "min", "length of the compressed artifact file", whole=True, shown="table"),
    Metric("onnx_bytes", "min", "length of the compressed ONNX file `slimtune export --format onnx` writes (measured "
           "in the trial when an objective or constraint names it)", whole=True, shown="table"),
    Metric("flash_bytes", "min", "flash of the C export compiled with the system C compiler: .text + .rodata + .data "
           "(measured in the trial when an objective or constraint names it or ram_bytes)", whole=True, shown="table"),
    Metric("ram_bytes", "min", "static RAM (.data + .bss: activation arena, one decoded weight row) plus stack of "
           "the C export (measured with flash_bytes)", whole=True),
    Metric("dense_bytes", "min", "the same model stored as dense fp32", objective=False, whole=True, shown="table"),
    Metric("compression_ratio", "max", "dense_bytes / size_bytes", shown="table", worst=0.0),
    Metric("params", "min", "parameters of the (possibly pruned) model", whole=True),
    Metric("nonzero_params", "min", "parameters that are not zero", whole=True),
    Metric("uncompressed_params", "min", "parameters in layers the row's compression could not reach (e.g. "
           "LayerNorm, Embedding; 0 when every layer was pruned/quantized as the row says, and when the row keeps "
           "fp32 and prunes nothing)", objective=False, whole=True),
    Metric("latency_ms", "min", "CPU latency at batch size 1"),
    Metric("train_seconds", "min", "training + compression time of the trial", objective=False),
    Metric("avg_bits", "min", "mean stored bit width over the weights (empty: nothing quantized)", objective=False),
    # with compress.distill: the trained model before compression, the sweep's teacher candidate
    Metric("dense_accuracy", "max", "validation accuracy of the dense model before compression (distilling "
           "sweeps)", objective=False),
    Metric("dense_r2", "max", "validation R^2 of the dense model before compression (distilling sweeps)",
           objective=False),
)}

#: What each column of a results row means that is neither a parameter nor a metric (the generated
#: results schema shows it; ``search.results`` writes the columns).
ROW_DOCS: dict[str, str] = {
    "trial_id": "Ray Tune's trial id (also the artifact's file stem)",
    "trial_number": "the Optuna trial number in study.db (0, 1, ...)",
    "status": "ok | failed | stopped (early, by the two-objective stopper) | infeasible (predicted to break a size "
              "constraint; never trained)",
    "seed": "the trial's seed, derived from search.seed and the trial number",
    "feasible": "every constraint of the spec holds (always true without constraints)",
    "node": "host/node-id of the Ray node that ran the trial",
    "device": "where the trial trained, fine-tuned, ran QAT and was evaluated during training: cpu, or cuda (the "
              "GPU Ray gave it, with resources.gpu > 0); compression, latency_ms and the artifact are on the CPU",
    "error": "the error of a failed trial (e.g. ValueError: ..., TrainingDiverged: training diverged: loss=nan ...), "
             "or why it stopped early",
    "traceback": "a failed trial: where its whole traceback is kept (errors/trial-<n>.txt in the sweep folder, or "
                 "at its URI)",
    "artifact": "the artifact's path relative to the sweep folder (compress.load reads it)",
    "parent": "a ladder rung: the trial number of the trained model it compresses; a promotion: the trial number of "
              "the configuration it retrains at a longer budget",
    "budget": "with search.promote: the epochs of the trial's rung (a row with parent and budget is a promotion)",
    "predicted_size_bytes": "the size predicted before training (with size constraints or early stopping)",
    "layer_bits": "each Linear/Conv layer's stored width in layer order, e.g. 8,4,4,8 (empty without quantization)",
    "teacher": "with compress.distill: the dense model (teachers/<n>.slim) its fine-tuning and QAT distilled from "
               "(empty: none stored yet)",
    "teacher_trial": "with compress.distill: the trial number of that teacher",
    "dense_artifact": "with compress.distill: this trial's dense model before compression, stored as a teacher",
    "ended_at": "Unix time at which the driver recorded the row",
}

#: The metrics a spec may name (objectives, constraints), with the direction that is better.
METRICS: dict[str, str] = {}
#: Which metric each task kind reports as its quality.
TASK_METRIC: dict[str, str] = {}


def _derive() -> None:
    METRICS.clear()
    METRICS.update({m.name: m.direction for m in METRIC_TABLE.values() if m.objective})
    TASK_METRIC.clear()
    TASK_METRIC.update({m.task: m.name for m in METRIC_TABLE.values() if m.task})


_derive()


def result_columns() -> list[str]:
    """The metric columns of a results row, in order: the split metrics, their ``test_``
    twins, then the others."""
    split = [m.name for m in METRIC_TABLE.values() if m.split]
    return [*split, *(f"test_{n}" for n in split), *(m.name for m in METRIC_TABLE.values() if not m.split)]


def shown_columns(view: str) -> list[str]:
    """The metric columns ``view`` (``table``, ``report``, ``export``) shows, in result order."""
    wide = VIEWS[: VIEWS.index(view) + 1]
    shown = {m.name for m in METRIC_TABLE.values() if m.shown in wide}
    return [c for c in result_columns() if c.removeprefix("test_") in shown]


def whole_columns() -> list[str]:
    return [m.name for m in METRIC_TABLE.values() if m.whole]


def task_metric(kind: str | None) -> str:
    """The quality metric a task of ``kind`` reports (``accuracy`` when the kind is not known)."""
    return TASK_METRIC[kind or "classification"]


def worst_value(name: str, direction: str) -> float:
    """The value told for a configuration never trained, for an objective ``name`` that is
    ``direction`` (``max``: the metric's ``worst``, default 0; ``min``: 1e12)."""
    m = METRIC_TABLE.get(name)
    if direction == "min":
        return 1e12
    return m.worst if m is not None and m.worst is not None else 0.0


def computed_metrics() -> tuple[Metric, ...]:
    """The declared metrics the trial computes through their ``compute`` hook."""
    return tuple(m for m in METRIC_TABLE.values() if m.compute)


class Declared:
    """What :func:`declare` added; ``undo()`` (or leaving the ``with`` block) removes it."""

    def __init__(self, items: tuple[Any, ...]) -> None:
        self.items = items

    def undo(self) -> None:
        for item in self.items:
            (METRIC_TABLE if isinstance(item, Metric) else METHODS).pop(item.name, None)
        _derive()

    def __enter__(self) -> "Declared":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.undo()


def declare(*items: Metric | MethodKeys) -> Declared:
    """Add metrics and compression methods' keys to the tables everything else derives from.

    A method's section ``compress.<name>`` is then validated, drawn and written as columns; a
    metric may be an objective or constraint and is a column. Names must be new.
    """
    columns = {c for m in METHODS.values() for c in m.columns}
    for item in items:
        if isinstance(item, Metric):
            if item.name in METRIC_TABLE:
                raise ValueError(f"metric {item.name!r} is declared already")
        elif isinstance(item, MethodKeys):
            if item.name in METHODS or columns & set(item.columns):
                raise ValueError(f"compression method {item.name!r} or one of its columns {item.columns} "
                                 "is declared already")
            columns |= set(item.columns)
        else:
            raise TypeError(f"declare takes Metric or MethodKeys values, but got {type(item).__name__}")
    for item in items:
        if isinstance(item, Metric):
            METRIC_TABLE[item.name] = item
        else:
            METHODS[item.name] = item
    _derive()
    return Declared(items)
