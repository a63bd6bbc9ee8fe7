"""One CLI subcommand: its arguments and the library call it makes."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    example: str  # shown under --help: "example: slimtune ..."
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]  # 0 ok, 1 run failed; raise spaces.SpecError for bad input (-> 2)
