"""``slimtune sweep`` and ``slimtune results``."""

from __future__ import annotations

import argparse
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path

from slimtune._command import Command


def _sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="YAML spec file")
    p.add_argument("--out", required=True, help="sweep folder or URI to create (results.parquet, study.db, "
                                                "artifacts/): a path, s3://bucket/prefix or gs://bucket/prefix")
    p.add_argument("--address", default=None,
                   help="Ray address to run on (default: RAY_ADDRESS, else a local Ray started for the sweep)")
    p.add_argument("--quiet", action="store_true",
                   help="plain progress: one line per finished trial, no redrawn status block")
    p.add_argument("--warm-start", default=None, metavar="SWEEP",
                   help="an earlier sweep folder: its front is tried first, its trials are observations "
                        "when task and space match")


def _sweep(args: argparse.Namespace) -> int:
    from slimtune.search import run_sweep
    from slimtune.spaces import load_spec

    spec = load_spec(args.spec)
    with _interrupt_note(args.out):
        df = run_sweep(spec, args.out, base_dir=Path(args.spec).resolve().parent, quiet=args.quiet,
                       address=args.address, warm_start=args.warm_start)
    code = _finish(args.out, df)
    print(f"front: slimtune results {args.out} --pareto")
    return code


@contextmanager
def _interrupt_note(out: str):
    """On Ctrl-C: say so and how to continue (``main`` prints it, exit 130), instead of
    reporting a finished sweep."""
    try:
        yield
    except KeyboardInterrupt:
        from slimtune.search.results.table import SWEEP
        from slimtune.search.storage import Storage

        if Storage.open(out).is_file(SWEEP):
            raise KeyboardInterrupt(f"interrupted; the trials that finished are kept; continue with: "
                                    f"slimtune resume {shlex.quote(str(out))}") from None
        raise KeyboardInterrupt("interrupted before the sweep started; nothing was written") from None


def _resume_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="sweep folder or URI (s3://…, gs://…)")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--quiet", action="store_true",
                   help="plain progress: one line per finished trial, no redrawn status block")


def _extend_args(p: argparse.ArgumentParser) -> None:
    _resume_args(p)
    p.add_argument("--trials", type=int, required=True, help="how many trials to add to the budget")


def _finish(path: str, df) -> int:
    """Print what ended, counted as the progress counts it (trained trials against the budget),
    and the rows that are not trainings; 1 when no trial succeeded."""
    from slimtune.search import sweep_progress
    from slimtune.search.driver.progress import counts
    from slimtune.search.storage import Storage

    p = sweep_progress(path)
    st = Storage.open(path)
    where = st.uri_of("results.parquet") if st.local_path is None else Path(path) / "results.parquet"
    promoted = int((df["parent"].notna() & df["budget"].notna()).sum()) if "budget" in df else 0
    rungs = int(df["parent"].notna().sum()) - promoted if "parent" in df else 0
    skipped = int((df["status"] == "infeasible").sum())
    extra = [f"{rungs} ladder rungs"] * bool(rungs) + [f"{skipped} skipped as infeasible"] * bool(skipped)
    extra += [f"{promoted} promoted to longer budgets"] * bool(promoted)
    rows = f"{len(df)} rows" + (f" ({', '.join(extra)})" if extra else "")
    print(f"trained trials {p.finished}/{p.budget} finished ({counts(p)}); {rows} in {where}")
    return 0 if (df["status"] == "ok").any() else 1


def _resume(args: argparse.Namespace) -> int:
    from slimtune.search import resume_sweep

    with _interrupt_note(args.path):
        return _finish(args.path, resume_sweep(args.path, quiet=args.quiet, address=args.address))


def _extend(args: argparse.Namespace) -> int:
    from slimtune.search import resume_sweep
    from slimtune.spaces import SpecError

    if args.trials < 1:
        raise SpecError("--trials", "must be an integer >= 1", args.trials)
    with _interrupt_note(args.path):
        return _finish(args.path, resume_sweep(args.path, add_trials=args.trials, quiet=args.quiet,
                                               address=args.address))


def table_columns() -> list[str]:
    """The columns ``slimtune results`` shows (those present and not all empty): the metrics
    declared for the table (``spaces.METRIC_TABLE``), the main parameters, the error and the file
    in the sweep folder that keeps its whole traceback."""
    from slimtune.spaces import shown_columns

    return ["trial_number", "status", *shown_columns("table"), "lr", "batch_size", "depth", "width", "epochs",
            "prune_method", "sparsity", "bits", "error", "traceback"]


def _results_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="sweep folder, or the id of a sweep submitted to a cluster")
    p.add_argument("--pareto", action="store_true", help="only the non-dominated feasible trials")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--all-columns", action="store_true", help="every column (table format shows the main ones)")


def _results(args: argparse.Namespace) -> int:
    import pandas as pd

    from slimtune.cluster import resolve_results_path
    from slimtune.search import load_results, pareto_front

    df = load_results(resolve_results_path(args.path))
    if args.pareto:
        df = pareto_front(df)
    if args.format == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif args.format == "json":
        sys.stdout.write(df.to_json(orient="records", indent=2) + "\n")
    else:
        cols = list(df.columns) if args.all_columns else [c for c in table_columns() if c in df and df[c].notna().any()]
        with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_columns", None,
                               "display.float_format", "{:.4g}".format):
            print(df[cols].to_string(index=False) if len(df) else "(no trials)")
    return 0


COMMANDS = [
    Command("sweep", "run a sweep from a YAML spec", "example: slimtune sweep examples/digits.yaml --out runs/digits",
            _sweep_args, _sweep),
    Command("results", "print a sweep's trials",
            "examples:\n  slimtune results runs/digits --pareto\n"
            "  slimtune results runs/digits --format csv > trials.csv",
            _results_args, _results),
    Command("resume", "continue a sweep whose driver stopped (killed, rebooted) up to its budget",
            "example: slimtune resume runs/digits", _resume_args, _resume),
    Command("extend", "add trials to a sweep; the sampler sees every earlier trial",
            "example: slimtune extend runs/digits --trials 20", _extend_args, _extend),
]
