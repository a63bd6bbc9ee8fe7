"""slimtune: search for models that are both accurate and small (Ray Tune + Optuna + compression).

Exit codes: 0 ok, 1 the run failed, 2 bad input (one line on stderr, no traceback).
Subcommands live in small ``slimtune/_cmd_*.py`` modules, each with a ``COMMANDS`` list of
:class:`Command`; this file only assembles them.
"""

from __future__ import annotations

import argparse
import os
import sys

from slimtune import __version__, _cmd_cluster, _cmd_report, _cmd_sweep
from slimtune._command import Command

#: Every module that contributes subcommands, in the order ``--help`` lists them.
MODULES = [_cmd_sweep, _cmd_cluster, _cmd_report]


def commands() -> list[Command]:
    return [c for m in MODULES for c in m.COMMANDS]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slimtune", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"slimtune {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for c in commands():
        sp = sub.add_parser(c.name, help=c.help, description=c.help, epilog=c.example,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        c.add_arguments(sp)
        sp.set_defaults(_run=c.run)
    return p


def main(argv: list[str] | None = None) -> int:
    from slimtune.search.driver.terminal import debug
    from slimtune.spaces import RunError, SpecError

    args = _parser().parse_args(argv)
    try:
        code = int(args._run(args))
        sys.stdout.flush()  # inside the try: a closed pipe raises here, not at interpreter exit
        return code
    except SpecError as exc:
        print(f"slimtune: error: {as_flags(exc)}", file=sys.stderr)
        return 2
    except RunError as exc:
        print(f"slimtune: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(f"\nslimtune: {exc or 'interrupted'}", file=sys.stderr)  # \n: end the line ^C was echoed on
        return 130
    except BrokenPipeError:  # the reader went away (`slimtune status ID | head -3`): not an error
        _quiet_stdout()
        return 0
    except Exception as exc:  # any other failure of the run: one line, exit 1 (traceback on request)
        if debug():
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"slimtune: error: {type(exc).__name__}: {first} (SLIMTUNE_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1


#: The library names its arguments (``trial``, ``out``, ``fmt``, ``trust_code=True``); the CLI says
#: its flags instead.
FLAGS = {"trial": "--trial", "out": "--out", "fmt": "--format"}


def as_flags(exc) -> str:
    """A SpecError's line as the CLI says it: Python argument names as the flags that set them."""
    text = str(exc)
    if exc.field in FLAGS:
        text = FLAGS[exc.field] + text[len(exc.field):]
    return text.replace("pass trust_code=True", "add --trust-code").replace("trust_code=True", "--trust-code")


def entry() -> None:
    """The ``slimtune`` command (and ``python -m slimtune``): :func:`main`, then exit with its code.
    After Ctrl-C (130) the process ends at once once its line is printed: a library's worker
    thread left running by the interrupted sweep must not hold it open (what finished is
    already written; the study keeps the rest for ``slimtune resume``)."""
    code = main()
    if code == 130:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(130)
    raise SystemExit(code)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush into the closed pipe
    does not print a second BrokenPipeError (the recipe in Python's `signal` documentation)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    raise SystemExit(main())
