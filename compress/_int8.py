"""Int8 execution on CPU: Linear layers run an int8 x int8 -> int32 matmul.

`to_int8(model)` returns an inference copy whose ``nn.Linear`` layers are
`Int8Linear`: activations are quantized per row on the fly (symmetric, 8 bits),
weights are stored as int8, and ``torch._int_mm`` (the ATen int8 GEMM that
torchao also uses) does the products.  Conv layers keep running in fp32.

Why this path: torch.ao's eager quantization API and quantized tensors are
deprecated; torchao's int8 tensor subclasses are slow in eager mode on CPU and
fast only under ``torch.compile``, which takes seconds to minutes per model.
`_int_mm` needs neither (see the README's "Compression" section for the
measured numbers).

A weight quantized by `AffineQuantize` is used exactly: its codes c and
zero-points B give w = (c - B) * Q, stored as the int8 ``c - o`` (o = B when
that fits in int8, else 128) plus an integer correction for ``B - o``.  Other
weights are quantized to int8 per output channel (symmetric) here.  Outputs
therefore differ from the fp32 model only by the activation rounding (and, for
fp32 weights, the weight rounding).  Use it to run or time a model; it is not
an artifact format (`save` the model before `to_int8`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ._quantize import dequantize, qparams_of, quantize

__all__ = ["Int8Linear", "to_int8"]


class Int8Linear(nn.Module):
    """``y = x W^T + b`` with int8 activations and weights and int32 accumulation."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        qp = qparams_of(linear)
        if qp is not None:
            codes = quantize(w, qp).to(torch.int16)
            zero = qp.zero_point.reshape(-1).to(torch.int16)
            scale = qp.scale.reshape(-1).float()
            if not torch.equal(dequantize(codes.to(torch.uint8), qp), w):
                raise ValueError(
                    "Linear weight is off its quantization grid (changed after AffineQuantize); "
                    "apply AffineQuantize again before `to_int8`"
                )
            zero = zero.expand(w.shape[0]) if zero.numel() == 1 else zero
            signed = codes - zero[:, None]
            if int(signed.min()) >= -128 and int(signed.max()) <= 127:
                offset = zero
            else:  # 8-bit asymmetric codes: shift by 128 and correct for B - 128 in int32
                offset = torch.full_like(zero, 128)
            w8 = (codes - offset[:, None]).to(torch.int8)
            correction = (zero - offset).to(torch.int32)
        else:
            amax = w.abs().amax(dim=1)
            scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
            w8 = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)
            correction = torch.zeros(w.shape[0], dtype=torch.int32)
        scale = scale.expand(w.shape[0]) if scale.numel() == 1 else scale
        self.register_buffer("weight_t", w8.t().contiguous())  # (in, out) for _int_mm
        self.register_buffer("weight_scale", scale.contiguous())
        self.register_buffer("correction", correction if bool(correction.any()) else None)
        bias = linear.bias.detach().float().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1]).float()
        amax = x.abs().amax(dim=1, keepdim=True)
        x_scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
        xq = torch.round(x / x_scale).to(torch.int8)  # |x / x_scale| <= 127 by construction
        acc = torch._int_mm(xq, self.weight_t)
        if self.correction is not None:
            acc = acc - xq.sum(dim=1, keepdim=True, dtype=torch.int32) * self.correction
        y = acc.float().mul_(x_scale).mul_(self.weight_scale)  # in place: one buffer, fewer passes
        if self.bias is not None:
            y = y.add_(self.bias)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def to_int8(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` whose ``nn.Linear`` layers are `Int8Linear`."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, but got {type(model).__name__}")
    out = copy.deepcopy(model).eval()
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, Int8Linear(child))
    return out
