"""Compiling the C export with the system C compiler: its size in flash and RAM, and running it.

``flash_bytes`` is what the compiled object puts in flash: the length of its ``.text``,
``.rodata`` and ``.data`` sections (read from the ELF object); ``ram_bytes`` is its static RAM
(``.data`` + ``.bss``: the activation arena and the decoded weight row) plus the stack: the sum
of every function's frame as ``-fstack-usage`` reports it (an upper bound: no function recurses).
Measured with the host compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``) for the host's
instruction set; a microcontroller's compiler gives another ``.text`` but the same weights.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: The flags the export is checked with (the tests compile with them, warnings as errors).
CFLAGS = ("-std=c99", "-Os", "-Wall", "-Wextra", "-Werror", "-fno-asynchronous-unwind-tables")
FLASH = (".text", ".rodata", ".data")


class NoCompiler(RuntimeError):
    """No C compiler on this machine."""


def find_compiler() -> str | None:
    """The C compiler to use: ``$CC``, else the first of cc, gcc, clang on PATH; None without one."""
    cc = os.environ.get("CC")
    if cc and shutil.which(cc):
        return shutil.which(cc)
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _compiler() -> str:
    cc = find_compiler()
    if cc is None:
        raise NoCompiler("no C compiler found (set CC, or install gcc or clang)")
    return cc


@dataclass(frozen=True)
class Footprint:
    flash_bytes: int
    ram_bytes: int
    sections: dict[str, int]
    stack_bytes: int | None


def _sections(obj: bytes) -> dict[str, int]:
    """Section name -> size of an ELF object (32- or 64-bit, little-endian)."""
    if obj[:4] != b"\x7fELF":
        raise ValueError("not an ELF object")
    is64 = obj[4] == 2
    if is64:
        shoff, = struct.unpack_from("<Q", obj, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", obj, 0x3A)
    else:
        shoff, = struct.unpack_from("<I", obj, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", obj, 0x2E)

    def header(i: int) -> tuple[int, int, int, int]:
        base = shoff + i * shentsize
        if is64:
            name, kind, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", obj, base)
        else:
            name, kind, _flags, _addr, offset, size = struct.unpack_from("<IIIIII", obj, base)
        return name, kind, offset, size

    _, _, str_off, _ = header(shstrndx)
    out = {}
    for i in range(shnum):
        name, kind, _, size = header(i)
        label = obj[str_off + name: obj.index(b"\0", str_off + name)].decode()
        out[label] = out.get(label, 0) + size
    return out


def footprint(folder: str | Path) -> Footprint:
    """Compile ``model.c`` in ``folder`` (with :data:`CFLAGS`) and measure it."""
    folder = Path(folder).resolve()
    cc = _compiler()
    with tempfile.TemporaryDirectory(prefix="slimtune-cc-") as tmp:
        obj = Path(tmp) / "model.o"
        cmd = [cc, *CFLAGS, "-fstack-usage", "-c", str(folder / "model.c"), "-o", str(obj)]
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        if run.returncode != 0:
            raise RuntimeError(f"{Path(cc).name} failed on the C export: {run.stderr.strip()[:400]}")
        sections = _sections(obj.read_bytes())
        su = Path(tmp) / "model.su"
        stack = None
        if su.exists():
            stack = sum(int(line.split("\t")[1]) for line in su.read_text().splitlines() if "\t" in line)
    flash = sum(size for name, size in sections.items() if any(name == f or name.startswith(f + ".") for f in FLASH))
    static = sum(size for name, size in sections.items() if name in (".data", ".bss") or name.startswith(
        (".data.", ".bss.")))
    return Footprint(flash, static + (stack or 0), sections, stack)


HARNESS = """#include <stdio.h>
#include "model.h"
int main(void)
{
    float x[SLIMTUNE_INPUT_SIZE], y[SLIMTUNE_OUTPUT_SIZE];
    while (fread(x, sizeof x, 1, stdin) == 1) {
        slimtune_predict(x, y);
        if (fwrite(y, sizeof y, 1, stdout) != 1)
            return 1;
    }
    return 0;
}
"""


def run_export(folder: str | Path, x: np.ndarray) -> np.ndarray:
    """The outputs of the C export in ``folder`` for the rows of ``x`` (raw features), from a
    small harness compiled with it."""
    folder = Path(folder).resolve()
    cc = _compiler()
    x = np.ascontiguousarray(x, dtype="<f4").reshape(len(x), -1)
    with tempfile.TemporaryDirectory(prefix="slimtune-cc-") as tmp:
        (Path(tmp) / "main.c").write_text(HARNESS)
        exe = Path(tmp) / "predict"
        cmd = [cc, *CFLAGS, "-I", str(folder), str(Path(tmp) / "main.c"), str(folder / "model.c"), "-o", str(exe),
               "-lm"]
        build = subprocess.run(cmd, capture_output=True, text=True)
        if build.returncode != 0:
            raise RuntimeError(f"{Path(cc).name} failed on the C export: {build.stderr.strip()[:400]}")
        out = subprocess.run([str(exe)], input=x.tobytes(), capture_output=True, check=True)
    y = np.frombuffer(out.stdout, dtype="<f4")
    return y.reshape(len(x), -1)
