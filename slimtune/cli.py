"""``slimtune``: a thin shell; each subcommand is one library call.

Exit codes: 0 ok, 1 the run failed, 2 bad input (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from slimtune import __version__

EXAMPLES = {
    "sweep": "example: slimtune sweep examples/digits.yaml --out runs/digits",
    "results": "examples: slimtune results runs/digits --pareto\n          slimtune results runs/digits --format csv > trials.csv",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slimtune", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"slimtune {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("sweep", help="run a sweep from a YAML spec", epilog=EXAMPLES["sweep"],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("spec", help="YAML spec file")
    s.add_argument("--out", required=True, help="sweep folder to create (results.parquet, study.db, artifacts/)")
    s.add_argument("--address", default=None, help="Ray address to run on (default: a local Ray started for the sweep)")
    s.add_argument("--quiet", action="store_true", help="no line per finished trial")

    r = sub.add_parser("results", help="print a sweep's trials", epilog=EXAMPLES["results"],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("path", help="sweep folder")
    r.add_argument("--pareto", action="store_true", help="only the non-dominated feasible trials")
    r.add_argument("--format", choices=("table", "csv", "json"), default="table")
    r.add_argument("--all-columns", action="store_true", help="every column (table format shows the main ones)")
    return p


def _sweep(args: argparse.Namespace) -> int:
    from search import run_sweep
    from spaces import load_spec

    spec = load_spec(args.spec)
    df = run_sweep(spec, args.out, base_dir=Path(args.spec).resolve().parent, quiet=args.quiet,
                   address=args.address)
    ok = int((df["status"] == "ok").sum())
    print(f"{ok}/{len(df)} trials finished; results in {Path(args.out) / 'results.parquet'}")
    print(f"front: slimtune results {args.out} --pareto")
    return 0 if ok else 1


TABLE_COLUMNS = ["trial_number", "status", "accuracy", "r2", "test_accuracy", "test_r2", "size_bytes",
                 "dense_bytes", "compression_ratio", "lr", "batch_size", "depth", "width", "epochs",
                 "prune_method", "sparsity", "bits", "error"]


def _results(args: argparse.Namespace) -> int:
    import pandas as pd

    from search import load_results, pareto_front

    df = load_results(args.path)
    if args.pareto:
        df = pareto_front(df)
    if args.format == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif args.format == "json":
        sys.stdout.write(df.to_json(orient="records", indent=2) + "\n")
    else:
        cols = list(df.columns) if args.all_columns else [c for c in TABLE_COLUMNS if c in df and df[c].notna().any()]
        with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_columns", None,
                               "display.float_format", "{:.4g}".format):
            print(df[cols].to_string(index=False) if len(df) else "(no trials)")
    return 0


def main(argv: list[str] | None = None) -> int:
    from spaces import SpecError

    args = _parser().parse_args(argv)
    try:
        return {"sweep": _sweep, "results": _results}[args.command](args)
    except SpecError as exc:
        print(f"slimtune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slimtune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
