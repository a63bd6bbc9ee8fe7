"""Bit-level codes the artifact uses: k-bit packing, LEB128 varints, Golomb-Rice gaps."""

from __future__ import annotations

import numpy as np

__all__ = ["pack_bits", "unpack_bits"]


def pack_bits(codes: np.ndarray, bits: int) -> bytes:
    """Pack unsigned ints < 2**bits (bits <= 32) to exactly ``bits`` bits each (LSB first)."""
    codes = np.asarray(codes).astype(np.uint64).reshape(-1)
    planes = ((codes[:, None] >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack_bits(buf: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_bits`: ``count`` values (uint8 for bits <= 8, else uint64)."""
    flat = np.unpackbits(np.frombuffer(buf, np.uint8), count=count * bits, bitorder="little")
    weights = np.uint64(1) << np.arange(bits, dtype=np.uint64)
    values = (flat.reshape(count, bits).astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
    return values.astype(np.uint8) if bits <= 8 else values


def _rice_encode(values: np.ndarray) -> bytes:
    """Golomb-Rice code of non-negative ints with the k (0..32) that makes it shortest.

    Bytes: k, the count n as a LEB128 varint, the quotients ``v >> k`` in unary
    (that many 0 bits, then a 1), then the remainders at k bits each.
    """
    v = np.asarray(values, dtype=np.uint64).reshape(-1)
    sizes = [int((v >> np.uint64(k)).sum()) + v.size * (k + 1) for k in range(33)]
    k = int(np.argmin(sizes))
    q = (v >> np.uint64(k)).astype(np.int64)
    unary = np.zeros(int(q.sum()) + v.size, dtype=np.uint8)
    unary[np.cumsum(q + 1) - 1] = 1
    rem = v & np.uint64((1 << k) - 1)
    head = bytes([k]) + _varint_encode(np.array([v.size], dtype=np.uint64))
    return head + np.packbits(unary, bitorder="little").tobytes() + pack_bits(rem, k)


def _varint_encode(values: np.ndarray) -> bytes:
    """LEB128: 7 bits per byte, high bit set on all but the last byte of a value."""
    v = np.asarray(values, dtype=np.uint64).reshape(-1)
    if v.size == 0:
        return b""
    nbytes = np.ones(v.shape, dtype=np.int64)
    rest = v >> np.uint64(7)
    while rest.any():
        nbytes += rest > 0
        rest >>= np.uint64(7)
    width = int(nbytes.max())
    pos = np.arange(width)
    groups = ((v[:, None] >> (np.uint64(7) * pos.astype(np.uint64))) & np.uint64(0x7F)).astype(np.uint8)
    groups |= np.where(pos[None, :] < nbytes[:, None] - 1, 0x80, 0).astype(np.uint8)
    return groups[pos[None, :] < nbytes[:, None]].tobytes()


def _varint_decode(buf: bytes) -> np.ndarray:
    b = np.frombuffer(buf, np.uint8)
    if b.size == 0:
        return np.zeros(0, dtype=np.int64)
    last = (b & 0x80) == 0
    value_id = np.concatenate([[0], np.cumsum(last)[:-1]])
    starts = np.flatnonzero(np.concatenate([[True], last[:-1]]))
    shift = (np.arange(b.size) - starts[value_id]) * 7
    out = np.zeros(int(last.sum()), dtype=np.int64)
    np.add.at(out, value_id, (b & 0x7F).astype(np.int64) << shift)
    return out
