"""Affine k-bit quantization of Linear/Conv weights: post-training (PTQ) and
quantization-aware fine-tuning (QAT).

codes = clamp(round(w / Q + B), 0, 2**k - 1),  dequantized w = (codes - B) * Q

Q (scale) and the integer zero-point B are per tensor or per output channel;
with ``fp16=True`` (the default) Q is rounded up to a float16 value and the
layer's bias to the nearest float16, so the artifact stores them in 2 bytes
each and the model evaluated before `save` is the one `load` gives back.  The
module keeps running in fp32 on the dequantized weights; the quantization
parameters are kept in ``module.weight_qparams`` so `save` can store the k-bit
codes.

QAT: `FakeQuantize` puts a parametrization on each weight, so the forward pass
sees the quantized weight while the optimizer updates the latent fp32 weight
(straight-through estimator: the gradient passes the rounding unchanged); with
``fp16`` the bias is seen rounded to float16 the same way.  `AffineQuantize`
afterwards removes them and quantizes the latent weight, which gives exactly
the weights (and biases) the last QAT forward pass used.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from ._config import closest, register
from ._models import prunable_modules

__all__ = ["AffineQuantize", "FakeQuantize", "QParams", "choose_qparams", "quantize", "dequantize"]

QPARAMS_ATTR = "weight_qparams"


@dataclasses.dataclass(frozen=True)
class _QuantFields:
    """The fields AffineQuantize and FakeQuantize share, validated once."""

    VERSION: ClassVar[int] = 3
    #: Fields a JSON of an older version lacks, with the value they had then
    #: (version 2 had no per-layer widths: their defaults mean one width for all).
    UPGRADES: ClassVar[dict[int, dict[str, object]]] = {1: {"fp16": False}, 2: {}}
    bits: int = 8
    per_channel: bool = True
    symmetric: bool = False
    fp16: bool = True
    bits_first: int | None = None
    bits_last: int | None = None
    layer_bits: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_bits", _layer_bits_pairs(self.layer_bits))
        _check_quant_fields(self)

    def widths(self, model: nn.Module) -> dict[str, int]:
        """The bit width of each Linear/Conv layer of ``model`` (by module name, in module
        order): ``layer_bits`` where it names the layer, else ``bits_last`` for the last
        layer, ``bits_first`` for the first, ``bits`` for the rest."""
        names = [n for n, _ in prunable_modules(model)]
        given = dict(self.layer_bits)
        for name in given:
            if name not in names:
                raise ValueError(
                    f"`layer_bits` names {name!r}, which is not a Linear/Conv layer of the model; "
                    f"its layers are {names}.{closest(name, names)}"
                )
        out = {n: self.bits for n in names}
        if names and self.bits_first is not None:
            out[names[0]] = self.bits_first
        if names and self.bits_last is not None:
            out[names[-1]] = self.bits_last
        out.update(given)
        return out


@dataclasses.dataclass(frozen=True)
class AffineQuantize(_QuantFields):
    """Quantize every Linear, Conv, ConvTranspose and Embedding weight to ``bits`` (2..8) bits.

    Mixed precision: ``bits_first``/``bits_last`` (2..8) set the first and last
    layer's width, ``layer_bits`` (``{module name: width}``, kept as ``(name, width)``
    pairs in the order given) any layer's; see `widths`.  `compress.assign_bits` chooses
    ``layer_bits`` from each layer's sensitivity within an average-bits budget.
    The artifact stores each layer's width with its codes.

    per_channel: one scale/zero-point per output channel (else one per tensor).
    symmetric:   B = 2**(bits-1), Q = max|w| / (2**(bits-1) - 1); otherwise Q and
                 B come from min/max of w, with the range widened to include 0
                 so zeros (pruned weights) stay exactly 0.
    fp16:        round Q up to a float16 value (the range still covers w) and
                 the layer's bias to the nearest float16; `save` then stores
                 them in 2 bytes each.  A tensor with a value outside
                 float16's normal range keeps fp32 (it is stored in 4 bytes).
    """


@dataclasses.dataclass(frozen=True)
class FakeQuantize(_QuantFields):
    """Prepare quantization-aware training (QAT) of every Linear/Conv weight.

    The forward pass uses the weight quantized as ``AffineQuantize`` with the
    same fields would quantize it (qparams recomputed from the latent weight at
    every pass); gradients flow to the latent fp32 weight through a
    straight-through estimator.  Fine-tune the returned model, then apply
    ``AffineQuantize`` to it (required before `save`)::

        qat = compress(model, FakeQuantize(bits=4))
        train(qat, ...)
        small = compress(qat, AffineQuantize(bits=4))
    """


def _layer_bits_pairs(raw: Any) -> tuple[tuple[str, int], ...]:
    """``layer_bits`` as ``((name, width), ...)`` from a mapping or pairs (JSON gives lists)."""
    items = raw.items() if isinstance(raw, Mapping) else raw
    try:
        pairs = tuple((name, width) for name, width in items)
    except (TypeError, ValueError):
        raise TypeError(
            f"`layer_bits` must map layer names to widths, e.g. {{'net.0': 8}}, but got layer_bits={raw!r}"
        ) from None
    names = [name for name, _ in pairs]
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"`layer_bits` keys must be module names (str), but got {name!r} in layer_bits={raw!r}")
        if names.count(name) > 1:
            raise ValueError(f"`layer_bits` names each layer once, but {name!r} appears {names.count(name)} times")
    return pairs


def _check_width(field: str, value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{field}` must be an int, but got {field}={value!r}")
    if not 2 <= value <= 8:
        raise ValueError(
            f"`2 <= {field} <= 8` must hold, but got {field}={value}; for fp32 weights "
            f"leave {name} out"
        )


def _check_quant_fields(config: _QuantFields) -> None:
    name = type(config).__name__
    _check_width("bits", config.bits, name)
    for field in ("bits_first", "bits_last"):
        if getattr(config, field) is not None:
            _check_width(field, getattr(config, field), name)
    for layer, width in config.layer_bits:
        _check_width(f"layer_bits[{layer!r}]", width, name)
    for field in ("per_channel", "symmetric", "fp16"):
        if not isinstance(getattr(config, field), bool):
            raise TypeError(f"`{field}` must be a bool, but got {field}={getattr(config, field)!r}")


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


def choose_qparams(w: torch.Tensor, bits: int, per_channel: bool, symmetric: bool,
                   fp16: bool = False) -> QParams:
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
    if fp16:
        scale = _fp16_up(scale)
    if not symmetric:
        zero_point = torch.clamp(torch.round(-lo / scale), 0, qmax)
    if per_channel:
        view = (-1,) + (1,) * (w.dim() - 1)
        scale, zero_point = scale.reshape(view), zero_point.reshape(view)
    return QParams(bits, scale.contiguous(), zero_point.contiguous())


def _fp16_up(x: torch.Tensor) -> torch.Tensor:
    """The smallest float16 values >= the positive ``x`` (as float32), or ``x`` unchanged
    when some value lies outside float16's normal range [2**-14, 65504]."""
    if not bool(((x >= 2.0**-14) & (x <= 65504.0)).all()):
        return x
    h = x.to(torch.float16)
    up = (h.view(torch.int16) + 1).view(torch.float16)  # the next float16 up (positive values)
    return torch.where(h.float() < x, up, h).float()


def round_fp16_(t: torch.Tensor) -> None:
    """In place: ``t`` rounded to the nearest float16 values, unless one would overflow."""
    with torch.no_grad():
        half = t.detach().to(torch.float16)
        if not bool((torch.isfinite(t) & ~torch.isfinite(half)).any()):
            t.copy_(half.to(t.dtype))


def quantize(w: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Integer codes in [0, 2**bits - 1] (dtype uint8)."""
    codes = torch.round(w.detach().float() / qp.scale + qp.zero_point)
    return torch.clamp(codes, 0, 2**qp.bits - 1).to(torch.uint8)


def dequantize(codes: torch.Tensor, qp: QParams) -> torch.Tensor:
    """fp32 weights ``(codes - B) * Q``."""
    return (codes.float() - qp.zero_point) * qp.scale


class _FakeQuant(nn.Module):
    """Weight parametrization: quantize-dequantize forward, identity gradient."""

    def __init__(self, bits: int, per_channel: bool, symmetric: bool, fp16: bool) -> None:
        super().__init__()
        self.bits, self.per_channel, self.symmetric, self.fp16 = bits, per_channel, symmetric, fp16

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        qp = choose_qparams(w, self.bits, self.per_channel, self.symmetric, self.fp16)
        q = dequantize(quantize(w, qp), qp).to(w.dtype)
        # Straight-through estimator: the value is exactly q, the gradient w.r.t. w is 1.
        return q + (w - w.detach())


class _FakeHalf(nn.Module):
    """Bias parametrization: rounded to float16 forward (as `AffineQuantize` leaves it),
    identity gradient."""

    def forward(self, b: torch.Tensor) -> torch.Tensor:
        half = b.detach().clone()
        round_fp16_(half)
        return half + (b - b.detach())


@register(FakeQuantize)
def _fake_quantize(model: nn.Module, config: FakeQuantize) -> nn.Module:
    widths = config.widths(model)
    for name, module in prunable_modules(model):
        _remove_fake_quant(module)
        parametrize.register_parametrization(
            module, "weight", _FakeQuant(widths[name], config.per_channel, config.symmetric, config.fp16)
        )
        bias = getattr(module, "bias", None)  # an Embedding has none
        if config.fp16 and isinstance(bias, nn.Parameter) and bias.dtype == torch.float32:
            parametrize.register_parametrization(module, "bias", _FakeHalf())
    return model


def _remove_fake_quant(module: nn.Module) -> None:
    """Drop `FakeQuantize`'s parametrizations, keeping the latent fp32 weight and bias."""
    if not parametrize.is_parametrized(module, "weight"):
        return
    ours = {"weight": _FakeQuant, "bias": _FakeHalf}
    if not set(module.parametrizations) <= set(ours) or not all(
        isinstance(p, ours[name]) for name in module.parametrizations for p in module.parametrizations[name]
    ):
        raise ValueError(
            f"{type(module).__name__} has a parametrization slimtune did not add; "
            "remove it (torch.nn.utils.parametrize.remove_parametrizations) before compressing"
        )
    # By hand, not parametrize.remove_parametrizations: that deletes the `weight`
    # property from the parametrized class, which deep copies of the module share.
    latent = {name: module.parametrizations[name].original for name in module.parametrizations}
    names = ("weight", "bias") if "bias" in latent or hasattr(module, "bias") else ("weight",)  # Embedding: no bias
    delattr(module, "parametrizations")  # Module.__delattr__ drops the submodule
    module.__class__ = module.__class__.__bases__[0]
    if "bias" in names and "bias" not in latent:  # re-registered after the weight: the state dict keeps its order
        latent["bias"] = module.bias
        delattr(module, "bias")
    for name in names:
        module.register_parameter(name, latent[name])


def is_fake_quantized(model: nn.Module) -> bool:
    """True while a `FakeQuantize` (QAT) parametrization is on some weight."""
    return any(parametrize.is_parametrized(m, "weight") for _, m in prunable_modules(model))


@register(AffineQuantize)
def _affine_quantize(model: nn.Module, config: AffineQuantize) -> nn.Module:
    widths = config.widths(model)
    for name, module in prunable_modules(model):
        _remove_fake_quant(module)
        w = module.weight
        qp = choose_qparams(w, widths[name], config.per_channel, config.symmetric, config.fp16)
        with torch.no_grad():
            w.copy_(dequantize(quantize(w, qp), qp))
        if config.fp16 and getattr(module, "bias", None) is not None and module.bias.dtype == torch.float32:
            round_fp16_(module.bias)
        object.__setattr__(module, QPARAMS_ATTR, qp)
    return model


def qparams_of(module: nn.Module) -> QParams | None:
    """The QParams `AffineQuantize` recorded on ``module`` (None if not quantized)."""
    return getattr(module, QPARAMS_ATTR, None)


def weight_codes(module: nn.Module) -> tuple[torch.Tensor, QParams] | None:
    """The integer codes (uint8, the weight's shape, in ``[0, 2**bits)``) of a quantized
    Linear/Conv weight and its QParams, so that ``(codes - zero_point) * scale`` is exactly
    ``module.weight``; None when the layer is not quantized. What the deployment exports store.
    Raises ValueError when the weight no longer equals its codes (it changed after quantizing)."""
    qp = qparams_of(module)
    if qp is None:
        return None
    w = module.weight.detach().cpu()
    qp = QParams(qp.bits, qp.scale.detach().cpu(), qp.zero_point.detach().cpu())
    codes = quantize(w, qp)
    if not torch.equal(dequantize(codes, qp), w.float()):
        raise ValueError(f"{type(module).__name__}'s weight is not its quantized codes any more (it changed after "
                         "AffineQuantize); quantize it again before exporting")
    return codes, qp
