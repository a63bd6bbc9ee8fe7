"""``slimtune plot``, ``report``, ``export``, ``predict`` and ``completion``.

Nothing here prints colour, so ``NO_COLOR`` holds trivially.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from slimtune._command import Command


def _plot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="sweep folder")
    p.add_argument("--out", default=None, help="PNG file to write (default: <path>/pareto.png)")


def _plot(args: argparse.Namespace) -> int:
    from slimtune.search import plot_sweep

    print(plot_sweep(args.path, args.out))
    return 0


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="sweep folder")
    p.add_argument("--out", default=None, help="HTML file to write (default: <path>/report.html)")


def _report(args: argparse.Namespace) -> int:
    from slimtune.search import write_report

    print(write_report(args.path, args.out))
    return 0


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="sweep folder")
    p.add_argument("--trial", required=True, help="trial number (as in `slimtune results`) or Ray trial id")
    p.add_argument("--format", choices=("slim", "onnx", "torchscript", "c"), default=None,
                   help="default: from the --out suffix (.slim, .onnx, .pt); c: --out is a folder")
    p.add_argument("--out", required=True, help="model file to write (slim and onnx also write <out>.json beside it; "
                                                "c: a folder for model.h, model.c and slimtune.json)")
    p.add_argument("--dense", action="store_true", help="onnx: dense fp32 weights (torch.onnx.export) instead of "
                                                        "the compressed integer codes")
    _trust_arg(p)


def _trust_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-code", action="store_true",
                   help="import and run the module:function model hook the artifact names (only for "
                        "sweeps from a source you trust; built-in architectures never need it)")


def _export(args: argparse.Namespace) -> int:
    from slimtune.search import export_trial
    from slimtune.search.present.export import FORMATS
    from slimtune.spaces import SpecError

    fmt = args.format
    if fmt is None:
        by_suffix = {s: f for f, s in FORMATS.items() if s and f != "onnx-dense"} | {".ts": "torchscript",
                                                                                 ".torchscript": "torchscript"}
        fmt = by_suffix.get(Path(args.out).suffix.lower())
        if fmt is None:
            raise SpecError("--format", "is needed when --out does not end in .slim, .onnx or .pt", args.out,
                            "add --format slim|onnx|torchscript|c")
    if args.dense and fmt != "onnx":
        raise SpecError("--dense", "applies to --format onnx only", f"--format {fmt}")
    out = export_trial(args.path, args.trial, "onnx-dense" if args.dense else fmt, args.out, trust_code=args.trust_code)
    print(_export_line(out, fmt))
    return 0


def _export_line(out: Path, fmt: str) -> str:
    """What an export wrote: the path, and for onnx and c its deployed size."""
    import json

    if fmt == "onnx" and Path(str(out) + ".json").is_file():
        return f"{out} ({Path(out).stat().st_size} bytes)"
    if fmt == "c":
        info = json.loads((Path(out) / "slimtune.json").read_text())["c"]
        if "flash_bytes" in info:
            return f"{out}/model.c, model.h (flash {info['flash_bytes']} bytes, RAM {info['ram_bytes']} bytes)"
        return f"{out}/model.c, model.h ({info['note']})"
    return str(out)


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="what `slimtune export` wrote: a slim, onnx or torchscript file, or a C export's "
                                 "folder (compiled here)")
    p.add_argument("data", help="CSV of feature columns, in training order (header row optional), or an .npz with "
                                "an array x")
    p.add_argument("--out", default=None, help="CSV to write (default: print to stdout)")
    _trust_arg(p)


def _predict(args: argparse.Namespace) -> int:
    from slimtune.search import predict_csv

    df = predict_csv(args.model, args.data, trust_code=args.trust_code)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.out, index=False)
        print(f"{len(df)} predictions in {args.out}")
    else:
        sys.stdout.write(df.to_csv(index=False))
    return 0


def _completion_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("shell", choices=("bash", "zsh"))


def completion_script(shell: str) -> str:
    """A bash completion script for the current subcommands (zsh: the same, through bashcompinit)."""
    from slimtune.cli import _parser

    def words(items) -> str:
        return f'COMPREPLY=($(compgen -W "{" ".join(items)}" -- "$cur"))'

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    cases = []
    for name, sp in sub.choices.items():
        opts = sorted({o for a in sp._actions for o in a.option_strings if o.startswith("--")})
        valued = [f"                {'|'.join(a.option_strings)}) {words(a.choices)}; return;;"
                  for a in sp._actions if a.option_strings and a.choices]
        positional = [a.choices for a in sp._actions if not a.option_strings and a.choices]
        other = words(positional[0]) if positional else 'COMPREPLY=($(compgen -f -- "$cur"))'
        prev = f"""            case "$prev" in\n{chr(10).join(valued)}\n            esac\n""" if valued else ""
        cases.append(f"""        {name})
{prev}            if [[ "$cur" == -* ]]; then {words(opts)}; else {other}; fi
            ;;""")
    body = f"""# slimtune completion for {shell}; load it with:  eval "$(slimtune completion {shell})"
_slimtune() {{
    local cur prev cmd i
    COMPREPLY=()
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    cmd=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in -*) ;; *) cmd="${{COMP_WORDS[i]}}"; break;; esac
    done
    if [[ -z "$cmd" ]]; then
        {words([*sub.choices, "--help", "--version"])}
        return
    fi
    case "$cmd" in
{chr(10).join(cases)}
    esac
}}
complete -o default -F _slimtune slimtune
"""
    if shell == "zsh":
        body = "autoload -U +X bashcompinit && bashcompinit\n" + body
    return body


def _completion(args: argparse.Namespace) -> int:
    sys.stdout.write(completion_script(args.shell))
    return 0


COMMANDS = [
    Command("plot", "write a PNG of a sweep's Pareto front and hypervolume",
            "examples:\n  slimtune plot runs/digits\n  slimtune plot runs/digits --out pareto.png", _plot_args, _plot),
    Command("report", "write one self-contained HTML report of a sweep (no server, no network)",
            "example: slimtune report runs/digits --out report.html", _report_args, _report),
    Command("export", "write a trial's model as slim, ONNX (compressed or --dense), TorchScript or C, with a manifest",
            "examples:\n  slimtune export runs/digits --trial 12 --format onnx --out model.onnx\n"
            "  slimtune export runs/digits --trial 12 --format c --out firmware/model   # model.h, model.c\n"
            "  slimtune export runs/digits --trial 12 --out model.slim   # format from the suffix",
            _export_args, _export),
    Command("predict", "run an exported model on a CSV of features",
            "example: slimtune predict model.onnx data.csv --out predictions.csv", _predict_args, _predict),
    Command("completion", "print a shell completion script",
            'examples:\n  eval "$(slimtune completion bash)"   # in ~/.bashrc\n'
            '  eval "$(slimtune completion zsh)"    # in ~/.zshrc', _completion_args, _completion),
]
