"""MkDocs hook: the pages that must not drift from the code are generated at build time.

- ``reference/spec.md`` from the spec's declarations: the dataclasses of ``slimtune.spaces._spec``
  (each field's ``doc`` metadata; defaults as ``parse_spec`` fills them in), ``SPACE_DOCS``,
  the distributions (``KIND_DOCS``), every compression method's keys (``slimtune.spaces.METHODS``)
  and every metric (``slimtune.spaces.METRIC_TABLE``);
- ``reference/results.md`` from the columns ``slimtune.search.results.table.frame`` writes, each
  described by its declaration (a metric, a spec key or ``ROW_DOCS``);
- ``benchmarks.md`` and ``architecture.md`` from ``benchmarks/README.md`` and ``ARCHITECTURE.md``,
  so each text has one home.

A column or a key without a declared description fails the build. None of these pages is in the
repository; ``mkdocs build`` writes them.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PAGES = {"reference/spec.md": "spec_reference", "reference/results.md": "results_schema"}
COPIED = {"benchmarks.md": "benchmarks/README.md", "architecture.md": "ARCHITECTURE.md"}


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for uri, fn in PAGES.items():
        files.append(File.generated(config, uri, content=globals()[fn]()))
    for uri, source in COPIED.items():
        files.append(File.generated(config, uri, content=copied(source)))
    return files


def copied(source: str) -> str:
    """A markdown file from outside ``docs/``, its links to ``docs/`` files made relative to the site."""
    text = (ROOT / source).read_text(encoding="utf-8")
    return re.sub(r"\]\((?:\.\./)?docs/", "](", text)


# --- formatting ---------------------------------------------------------------------------------

def _value(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return f"`{str(v).lower()}`"
    if isinstance(v, float):
        return f"`{v:g}`" if v != 1 / 3 else "`1/3`"
    if isinstance(v, (tuple, list)):
        return "`[" + ", ".join(str(x) for x in v) + "]`"
    return f"`{v}`"


def _cell(text: str) -> str:
    """A table cell: pipes escaped, and ``<word`` outside code spans shown, not taken for HTML."""
    parts = str(text).replace("|", "\\|").replace("\n", " ").split("`")
    return "`".join(re.sub(r"<(?=\w)", "&lt;", p) if i % 2 == 0 else p for i, p in enumerate(parts))


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows), ""]


def _doc(field: dataclasses.Field, owner: str) -> str:
    doc = field.metadata.get("doc")
    if not doc:
        raise ValueError(f"{owner}.{field.name} has no declared description (add doc metadata in spaces/_spec.py)")
    return doc


def _fields(cls: type, parsed: Any, prefix: str, skip: tuple[str, ...] = ()) -> list[str]:
    """One row per field: a field whose doc says "(required)" has no default; ``parsed is None``: none shown."""
    rows = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        doc = _doc(f, cls.__name__)
        if "(required)" in doc:
            default = "required"
        else:
            default = "optional" if parsed is None else _value(_plain(getattr(parsed, f.name)))
        rows.append((f"`{prefix}{f.name}`", default, doc.replace(" (required)", "")))
    return _table(("key", "default", "what"), rows)


def _plain(v: Any) -> Any:
    """A parsed value as the spec writes it (a fixed parameter as its value, a nested block as absent)."""
    from slimtune.spaces import Fixed

    if isinstance(v, Fixed):
        return v.value
    if dataclasses.is_dataclass(v):
        return None
    return v


# --- the spec reference ---------------------------------------------------------------------------

def spec_reference() -> str:
    from slimtune.spaces import METHODS, METRIC_TABLE, Spec, parse_spec
    from slimtune.spaces._distributions import KIND_DOCS, KINDS
    from slimtune.spaces._spec import (
        BUILTIN_DATASETS,
        BUILTIN_MODELS,
        LR_SCHEDULES,
        SAMPLERS,
        SCHEDULE_DEFAULTS,
        SPACE_DEFAULTS,
        SPACE_DOCS,
        EarlyStop,
        Promote,
        Resources,
        Search,
        Task,
    )

    base = {"name": "x", "task": {"dataset": "digits"}}
    spec = parse_spec(base)
    stop = parse_spec({**base, "search": {"early_stop": True}}).search.early_stop
    promote = parse_spec({**base, "search": {"promote": {"rungs": [1, 2]}}}).search.promote
    out = [
        "# Spec reference",
        "",
        "*Generated from the declarations in `slimtune.spaces` when the docs are built; it cannot drift "
        "from what `parse_spec` accepts.*",
        "",
        "A spec is a YAML file (read with `yaml.safe_load`) or a mapping passed to `slimtune.parse_spec`. "
        "Unknown keys are refused with the closest known one. Defaults are those `parse_spec` fills in.",
        "",
        "## Top-level keys",
        "",
        *_fields(Spec, None, "", skip=("source",)),
        "## Values: fixed or a distribution",
        "",
        "Every value of `space:`, `task.epochs` and each `compress:` key may be fixed (`lr: 0.01`) or one of:",
        "",
        *_table(("distribution", "written as"), [(f"`{k}`", KIND_DOCS[k]) for k in KINDS]),
        "## `task`",
        "",
        f"Built-in datasets: {', '.join(f'`{d}`' for d in BUILTIN_DATASETS)}; built-in models: "
        f"{', '.join(f'`{m}`' for m in BUILTIN_MODELS)}. A `module:function` hook is imported from the spec's "
        "folder (see [Getting started](../getting-started.md#your-own-data-and-models)).",
        "",
        *_fields(Task, spec.task, "task."),
        "## `space`",
        "",
        "The hyperparameters the built-in models and the trainer understand, with the value a spec that "
        "leaves them out gets (fixed, so a spec must search something: one in which every value is fixed "
        "and `search.trials` > 1 is refused). A `module:function` model may add keys of its own; they are "
        f"searched too and passed to it. `lr_schedule` is one of {', '.join(f'`{s}`' for s in LR_SCHEDULES)}; "
        "`warmup` and `decay` exist only with it.",
        "",
        *_table(("key", "default", "what"), [
            (f"`space.{k}`", _value(v), SPACE_DOCS[k]) for k, v in {**SPACE_DEFAULTS, **SCHEDULE_DEFAULTS}.items()]),
        "## `objectives` and `constraints`",
        "",
        "`objectives` maps metrics to `max` or `min`; `constraints` maps metrics to `{min: ..., max: ...}` "
        "(either or both). A metric reported only by one task kind is refused for the other. The metrics a "
        "spec may name:",
        "",
        *_table(("metric", "better", "task kind", "what"), [
            (f"`{m.name}`", m.direction, m.task or "every", m.doc) for m in METRIC_TABLE.values() if m.objective]),
    ]
    out += ["## `compress`", "",
            "Each method's section is optional and each of its keys is optional. In a trial they apply in this "
            "order: prune (and its fine-tuning), any declared method, quantize (and QAT); `distill` changes "
            "how fine-tuning and QAT learn. A key is drawn only where its condition holds; its results column "
            "is named in the table.", ""]
    for method in METHODS.values():
        out += [f"### `compress.{method.name}`", "", method.doc or "", ""]
        out += _table(("key", "default", "rule", "drawn when", "column", "what"),
                      [_key_row(method, k) for k in method.keys])
    out += ["## `search`", "", f"Samplers: {', '.join(f'`{s}`' for s in SAMPLERS)}.", "",
            *_fields(Search, spec.search, "search."),
            "### `search.early_stop`", "", "`true` takes these defaults; a mapping sets them.", "",
            *_fields(EarlyStop, stop, "search.early_stop."),
            "### `search.promote`", "", "With `promote`, leave `task.epochs` out: the rungs set it.", "",
            *_fields(Promote, promote, "search.promote."),
            "## `resources`", "", *_fields(Resources, spec.resources, "resources.")]
    return "\n".join(out)


def _key_row(method: Any, k: Any) -> tuple[str, ...]:
    from slimtune.spaces._methods import _SAME

    if not k.doc:
        raise ValueError(f"compress.{method.name}.{k.name} has no declared description (Key(..., doc=...))")
    default = _value(k.default) if k.default is not None else "– (drawn only when written)"
    if k.default_if_written != _SAME:
        default += f" ({_value(k.default_if_written)} when other keys of the section are written)"
    when = [_when(w) for w in k.when]
    if k.instead_of:
        when.append(f"written: instead of `{k.instead_of}`")
    return (f"`compress.{method.name}.{k.name}`", default, k.rule_text, "; ".join(when) or "always",
            f"`{k.col}`", k.doc)


def _when(w: Any) -> str:
    if w.among:
        return f"`{w.column}` is {' or '.join(str(v) for v in w.among)}"
    return f"`{w.column}` {'<' if w.below is not None else '>'} {w.below if w.below is not None else w.above:g}"


# --- the results schema ------------------------------------------------------------------------

def results_schema() -> str:
    from slimtune.search.results.rows import param_names
    from slimtune.search.results.table import RESULTS, frame, int_columns
    from slimtune.spaces import METHODS, parse_spec
    from slimtune.spaces._metrics import ROW_DOCS

    spec = parse_spec({"name": "x", "task": {"dataset": "digits"}, "space": {"lr_schedule": "wsd"}})
    params = param_names(spec)
    always = list(frame([], params).columns)
    sometimes = sorted(set(ROW_DOCS) - set(always))
    whole = set(int_columns())
    keys = {k.col: f"`compress.{m.name}.{k.name}`: {k.doc}" for m in METHODS.values() for k in m.keys}

    def rows(columns: list[str]) -> list[tuple[str, ...]]:
        return [(f"`{c}`", "Int64" if c in whole else "", _column_doc(c, keys)) for c in columns]

    return "\n".join([
        "# Results schema",
        "",
        "*Generated from the columns `slimtune.search.results.table` writes and the declarations that describe "
        "them (`slimtune.spaces.METRIC_TABLE`, each compression key, `ROW_DOCS`) when the docs are built.*",
        "",
        f"`slimtune.load_results(path)` (and `slimtune results`) reads a sweep's `{RESULTS}` (a folder or a URI): "
        "one pandas DataFrame, one row per trial, finished or failed. `df.attrs[\"objectives\"]` maps each "
        "objective to `max` or `min` (`pareto_front(df)` uses them), `df.attrs[\"constraints\"]` holds the "
        "spec's constraints and `df.attrs[\"name\"]` the sweep's name. A parameter is empty where a conditional "
        "one did not apply; metrics are empty for a row that is not `ok`. Columns marked Int64 are pandas "
        "nullable integers: `<NA>` where a row has no value, never floats like `53.0`.",
        "",
        "## Columns of every sweep, in order",
        "",
        "The parameters are those of the spec's `space` (here the built-in model's, with `lr_schedule`), then "
        "`epochs` and every compression key's column; a spec's own `space` keys take their names.",
        "",
        *_table(("column", "type", "what"), rows(always)),
        "## Columns some sweeps add",
        "",
        "After the columns above, in name order, where a sweep's rows have them.",
        "",
        *_table(("column", "type", "what"), rows(sometimes)),
    ])


def _column_doc(column: str, keys: dict[str, str]) -> str:
    from slimtune.spaces import METRIC_TABLE
    from slimtune.spaces._metrics import ROW_DOCS
    from slimtune.spaces._spec import SPACE_DOCS, Task

    name = column.removeprefix("test_")
    if name in METRIC_TABLE:
        doc = METRIC_TABLE[name].doc
        return f"the same on the held-out test split: {doc}" if column != name else doc
    if column == "epochs":
        return f"`task.epochs`: {next(f for f in dataclasses.fields(Task) if f.name == 'epochs').metadata['doc']}"
    for table in (SPACE_DOCS, keys, ROW_DOCS):
        if column in table:
            return (f"`space.{column}`: " if table is SPACE_DOCS else "") + table[column]
    raise ValueError(f"results column {column!r} has no declared description (add it to ROW_DOCS in "
                     "spaces/_metrics.py, or doc= to its Metric or Key)")


# --- the deployment page's table of supported layers -------------------------------------------

def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """``{{ deploy_layers }}`` in a page: the layers the compressed exports cover, from
    ``slimtune.search.deploy.LAYERS`` (both formats) and the C export's ``C_LAYERS``."""
    if "{{ deploy_layers }}" not in markdown:
        return markdown
    from slimtune.search.deploy import LAYERS
    from slimtune.search.deploy.c_source import C_LAYERS

    rows = ["| layers | compressed ONNX | C |", "|---|---|---|"]
    for kind, doc in LAYERS.items():
        in_c = kind in C_LAYERS or kind in ("bn", "skip")  # folded / dropped before C sees them
        rows.append(f"| {_cell(doc)} | yes | {'yes' if in_c else 'no'} |")
    return markdown.replace("{{ deploy_layers }}", "\n".join(rows))
