"""Local correlation of two feature maps, the kernel behind ``NetConfig.skips="corr"``.

``correlation(a, b, radius)`` returns, for ``(B, C, H, W)`` maps, ``(B, K, H, W)`` with
``K = (2r+1)²`` and channel ``(dy + r)·(2r+1) + (dx + r)`` holding
``Σ_c a(c, y, x)·b(c, y+dy, x+dx)`` (0 where ``(x+dx, y+dy)`` leaves ``b``).

Two implementations of the same operator:

- :func:`correlation_reference`: one multiply-and-sum per displacement in plain PyTorch (any
  device, any autograd order). On a CPU it is memory-bound: each displacement streams both maps
  through memory once forward and several times backward (with a zero-padded gradient per
  displacement): 0.60 s forward+backward for one width-1/2 cycle step's features (24 pairs,
  the 16, 32 and 64 px levels);
- :class:`_NumbaCorrelation` (CPU tensors): a numba kernel that keeps a pixel's feature vector in
  cache while it visits its ``K`` neighbours, with a hand-written backward (first order only);
  0.18 s for the same features. It is what :func:`correlation` uses on a CPU.

The kernels are serial on purpose: with ``parallel=True`` numba's default OpenMP threading layer
shares the process's OpenMP runtime with PyTorch, and two identical training runs then differed
by 1e-2 in their weights (1.5× faster kernels, but exact resume needs bit-equal runs).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit

__all__ = ["correlation", "correlation_reference"]


def correlation_reference(a: torch.Tensor, b: torch.Tensor, radius: int) -> torch.Tensor:
    """The operator in plain PyTorch (see the module doc)."""
    bp = F.pad(b, (radius,) * 4)
    h, w = a.shape[-2:]
    k = 2 * radius + 1
    return torch.stack([(a * bp[:, :, dy:dy + h, dx:dx + w]).sum(1)
                        for dy in range(k) for dx in range(k)], dim=1)


@njit(fastmath=True, cache=True)
def _fwd(a, b, r, out):  # a, b: (N, H, W, C) contiguous; out: (N, H, W, K)
    n_, h_, w_, c_ = a.shape
    k = 2 * r + 1
    for n in range(n_):
        for y in range(h_):
            for x in range(w_):
                for dy in range(-r, r + 1):
                    yy = y + dy
                    for dx in range(-r, r + 1):
                        xx = x + dx
                        s = 0.0
                        if 0 <= yy < h_ and 0 <= xx < w_:
                            for c in range(c_):
                                s += a[n, y, x, c] * b[n, yy, xx, c]
                        out[n, y, x, (dy + r) * k + dx + r] = s


@njit(fastmath=True, cache=True)
def _bwd(a, b, g, r, ga, gb):  # g: (N, H, W, K); ga, gb zero-filled like a, b
    n_, h_, w_, c_ = a.shape
    k = 2 * r + 1
    for n in range(n_):
        for y in range(h_):
            for x in range(w_):
                for dy in range(-r, r + 1):
                    yy = y + dy
                    if yy < 0 or yy >= h_:
                        continue
                    for dx in range(-r, r + 1):
                        xx = x + dx
                        if xx < 0 or xx >= w_:
                            continue
                        gv = g[n, y, x, (dy + r) * k + dx + r]
                        for c in range(c_):
                            ga[n, y, x, c] += gv * b[n, yy, xx, c]
                            gb[n, yy, xx, c] += gv * a[n, y, x, c]


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).contiguous().numpy()


class _NumbaCorrelation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, radius: int):
        an, bn = _nhwc(a), _nhwc(b)
        out = np.empty(an.shape[:3] + ((2 * radius + 1) ** 2,), dtype=an.dtype)
        _fwd(an, bn, radius, out)
        ctx.save_for_backward(a, b)
        ctx.radius = radius
        return torch.from_numpy(out).permute(0, 3, 1, 2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        an, bn = _nhwc(a), _nhwc(b)
        ga, gb = np.zeros_like(an), np.zeros_like(bn)
        _bwd(an, bn, _nhwc(g), ctx.radius, ga, gb)
        back = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2)  # noqa: E731
        return back(ga), back(gb), None


def correlation(a: torch.Tensor, b: torch.Tensor, radius: int) -> torch.Tensor:
    """The local correlation of ``a`` with ``b`` (module doc): the numba kernel for float32/64
    CPU tensors, :func:`correlation_reference` elsewhere."""
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"correlation needs two (B, C, H, W) tensors of one shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise ValueError(f"correlation needs one dtype, got {a.dtype} and {b.dtype}")
    if (a.device.type == "cpu" and b.device.type == "cpu"
            and a.dtype in (torch.float32, torch.float64)):
        return _NumbaCorrelation.apply(a, b, int(radius))
    return correlation_reference(a, b, radius)
