"""Untrusted artifacts: `compress.load` of hostile bytes, and of code it was not asked to run.

Every artifact format the code writes or reads is in `WRITERS` (a tiny model each; formats 1 and 2,
no longer written, as files the format-2 writer wrote); a new format adds writers there and
inherits every case.  Each case must end in one `compress.ArtifactError`
with a one-line message, or (byte flips that keep the file valid) a model with the stored tensor
shapes that, for the built-in architectures, runs and gives the recipe's outputs:

* truncation at every offset, 300 seeded random byte flips per format, and 300 more behind the
  LZMA layer (in the decoded body, many rewriting manifest digits or format-3 header bytes);
* an LZMA bomb (a valid artifact followed by 1 GiB of compressed zeros, in both LZMA containers;
  a manifest length of 16 MiB of zeros, an xz dictionary of 4 GiB) and manifests describing huge
  models (width 10**9, depth 10**9, a tensor of 10**12 elements dense or sparse, a 4 GiB
  manifest length), in format 2's JSON and in format 3's header.

Time and memory are bounded by design, not timed: the reader is O(file length + max_params) and
decodes an LZMA stream only to the length the checked manifest describes.  The files here are
< 2 KB (bombs 230 KB), so each case takes milliseconds (the whole module about 20 s here); the
bomb and huge-model cases run in a child process whose address space (RLIMIT_AS) is capped at
256 MiB above what importing torch took, so an attempt to inflate or allocate them would fail there
with MemoryError instead of the expected ArtifactError.
"""

from __future__ import annotations

import binascii
import io
import json
import lzma
import os
import random
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest
import torch
import torch.nn as nn

from slimtune import compress
from slimtune.cli import main
from slimtune.compress import AffineQuantize, MagnitudePrune, StructuredPrune
from slimtune.compress._format3 import pack_header, read_header, varint
from slimtune.search.results.table import write_results
from tests import user_models

ROOT = Path(__file__).resolve().parents[1]
MLP = {"arch": "mlp", "input_shape": [16], "output_dim": 4, "depth": 1, "width": 12}
CNN = {"arch": "cnn", "input_shape": [8, 8], "output_dim": 3, "depth": 1, "width": 6}
HOOK = {"arch": "hook", "hook": "tests.user_models:residual_mlp", "input_shape": [16], "output_dim": 2,
        "config": {"in_dim": 16, "hidden": 6, "out_dim": 2, "blocks": 1}}
BUILDERS = {HOOK["hook"]: user_models.residual_mlp}
MAGIC = b"SLIMTUN\x02"
MAGIC3 = b"SLIMTUN\x03"
OLD = ROOT / "tests" / "fixtures" / "artifacts_old"  # written by the format-2 writer (commit 3176389)


def _saved(recipe: dict, *configs, tweak: Callable[[nn.Module], None] | None = None) -> bytes:
    torch.manual_seed(0)
    model = compress.build_model(recipe, builder=BUILDERS.get(recipe.get("hook")))
    if tweak:
        tweak(model)
    buf = Path(os.environ.get("TMPDIR", "/tmp")) / f"fuzz-{os.getpid()}.slim"
    compress.save(compress.compress(model, *configs), buf, recipe=recipe)
    blob = buf.read_bytes()
    buf.unlink()
    return blob


def _laplace(model: nn.Module) -> None:
    """Peaked weights: their 6-bit codes are stored one per byte (``"packing": "bytes"``)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, m in compress.prunable_modules(model):
            u = torch.rand(m.weight.shape, generator=gen) - 0.5
            m.weight.copy_(-0.05 * u.sign() * torch.log1p(-2 * u.abs()))


def _body(blob: bytes) -> bytes:
    """The decoded body of a format-2 (uint32 n | manifest | data) or format-3 (varint n | header |
    data) artifact."""
    if blob[8] == 0:
        return blob[9:]
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 2 ** blob[9]}])
    return dec.decompress(blob[10:])


def _v1(blob: bytes, xz: bool) -> bytes:
    """Format 1 (b"SLIMTUNE" | uint32 | manifest | data, data xz-compressed or not) of the same model."""
    body = _body(blob)
    (n,) = struct.unpack_from("<I", body)
    manifest, data = json.loads(body[4 : 4 + n]), body[4 + n :]
    manifest.update(format=1, compression="lzma" if xz else "none", data_length=len(data))
    head = json.dumps(manifest, sort_keys=True).encode()
    payload = lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32) if xz else data
    return b"SLIMTUNE" + struct.pack("<I", len(head)) + head + payload


def _plain(blob: bytes) -> bytes:
    """The same format-2/3 artifact with codec 0 (body stored as is), as `save` writes when LZMA does not pay."""
    return blob[:8] + b"\x00" + _body(blob)


def _old(name: str) -> Callable[[], bytes]:
    return lambda: (OLD / f"{name}.slim").read_bytes()


def _split3(blob: bytes) -> tuple[int, bytes, bytes]:
    """(where the header starts, header, data) of a format-3 artifact's decoded body."""
    body = _body(blob)
    n, at = 0, 0
    while True:
        n |= (body[at] & 0x7F) << (7 * at)
        at += 1
        if body[at - 1] < 0x80:
            return at, body[at : at + n], body[at + n :]


def _with_header(blob: bytes, edit: Callable[[dict], None], codec: int = 0) -> bytes:
    """A format-3 artifact whose header (as `read_header` gives it) was edited, same data."""
    _, head, data = _split3(blob)
    h = read_header(head)
    edit(h)
    new = pack_header(h["recipe"], h["tensors"])
    body = varint(len(new)) + new + data
    if codec == 0:
        return MAGIC3 + b"\x00" + body
    return MAGIC3 + b"\x01\x14" + lzma.compress(body, format=lzma.FORMAT_RAW,
                                                filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 2**20}])


#: name -> () -> bytes of a tiny artifact; together they cover every container and encoding.
WRITERS: dict[str, Callable[[], bytes]] = {
    "v3-lzma-bitmask-4bit": lambda: _saved(MLP, MagnitudePrune(sparsity=0.5, scope="layer"), AffineQuantize(bits=4)),
    "v3-lzma-rice": lambda: _saved(MLP, MagnitudePrune(sparsity=0.9, scope="layer")),
    "v3-lzma-delta-3bit": lambda: _saved(MLP, MagnitudePrune(sparsity=0.97, scope="layer"),
                                         AffineQuantize(bits=3, per_channel=False)),
    "v3-lzma-int8": lambda: _saved(MLP, AffineQuantize(bits=8, symmetric=True)),
    "v3-lzma-bytecodes": lambda: _saved({**MLP, "input_shape": [32], "width": 16},
                                        AffineQuantize(bits=6, per_channel=False), tweak=_laplace),
    "v3-lzma-structured": lambda: _saved(CNN, StructuredPrune(ratio=0.5), AffineQuantize(bits=5)),
    "v3-lzma-hook": lambda: _saved(HOOK, MagnitudePrune(sparsity=0.6)),
    "v3-lzma-fp32-widths": lambda: _saved({**MLP, "depth": 2, "width": [12, 6]}, MagnitudePrune(sparsity=0.7),
                                          AffineQuantize(bits=4, fp16=False)),
    "v3-plain-dense": lambda: _plain(_saved(MLP)),
    "v3-plain-sparse-codes": lambda: _plain(_saved(MLP, MagnitudePrune(sparsity=0.8), AffineQuantize(bits=4))),
    **{name: _old(name) for name in ("v2-lzma-bitmask-4bit", "v2-lzma-rice", "v2-lzma-delta-3bit", "v2-lzma-int8",
                                     "v2-lzma-bytecodes", "v2-lzma-structured", "v2-lzma-hook", "v2-plain-dense",
                                     "v2-plain-sparse-codes", "v1-none", "v1-xz")},
}


@pytest.fixture(scope="module")
def blobs() -> dict[str, bytes]:
    return {name: write() for name, write in WRITERS.items()}


def _load_or_refuse(blob: bytes) -> nn.Module | None:
    """The model, or None after exactly one one-line ArtifactError."""
    try:
        model = compress.load(blob, builders=BUILDERS)
    except compress.ArtifactError as exc:
        assert "\n" not in str(exc) and str(exc), repr(exc)
        return None
    man = compress.read_manifest(blob)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    if blob[:8] == MAGIC3:  # names are the model's; shapes where stored
        assert len(man["tensors"]) == len(shapes)
        assert all(t["shape"] == shape
                   for t, shape in zip(man["tensors"], shapes.values(), strict=True) if "shape" in t)
    else:
        assert shapes == {t["name"]: t["shape"] for t in man["tensors"]}
    recipe = compress.recipe_of(model)
    if recipe["arch"] != "hook":  # a hook's forward is the user's code; its config may have been flipped
        with torch.no_grad():
            assert model(torch.zeros(2, *recipe["input_shape"])).shape == (2, recipe["output_dim"])
    return model


def test_writers_cover_every_container_and_encoding(blobs):
    encodings = {(layout, values, "bits") for layout in ("dense", "bitmask", "delta", "rice")
                 for values in ("raw", "codes")} | {("dense", "codes", "bytes")}
    for version, magic in (("v3", MAGIC3), ("v2", MAGIC)):
        seen = set()
        for name, blob in blobs.items():
            if name.startswith(version) or (version == "v2" and name.startswith("v1")):
                man = compress.read_manifest(blob)
                seen |= {(blob[:8] if blob[:8] == b"SLIMTUNE" else blob[:9], man.get("compression"))}
                seen |= {(t["layout"], t["values"], t.get("packing", "bits")) for t in man["tensors"]}
                seen |= {k for t in man["tensors"] for k in ("stored", "scales", "shape") if k in t}
        containers = {(magic + b"\x00", None), (magic + b"\x01", None)}
        if version == "v2":
            containers |= {(b"SLIMTUNE", "none"), (b"SLIMTUNE", "lzma")}
        else:  # fp16 values and scales, stored shapes (structured pruning, hooks)
            containers |= {"stored", "scales", "shape"}
        assert containers | encodings <= seen, (version, (containers | encodings) - seen)


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_every_truncation_is_refused(blobs, fmt):
    blob = blobs[fmt]
    assert _load_or_refuse(blob) is not None  # the whole file loads
    for n in range(len(blob)):
        assert _load_or_refuse(blob[:n]) is None, f"{fmt} cut to {n} of {len(blob)} bytes loaded"


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_random_byte_flips_refused_or_load_a_working_model(blobs, fmt):
    rng = random.Random(f"flips-{fmt}")
    blob, outcomes = blobs[fmt], {"refused": 0, "loaded": 0}
    for _ in range(300):
        bad = bytearray(blob)
        for _ in range(rng.choice((1, 1, 2, 4))):
            bad[rng.randrange(len(bad))] ^= rng.randrange(1, 256)
        outcomes["loaded" if _load_or_refuse(bytes(bad)) is not None else "refused"] += 1
    assert outcomes["refused"] > 0, outcomes


@pytest.mark.parametrize("fmt", sorted(f for f in WRITERS if "-lzma-" in f))
def test_flips_behind_the_lzma_layer_refused_or_load_a_working_model(blobs, fmt):
    """LZMA turns most flips into a corrupt stream; these flip the decoded body instead (stored
    with codec 0), half of them rewriting digits of the manifest (shapes, offsets, lengths) or,
    in format 3, bytes of the header (recipe numbers, encodings, counts)."""
    rng = random.Random(f"body-{fmt}")
    blob = _plain(blobs[fmt])
    if blob[:8] == MAGIC3:
        at, head, _ = _split3(blob)
        start, header = 9 + at, range(9 + at, 9 + at + len(head))
        values = (0, 1, 2, 3, 4, 8, 16, 127, 128, 255)
    else:
        (n,) = struct.unpack_from("<I", blob, 9)
        start, header = 13, [i for i in range(13, 13 + n) if chr(blob[i]).isdigit()]
        values = tuple(ord(str(d)) for d in range(10))
    outcomes = {"refused": 0, "loaded": 0}
    for _ in range(300):
        bad = bytearray(blob)
        for _ in range(rng.choice((1, 1, 2))):
            if rng.random() < 0.5:
                bad[rng.choice(header)] = rng.choice(values)
            else:
                bad[rng.randrange(start, len(bad))] ^= rng.randrange(1, 256)
        outcomes["loaded" if _load_or_refuse(bytes(bad)) is not None else "refused"] += 1
    assert outcomes["refused"] > 0 and outcomes["loaded"] > 0, outcomes


def _with_manifest(blob: bytes, edit: Callable[[dict], None], codec: int = 0) -> bytes:
    body = _body(blob)
    (n,) = struct.unpack_from("<I", body)
    manifest = json.loads(body[4 : 4 + n])
    edit(manifest)
    head = json.dumps(manifest).encode()
    new = struct.pack("<I", len(head)) + head + body[4 + n :]
    if codec == 0:
        return MAGIC + b"\x00" + new
    return MAGIC + b"\x01\x14" + lzma.compress(new, format=lzma.FORMAT_RAW,
                                               filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 2**20}])


def _zeros_lzma2(mib: int) -> bytes:
    """LZMA2 chunks (no end marker) that decode to ``mib`` MiB of zeros: one chunk of 1 MiB,
    repeated with its control byte set to 'state reset, new properties' so each decodes alone."""
    one = lzma.compress(bytes(2**20), format=lzma.FORMAT_RAW,
                        filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 2**20, "preset": 0}])[:-1]
    assert ((one[0] & 0x1F) << 16 | int.from_bytes(one[1:3], "big")) + 1 == 2**20  # one chunk, 1 MiB
    return one + (bytes([0xC0 | (one[0] & 0x1F)]) + one[1:]) * (mib - 1)


def _xz_block(payload: bytes) -> tuple[bytes, int, int]:
    """(block bytes, unpadded size, uncompressed size) of a one-block .xz stream without check."""
    x = lzma.compress(payload, format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE)
    index_size = (struct.unpack_from("<I", x, len(x) - 8)[0] + 1) * 4
    index = x[len(x) - 12 - index_size : len(x) - 12]
    values, shift, acc = [], 0, 0
    for b in index[2:]:  # indicator, record count (1), then unpadded and uncompressed sizes
        acc |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            values.append(acc)
            acc = shift = 0
            if len(values) == 2:
                break
    return x[12 : len(x) - 12 - index_size], values[0], values[1]


def _xz(blocks: list[tuple[bytes, int, int]]) -> bytes:
    """A .xz stream (no check) of these blocks, with its index and footer (xz's multibyte
    integers are LEB128, the same varint as format 3's header)."""
    from slimtune.compress._format3 import varint

    header = b"\xfd7zXZ\x00\x00\x00" + struct.pack("<I", binascii.crc32(b"\x00\x00"))
    index = b"\x00" + varint(len(blocks)) + b"".join(varint(u) + varint(n) for _, u, n in blocks)
    index += bytes(-len(index) % 4)
    index += struct.pack("<I", binascii.crc32(index))
    footer = struct.pack("<I", len(index) // 4 - 1) + b"\x00\x00"
    crc = struct.pack("<I", binascii.crc32(footer))
    return header + b"".join(b for b, _, _ in blocks) + index + crc + footer + b"YZ"


def _hostile(blobs: dict[str, bytes]) -> dict[str, bytes]:
    """Bombs and huge models, each a complete file."""
    plain = blobs["v2-plain-dense"]
    body = _body(plain)
    lzma2 = lzma.compress(body, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 2**20}])
    v1 = _v1(blobs["v2-plain-dense"], xz=False)
    (n,) = struct.unpack_from("<I", v1, 8)
    zero_block = _xz_block(bytes(2**20))
    v1_bomb = v1[: 12 + n].replace(b'"none"', b'"lzma"') + _xz([_xz_block(v1[12 + n :])] + [zero_block] * 1024)

    def huge_tensor(layout: str, parts: list[int]) -> Callable[[dict], None]:
        def edit(m: dict) -> None:
            m["tensors"][0].update(shape=[10**6, 10**6], layout=layout, parts=parts)
        return edit

    block, unpadded, usize = _xz_block(v1[12 + n :])
    head_len = (block[0] + 1) * 4
    at = block.index(b"\x21\x01", 2) + 2  # filter LZMA2, 1 property byte: the dictionary size
    head = block[:at] + bytes([40]) + block[at + 1 : head_len - 4]  # 40: a 4 GiB dictionary
    big_dict = head + struct.pack("<I", binascii.crc32(head)) + block[head_len:]

    return {
        "xz-dictionary-4GiB": v1[: 12 + n].replace(b'"none"', b'"lzma"') + _xz([(big_dict, unpadded, usize)]),
        "lzma2-bomb-1GiB-after-valid-body": MAGIC + b"\x01\x14" + lzma2[:-1] + _zeros_lzma2(1024) + b"\x00",
        "lzma2-bomb-1GiB-of-zeros": MAGIC + b"\x01\x14" + _zeros_lzma2(1024) + b"\x00",
        "lzma2-manifest-16MiB-of-zeros": MAGIC + b"\x01\x18" + lzma.compress(
            struct.pack("<I", 16 * 2**20) + bytes(16 * 2**20), format=lzma.FORMAT_RAW,
            filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 2**24, "preset": 0}]),
        "xz-bomb-1GiB-after-valid-data": v1_bomb,
        "recipe-width-1e9": _with_manifest(plain, lambda m: m["recipe"].update(width=10**9)),
        "recipe-width-1e9-lzma": _with_manifest(plain, lambda m: m["recipe"].update(width=10**9), codec=1),
        "recipe-depth-1e9": _with_manifest(plain, lambda m: m["recipe"].update(depth=10**9)),
        "recipe-input-1e9": _with_manifest(plain, lambda m: m["recipe"].update(input_shape=[10**9])),
        "tensor-1e12-dense": _with_manifest(plain, huge_tensor("dense", [4 * 10**12])),
        "tensor-1e12-delta": _with_manifest(plain, huge_tensor("delta", [1, 4])),
        "tensor-1e12-rice": _with_manifest(plain, huge_tensor("rice", [3, 4])),
        "manifest-length-4GiB": MAGIC + b"\x00" + b"\xff\xff\xff\xff" + body[4:],
        **_hostile_v3(blobs["v3-plain-dense"]),
    }


def _hostile_v3(plain: bytes) -> dict[str, bytes]:
    """The same attacks on format 3's header: binary recipe numbers, stored shapes, counts."""
    body = _body(plain)
    lzma2 = lzma.compress(body, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 2**20}])
    zeros = lzma.compress(varint(16 * 2**20) + bytes(16 * 2**20), format=lzma.FORMAT_RAW,
                          filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 2**24, "preset": 0}])
    widths = bytes([1, 1]) + varint(16) + varint(4) + varint(10**9) + varint(0) + varint(12) + varint(0)

    def first(**fields) -> Callable[[dict], None]:
        return lambda h: h["tensors"][0].update(fields)

    return {
        "v3-lzma2-bomb-1GiB-after-valid-body": MAGIC3 + b"\x01\x14" + lzma2[:-1] + _zeros_lzma2(1024) + b"\x00",
        "v3-lzma2-bomb-1GiB-of-zeros": MAGIC3 + b"\x01\x14" + _zeros_lzma2(1024) + b"\x00",
        "v3-lzma2-header-16MiB-of-zeros": MAGIC3 + b"\x01\x18" + zeros,
        "v3-header-length-over-limit": MAGIC3 + b"\x00" + varint(16 * 2**20 + 1) + body,
        "v3-recipe-width-1e9": _with_header(plain, lambda h: h["recipe"].update(width=10**9)),
        "v3-recipe-width-1e9-lzma": _with_header(plain, lambda h: h["recipe"].update(width=10**9), codec=1),
        "v3-recipe-depth-1e9": _with_header(plain, lambda h: h["recipe"].update(depth=10**9)),
        "v3-recipe-depth-1e9-widths": MAGIC3 + b"\x00" + varint(len(widths)) + widths,
        "v3-recipe-input-1e9": _with_header(plain, lambda h: h["recipe"].update(input_shape=[10**9])),
        "v3-tensor-1e12-dense": _with_header(plain, first(shape=[10**6, 10**6])),
        "v3-tensor-1e12-delta": _with_header(plain, first(shape=[10**6, 10**6], layout="delta", nnz=10**12, index=4)),
        "v3-nnz-1e12-rice": _with_header(plain, first(layout="rice", nnz=10**12, index=3)),
        "v3-tensor-count-1e9": MAGIC3 + b"\x00" + varint(7) + bytes([1, 1, 16, 4, 1, 12]) + varint(10**9)[:1],
    }


def test_bombs_and_huge_models_refused_in_bounded_memory(blobs, tmp_path):
    files = {}
    for name, blob in _hostile(blobs).items():
        files[name] = tmp_path / f"{name}.slim"
        files[name].write_bytes(blob)
    assert files["lzma2-bomb-1GiB-after-valid-body"].stat().st_size < 300_000
    script = textwrap.dedent("""
        import json, resource, sys, torch, compress
        torch.set_num_threads(1)
        vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + 256 * 2**20, resource.RLIM_INFINITY))
        out = {}
        for name, path in json.loads(sys.argv[1]).items():
            try:
                compress.load(path)
                out[name] = "loaded"
            except compress.ArtifactError as exc:
                out[name] = "ArtifactError: " + str(exc)
            except BaseException as exc:
                out[name] = f"{type(exc).__name__}: {exc}"
        print(json.dumps(out))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script, json.dumps({k: str(v) for k, v in files.items()})],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, got in results.items():
        assert got.startswith("ArtifactError: ") and "\n" not in got, (name, got)
    assert "more than the" in results["lzma2-bomb-1GiB-after-valid-body"]
    assert "more than the" in results["xz-bomb-1GiB-after-valid-data"]
    assert "Memory usage limit" in results["xz-dictionary-4GiB"]
    assert "max_params" in results["recipe-width-1e9"] and "max_params" in results["tensor-1e12-delta"]
    assert "more than the" in results["v3-lzma2-bomb-1GiB-after-valid-body"]
    assert "max_params" in results["v3-recipe-width-1e9"] and "max_params" in results["v3-recipe-input-1e9"]
    assert "larger than the model" in results["v3-tensor-1e12-delta"]
    assert "non-zeros" in results["v3-nnz-1e12-rice"] and "exceeds" in results["v3-header-length-over-limit"]


def test_max_params_is_the_callers_choice(blobs):
    for name in ("v3-lzma-bitmask-4bit", "v2-lzma-bitmask-4bit"):
        blob = blobs[name]
        params = sum(t.numel() for t in compress.load(blob).state_dict().values())
        assert compress.load(blob, max_params=params) is not None
        with pytest.raises(compress.ArtifactError, match="max_params"):
            compress.load(blob, max_params=params - 1)


# ----------------------------------------------------------------- sources


def test_load_takes_a_path_bytes_or_a_binary_file_object(blobs, tmp_path):
    blob = blobs["v3-lzma-structured"]
    (tmp_path / "m.slim").write_bytes(blob)
    x = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(0))
    with open(tmp_path / "m.slim", "rb") as f:
        models = [compress.load(tmp_path / "m.slim"), compress.load(str(tmp_path / "m.slim")),
                  compress.load(blob), compress.load(bytearray(blob)), compress.load(io.BytesIO(blob)),
                  compress.load(f)]
    with torch.no_grad():
        outs = [m(x) for m in models]
    assert all(torch.equal(o, outs[0]) for o in outs)
    assert compress.read_manifest(io.BytesIO(blob)) == compress.read_manifest(tmp_path / "m.slim")
    with pytest.raises(TypeError, match="binary mode"):
        compress.load(io.StringIO("text"))


# ------------------------------------------------------------------- trust


def test_hook_model_is_imported_only_with_the_callers_consent(tmp_path, monkeypatch):
    canary = tmp_path / "imported"
    module = f"slimtune_canary_{os.getpid()}"
    (tmp_path / f"{module}.py").write_text(
        f"import pathlib\npathlib.Path({str(canary)!r}).write_text('ran')\n"
        "from tests.user_models import residual_mlp as build\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = {**HOOK, "hook": f"{module}:build"}
    torch.manual_seed(0)
    model = compress.build_model(recipe, builder=user_models.residual_mlp)  # imports nothing
    compress.save(model, tmp_path / "m.slim")
    blob = (tmp_path / "m.slim").read_bytes()
    with pytest.raises(compress.UntrustedCodeError) as info:
        compress.load(blob)
    msg = str(info.value)
    assert "\n" not in msg and "trust_code=True" in msg and f"{module}:build" in msg and "builders=" in msg
    assert isinstance(info.value, compress.ArtifactError)
    assert not canary.exists() and module not in sys.modules
    x = torch.randn(2, 16)
    loaded = compress.load(blob, builders={f"{module}:build": user_models.residual_mlp})
    assert not canary.exists() and module not in sys.modules
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
        assert torch.equal(compress.load(blob, trust_code=True)(x), model(x))
    assert canary.read_text() == "ran"  # trust_code=True imported it, as asked


def test_builtin_architectures_load_without_any_import(blobs, monkeypatch):
    import importlib

    def refuse(name, *args, **kwargs):
        raise AssertionError(f"load imported {name}")

    monkeypatch.setattr(importlib, "import_module", refuse)
    for fmt in ("v3-lzma-structured", "v3-plain-dense", "v2-lzma-structured", "v1-xz", "v2-plain-dense"):
        assert compress.load(blobs[fmt]) is not None
    with pytest.raises(compress.ArtifactError, match="load imported tests.user_models"):
        compress.load(blobs["v3-lzma-hook"], trust_code=True)  # the one path that imports


def _hook_sweep(tmp_path: Path, blob: bytes) -> Path:
    """A sweep folder without Ray whose one trial is a hook model."""
    folder = tmp_path / "sweep"
    (folder / "artifacts").mkdir(parents=True)
    (folder / "artifacts" / "abc.slim").write_bytes(blob)
    meta = {"name": "hooked", "objectives": {"accuracy": "max", "size_bytes": "min"}, "constraints": {},
            "params": ["lr"], "kind": "classification", "preprocess": {"x_mean": 0.0, "x_std": 1.0},
            "spec": {"name": "hooked", "task": {"dataset": "data.csv", "model": HOOK["hook"]}}}
    (folder / "sweep.json").write_text(json.dumps(meta))
    write_results(folder, [{"trial_id": "abc", "trial_number": 0, "status": "ok", "lr": 0.01, "seed": 1,
                            "accuracy": 0.5, "size_bytes": len(blob), "dense_bytes": len(blob), "feasible": True,
                            "artifact": "artifacts/abc.slim"}], ["lr"])
    return folder


def test_export_and_predict_need_the_trust_flag_for_hook_models(blobs, tmp_path, capsys):
    folder = _hook_sweep(tmp_path, blobs["v3-lzma-hook"])
    ts, slim, csv = tmp_path / "m.pt", tmp_path / "m.slim", tmp_path / "x.csv"
    pd.DataFrame(torch.randn(5, 16, generator=torch.Generator().manual_seed(0)).numpy()).to_csv(csv, index=False)
    capsys.readouterr()
    assert main(["export", str(folder), "--trial", "0", "--out", str(ts)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--trust-code" in err and HOOK["hook"] in err and "\n" not in err and not ts.exists()
    assert main(["export", str(folder), "--trial", "0", "--out", str(ts), "--trust-code"]) == 0
    assert main(["export", str(folder), "--trial", "0", "--out", str(slim)]) == 0  # a byte copy runs nothing
    capsys.readouterr()
    assert main(["predict", str(slim), str(csv)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--trust-code" in err and "\n" not in err
    assert main(["predict", str(slim), str(csv), "--trust-code"]) == 0
    assert main(["predict", str(ts), str(csv)]) == 0  # TorchScript holds no hook to import
    (folder / "artifacts" / "abc.slim").write_bytes(blobs["v3-lzma-hook"][:100])
    capsys.readouterr()
    assert main(["export", str(folder), "--trial", "0", "--out", str(ts), "--trust-code"]) == 2
    assert "valid slimtune artifact" in capsys.readouterr().err


# ------------------------------------------------------------- permissions


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_artifacts_are_created_like_other_files_under_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        compress.save(compress.build_model(MLP), tmp_path / "m.slim")
        (tmp_path / "other.txt").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "m.slim").stat().st_mode & 0o777 == mode
    assert (tmp_path / "other.txt").stat().st_mode & 0o777 == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.slim", "other.txt"]
