"""One driver per sweep: a lease object any storage can hold, and the one process-alive check.

``cluster`` imports :func:`pid_alive` from here (the dependency points one way only); this module
and :mod:`search.storage` import neither Ray nor torch.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Self

from slimtune.search.storage import Storage, write_local_atomic
from slimtune.spaces import SpecError


def process_start_time(pid: int) -> str | None:
    """The process's start time as the kernel records it ("?" without /proc), or None when it is gone."""
    if not Path("/proc/self/stat").is_file():  # no /proc (macOS): "exists" is all we can tell
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "?"
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        try:
            os.waitpid(pid, os.WNOHANG)  # reaps it when it is our own child
        except ChildProcessError:
            pass
        return None
    return fields[19]  # field 22 of /proc/<pid>/stat: start time in clock ticks after boot


def pid_alive(pid: int, start_time: str | None = None) -> bool:
    """Whether process ``pid`` runs on this host (and, given its recorded ``start_time``, is that same process)."""
    if pid <= 0:
        return False
    now = process_start_time(pid)
    return now is not None and (now == "?" or start_time in (None, "?", now))


class Lease:
    """An exclusive claim on a storage, held by one driver while it runs.

    The lease object records owner, host, pid, the process's start time and a heartbeat time.
    Another driver is refused while the lease is fresh; it takes the lease over when it is
    stale: its process is gone on the same host, or (with a ``ttl``) its heartbeat is older than
    ``ttl`` seconds. A holder with a ``ttl`` calls :meth:`heartbeat` more often than that.
    ``ttl`` defaults to None (no expiry) on a local folder and 60 s on an object store. With
    ``renew`` (the default) a daemon thread renews a ttl lease every ``ttl / 4`` seconds while it
    is held; :attr:`lost` then says (text) when another driver took it over.
    """

    def __init__(self, storage: Storage, name: str = ".lock", ttl: float | None | str = "auto",
                 field: str = "out", renew: bool = True) -> None:
        self.storage, self.name, self.field, self.renew = storage, name, field, renew
        self.ttl = (None if storage.local_path is not None else 60.0) if ttl == "auto" else ttl
        self.owner = uuid.uuid4().hex
        self.held = False
        self.lost: str | None = None
        self._beating: tuple[threading.Event, threading.Thread] | None = None

    def record(self) -> dict[str, Any]:
        pid = os.getpid()
        return {"owner": self.owner, "host": socket.gethostname(), "pid": pid,
                "start_time": process_start_time(pid), "heartbeat": time.time(), "ttl": self.ttl}

    def holder(self) -> dict[str, Any] | None:
        """The lease's current record, or None when nobody holds it; ``{}`` when it stays
        unreadable (a writer died mid-way on a store without atomic writes). An empty or partial
        read, as an object store may serve while the holder renews it, is read again first."""
        for attempt in range(5):
            try:
                blob = self.storage.read_bytes(self.name)
            except FileNotFoundError:
                return None
            try:
                rec = json.loads(blob) if blob else None
            except ValueError:
                rec = None
            if isinstance(rec, dict) and rec:
                return rec
            time.sleep(0.05 * (attempt + 1))
        return {}

    def stale(self, rec: dict[str, Any]) -> bool:
        if not rec:
            return True
        if rec.get("host") == socket.gethostname() and not pid_alive(int(rec.get("pid", -1)), rec.get("start_time")):
            return True
        ttl = rec.get("ttl")
        return ttl is not None and time.time() - float(rec.get("heartbeat", 0)) > float(ttl)

    def __enter__(self) -> Self:
        for _ in range(3):
            rec = self.holder()
            if rec is not None and not self.stale(rec):
                raise self._busy(rec)
            if rec is not None and self.holder() == rec:  # still that stale record: remove it
                self.storage.delete(self.name)
            if self._claim():
                self.held = True
                if self.ttl is not None and self.renew:
                    stop = threading.Event()
                    beat = threading.Thread(target=self._beat, args=(stop,), daemon=True, name=f"lease-{self.name}")
                    beat.start()
                    self._beating = (stop, beat)
                return self
        raise SpecError(self.field, "lease could not be taken", self.storage.uri_of(self.name),
                        "another driver keeps claiming it; retry")

    def _claim(self) -> bool:
        data = json.dumps(self.record()).encode()
        local = self.storage.local_path
        if local is not None:  # the record appears whole or not at all: written aside, then hard-linked
            path = Path(self.storage.join(self.name))
            tmp = path.with_name(f".{path.name}.{self.owner}.tmp")
            try:
                write_local_atomic(tmp, data)
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                tmp.unlink(missing_ok=True)
            return True
        # Object stores: last writer wins. Write, let a racing writer land, read back.
        self.storage.write_atomic(self.name, data)
        time.sleep(0.2)
        return (self.holder() or {}).get("owner") == self.owner

    def _busy(self, rec: dict[str, Any]) -> SpecError:
        age = time.time() - float(rec.get("heartbeat", time.time()))
        return SpecError(self.field, "must not be in use by another sweep driver", self.storage.uri,
                         f"held by pid {rec.get('pid')} on {rec.get('host')} (heartbeat {age:.0f} s ago); "
                         f"wait for it, or delete {self.storage.uri_of(self.name)} if that process is gone")

    def heartbeat(self) -> None:
        """Renew the lease; RuntimeError when another driver has taken it over meanwhile."""
        rec = self.holder()
        if not rec or rec.get("owner") != self.owner:
            self.held = False
            raise RuntimeError(f"lease {self.storage.uri_of(self.name)} was taken over by "
                               f"pid {(rec or {}).get('pid')} on {(rec or {}).get('host')}")
        self.storage.write_atomic(self.name, json.dumps(self.record()).encode())

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(self.ttl / 4):
            try:
                self.heartbeat()
            except RuntimeError as exc:
                self.lost = str(exc)
                return
            except OSError:  # a network blip: the next beat retries, well inside the ttl
                continue

    def __exit__(self, *exc: object) -> None:
        if self._beating is not None:  # stop renewing first, so no renewal lands after the delete
            stop, beat = self._beating
            stop.set()
            beat.join(self.ttl)
            self._beating = None
        if self.held and (self.holder() or {}).get("owner") == self.owner:
            self.storage.delete(self.name)
        self.held = False
