"""Affine k-bit post-training quantization of Linear/Conv weights.

codes = clamp(round(w / Q + B), 0, 2**k - 1),  dequantized w = (codes - B) * Q

Q (scale, fp32) and the integer zero-point B are per tensor or per output
channel.  The module keeps running in fp32 on the dequantized weights; the
quantization parameters are kept in ``module.weight_qparams`` so `save` can
store the k-bit codes.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn as nn

from ._config import register
from ._models import prunable_modules

__all__ = ["AffineQuantize", "QParams", "choose_qparams", "quantize", "dequantize"]

QPARAMS_ATTR = "weight_qparams"


@dataclasses.dataclass(frozen=True)
class AffineQuantize:
    """Quantize every Linear/Conv1d/Conv2d weight to ``bits`` (2..8) bits.

    per_channel: one scale/zero-point per output channel (else one per tensor).
    symmetric:   B = 2**(bits-1), Q = max|w| / (2**(bits-1) - 1); otherwise Q and
                 B come from min/max of w, with the range widened to include 0
                 so zeros (pruned weights) stay exactly 0.
    """

    VERSION: ClassVar[int] = 1
    bits: int = 8
    per_channel: bool = True
    symmetric: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise TypeError(f"`bits` must be an int, but got bits={self.bits!r}")
        if not 2 <= self.bits <= 8:
            raise ValueError(
                f"`2 <= bits <= 8` must hold, but got bits={self.bits}; for fp32 weights "
                "leave AffineQuantize out"
            )
        for name in ("per_channel", "symmetric"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"`{name}` must be a bool, but got {name}={getattr(self, name)!r}")


@dataclasses.dataclass(frozen=True)
class QParams:
    """Quantization parameters of one weight tensor.

    scale and zero_point have shape (C, 1, ...) for per-channel (axis 0) or
    shape () for per-tensor; zero_point holds integers as float32.
    """

    bits: int
    scale: torch.Tensor
    zero_point: torch.Tensor

    @property
    def per_channel(self) -> bool:
        return self.scale.dim() > 0


def choose_qparams(w: torch.Tensor, bits: int, per_channel: bool, symmetric: bool) -> QParams:
    """Scale and zero-point for ``w`` (see `AffineQuantize`)."""
    w = w.detach().float()
    qmax = 2**bits - 1
    if per_channel:
        flat = w.reshape(w.shape[0], -1)
        lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    else:
        lo, hi = w.min(), w.max()
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    if symmetric:
        half = 2 ** (bits - 1)
        scale = torch.maximum(hi, -lo) / (half - 1)
        zero_point = torch.full_like(scale, float(half))
    else:
        scale = (hi - lo) / qmax
    # An all-zero channel: any positive scale represents it exactly.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    if not symmetric:
        zero_point = torch.clamp(torch.round(-lo / scale), 0, qmax)
    if per_channel:
        view = (-1,) + (1,) * (w.dim() - 1)
        scale, zero_point = scale.reshape(view), zero_point.reshape(view)
    return QParams(bits, scale.contiguous(), zero_point.contiguous())


def quantize(w: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Integer codes in [0, 2**bits - 1] (dtype uint8)."""
    codes = torch.round(w.detach().float() / qp.scale + qp.zero_point)
    return torch.clamp(codes, 0, 2**qp.bits - 1).to(torch.uint8)


def dequantize(codes: torch.Tensor, qp: QParams) -> torch.Tensor:
    """fp32 weights ``(codes - B) * Q``."""
    return (codes.float() - qp.zero_point) * qp.scale


@register(AffineQuantize)
def _affine_quantize(model: nn.Module, config: AffineQuantize) -> nn.Module:
    for _, module in prunable_modules(model):
        w = module.weight
        qp = choose_qparams(w, config.bits, config.per_channel, config.symmetric)
        with torch.no_grad():
            w.copy_(dequantize(quantize(w, qp), qp))
        object.__setattr__(module, QPARAMS_ATTR, qp)
    return model


def qparams_of(module: nn.Module) -> QParams | None:
    """The QParams `AffineQuantize` recorded on ``module`` (None if not quantized)."""
    return getattr(module, QPARAMS_ATTR, None)
