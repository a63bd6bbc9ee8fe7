"""The attributes of a convolution, pooling or BatchNorm layer, as the deployable graph keeps them."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn


class Unsupported(ValueError):
    """A model the compressed exports cannot express: ``layer`` is the module path or function."""

    def __init__(self, layer: str, what: str) -> None:
        super().__init__(f"{layer}: {what}")
        self.layer, self.what = layer, what


def _pairs(v: Any, n: int) -> tuple[int, ...]:
    return tuple(int(x) for x in v) if isinstance(v, (tuple, list)) else (int(v),) * n


def conv_attrs(m: nn.Module, where: str) -> dict[str, Any]:
    n = m.weight.dim() - 2
    if m.padding_mode != "zeros":
        raise Unsupported(where, f"padding_mode {m.padding_mode!r} is not supported (only 'zeros')")
    kernel, dilation = _pairs(m.kernel_size, n), _pairs(m.dilation, n)
    if m.padding == "valid":
        begin = end = (0,) * n
    elif m.padding == "same":
        total = [d * (k - 1) for d, k in zip(dilation, kernel)]
        begin, end = tuple(t // 2 for t in total), tuple(t - t // 2 for t in total)
    else:
        begin = end = _pairs(m.padding, n)
    return {"kernel": kernel, "stride": _pairs(m.stride, n), "pads": begin + end, "dilation": dilation,
            "groups": int(m.groups)}


def pool_attrs(m: nn.Module, where: str) -> dict[str, Any]:
    n = 1 if isinstance(m, (nn.MaxPool1d, nn.AvgPool1d)) else 2
    if m.ceil_mode:
        raise Unsupported(where, "ceil_mode=True is not supported")
    if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)) and any(d != 1 for d in _pairs(m.dilation, n)):
        raise Unsupported(where, "a dilated max pooling is not supported")
    if isinstance(m, nn.AvgPool2d) and m.divisor_override is not None:
        raise Unsupported(where, "divisor_override is not supported")
    stride = m.stride if m.stride is not None else m.kernel_size
    pad = _pairs(m.padding, n)
    return {"mode": "max" if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)) else "avg",
            "kernel": _pairs(m.kernel_size, n), "stride": _pairs(stride, n), "pads": pad + pad,
            "include_pad": bool(getattr(m, "count_include_pad", True))}


def bn_attrs(m: nn.Module, where: str) -> dict[str, Any]:
    if m.running_mean is None or m.running_var is None:
        raise Unsupported(where, "a BatchNorm without running statistics (track_running_stats=False) is not supported")
    g = (m.weight.detach().float() if m.affine else torch.ones_like(m.running_var)) / torch.sqrt(
        m.running_var.float() + m.eps)
    shift = (m.bias.detach().float() if m.affine else torch.zeros_like(m.running_mean)) - m.running_mean.float() * g
    return {"gain": g.cpu().numpy().astype(np.float32), "shift": shift.cpu().numpy().astype(np.float32)}
