"""Bit packing shared by the ONNX and C exports: k-bit codes in one little-endian bit stream.

Element i of a k-bit stream occupies bits ``i*k .. i*k+k-1``, least significant bit first, in
bytes filled from their lowest bit: the layout ONNX gives INT4/UINT4 and INT2/UINT2 tensors in
``raw_data`` (the first element in the low bits of byte 0), and the one ``model.c`` decodes.
A pruning mask is the 1-bit stream of (weight != 0).
"""

from __future__ import annotations

import numpy as np

from slimtune.compress import pack_bits  # the artifact's own k-bit packing (LSB first), reused as is

__all__ = ["gap_stream", "pack_bits"]


def gap_stream(mask: np.ndarray, max_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Where the non-zero elements of a flat ``mask`` are, as gaps of at most ``max_gap``.

    Returns ``(gaps, positions)``: ``positions`` the stored elements in order (every non-zero one,
    plus, where two are more than ``max_gap`` apart, filler elements in between, whose value is
    the layer's zero); ``gaps[0] = positions[0]`` and ``gaps[i] = positions[i] - positions[i-1]``,
    each at most ``max_gap``, so ``positions = cumsum(gaps)``.
    """
    nz = np.flatnonzero(np.asarray(mask).reshape(-1))
    out: list[int] = []
    prev = 0
    if len(nz) and nz[0] == 0:
        out.append(0)
        nz = nz[1:]
    for p in nz.tolist():
        while p - prev > max_gap:
            prev += max_gap
            out.append(prev)
        out.append(p)
        prev = p
    positions = np.asarray(out, dtype=np.int64)
    gaps = np.diff(np.concatenate([[0], positions])).astype(np.int64)
    return gaps, positions
