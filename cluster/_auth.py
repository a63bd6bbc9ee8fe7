"""Ray token authentication, found the way Ray documents it.

Ray (``RAY_AUTH_MODE=token``) looks for the token in ``RAY_AUTH_TOKEN``, then the file named by
``RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token``. Nodes started by ``cluster up`` get
``RAY_AUTH_MODE=token``; clients send the same token as ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from slimtune.spaces import SpecError

DEFAULT_TOKEN_PATH = Path("~/.ray/auth_token")


def ensure_token() -> dict[str, Any]:
    """Where the cluster's token comes from, creating the token file if there is none yet.

    Returns ``{"source": "RAY_AUTH_TOKEN"}`` or ``{"source": <env var or "default">, "path": <file>}``.
    """
    if os.environ.get("RAY_AUTH_TOKEN"):
        return {"source": "RAY_AUTH_TOKEN"}
    source = "RAY_AUTH_TOKEN_PATH" if os.environ.get("RAY_AUTH_TOKEN_PATH") else "default"
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or DEFAULT_TOKEN_PATH).expanduser()
    if not (path.is_file() and path.read_text().strip()):
        # What `ray get-auth-token --generate` does: 256 random bits, readable by the owner only.
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return {"source": source, "path": str(path.resolve())}


def find_token(recorded: dict[str, Any] | None = None) -> str | None:
    """The token a client sends: Ray's own order, with the file ``cluster up`` recorded before the default."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    candidates = []
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).expanduser()
        if not path.is_file():
            raise SpecError("RAY_AUTH_TOKEN_PATH", "must name a readable token file", str(path),
                            "unset it or point it at the cluster's token")
        candidates.append(path)
    if recorded and recorded.get("path"):
        candidates.append(Path(recorded["path"]))
    candidates.append(DEFAULT_TOKEN_PATH.expanduser())
    for path in candidates:
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
    return None


def headers(recorded: dict[str, Any] | None = None) -> dict[str, str]:
    """HTTP headers for the Ray dashboard / Jobs API (empty when no token exists anywhere)."""
    token = find_token(recorded)
    return {"Authorization": f"Bearer {token}"} if token else {}


def node_env(token: dict[str, Any]) -> dict[str, str]:
    """Environment for ``ray start`` processes: token auth on, the token where ``ensure_token`` found it."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["RAY_AUTH_MODE"] = "token"
    if token.get("source") == "RAY_AUTH_TOKEN_PATH":
        env["RAY_AUTH_TOKEN_PATH"] = token["path"]
    return env
