"""What this client remembers: the head that ``cluster up`` started, and each submitted sweep.

Everything lives under ``$SLIMTUNE_HOME`` (default ``~/.slimtune``) as small JSON files:
``head.json`` (one recorded cluster) and ``sweeps/<sweep-id>.json`` (sweep id → job id, address,
results folder). Writes are atomic, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

HEAD = "head.json"
SWEEPS = "sweeps"


def home() -> Path:
    """The state folder: ``$SLIMTUNE_HOME``, else ``~/.slimtune``."""
    return Path(os.environ.get("SLIMTUNE_HOME") or Path.home() / ".slimtune").expanduser().resolve()


def _write(path: Path, data: dict[str, Any]) -> None:
    from slimtune.search.storage import (
        write_local_atomic,  # the one atomic write; on call, so `import cluster` stays lean
    )

    path.parent.mkdir(parents=True, exist_ok=True)
    write_local_atomic(path, json.dumps(data, indent=2, sort_keys=True).encode())


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def read_head() -> dict[str, Any] | None:
    return _read(home() / HEAD)


def write_head(record: dict[str, Any]) -> None:
    _write(home() / HEAD, record)


def clear_head() -> None:
    (home() / HEAD).unlink(missing_ok=True)


def read_sweep(sweep_id: str) -> dict[str, Any] | None:
    if not sweep_id or "/" in sweep_id or sweep_id.startswith("."):
        return None
    return _read(home() / SWEEPS / f"{sweep_id}.json")


def write_sweep(record: dict[str, Any]) -> None:
    _write(home() / SWEEPS / f"{record['id']}.json", record)


# --- processes this client started, identified by pid and start time (pids get reused) ---
# The one process check lives in search.lease; imported on call, so `import cluster` stays lean.

def start_time(pid: int) -> str | None:
    """The process's start time as the kernel records it, or None when it is gone (or a zombie)."""
    from slimtune.search.lease import process_start_time

    return process_start_time(pid)


def alive(proc: dict[str, Any]) -> bool:
    """Whether the recorded process ``{"pid", "start_time"}`` still runs (the same process, not a reuse)."""
    from slimtune.search.lease import pid_alive

    return pid_alive(int(proc["pid"]), proc.get("start_time"))


def terminate(procs: list[dict[str, Any]], timeout: float = 45.0) -> int:
    """SIGTERM the recorded processes; the number that were running.

    ``ray start --block`` then drains its node (Ray waits up to 30 s for running work) and takes
    its Ray processes down. A process still there after ``timeout`` seconds gets SIGKILL (that
    one pid; its node's processes share its fate).
    """
    running = [p for p in procs if alive(p)]
    for p in running:
        os.kill(int(p["pid"]), signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in running) and time.monotonic() < deadline:
        time.sleep(0.2)
    for p in running:
        if alive(p):
            os.kill(int(p["pid"]), signal.SIGKILL)
    while any(alive(p) for p in running) and time.monotonic() < deadline + 10:
        time.sleep(0.2)
    return len(running)
