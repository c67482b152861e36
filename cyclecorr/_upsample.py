"""Convex up-sampling (:func:`cyclecorr.costvol.convex_upsample`) as numba kernels for CPU
tensors.

``convex_upsample_numba(x, mask, f)`` computes the same as the PyTorch version: output pixel
``(f·h + i, f·w + j)`` is ``Σ_n softmax_n(mask[n·f² + i·f + j, h, w]) · x(h + dy_n, w + dx_n)``
over the 3×3 neighbours ``n`` (row-major, edges replicated). The forward pass takes the softmax
from PyTorch (its vectorised ``exp``), computes the weighted sums in one sweep and keeps the
weights; the backward pass reads them back for the gradients of ``x`` and of the mask (first
order only). In PyTorch the same takes nine
``(B, C, f², H, W)`` products and sums, a softmax over a ``(B, 9, f², H, W)`` tensor and their
backward passes, each a trip through memory; here the loops run along image rows so that the
compiler vectorises them. Serial, like :mod:`cyclecorr._corr` (bit-equal runs).
"""
from __future__ import annotations

import numpy as np
import torch
from numba import njit

from cyclecorr._corr import as_array

__all__ = ["convex_upsample_numba"]


@njit(fastmath=True, cache=True)
def _neighbour_rows(x, b, c, h, xs):
    # xs[n, w] = x[b, c] at row h's pixel w + the offset of 3×3 neighbour n (edges replicated)
    h_, w_ = x.shape[2], x.shape[3]
    for n in range(9):
        yy = min(max(h + n // 3 - 1, 0), h_ - 1)
        dx = n % 3 - 1
        for w in range(w_):
            xs[n, w] = x[b, c, yy, min(max(w + dx, 0), w_ - 1)]


@njit(fastmath=True, cache=True)
def _fwd(x, wts, f, out):
    # x (B, C, H, W); wts (B, 9, f², H, W) the softmax weights; out (B, C, f·H, f·W)
    nb, nc, h_, w_ = x.shape
    f2 = f * f
    xs = np.empty((9, w_), dtype=x.dtype)  # one channel's row of each neighbour
    acc = np.empty(w_, dtype=x.dtype)
    for b in range(nb):
        for h in range(h_):
            for c in range(nc):
                _neighbour_rows(x, b, c, h, xs)
                for s in range(f2):
                    i, j = s // f, s % f
                    acc[:] = 0.0
                    for n in range(9):  # along the row: vectorised
                        for w in range(w_):
                            acc[w] += wts[b, n, s, h, w] * xs[n, w]
                    for w in range(w_):
                        out[b, c, h * f + i, w * f + j] = acc[w]


@njit(fastmath=True, cache=True)
def _bwd(x, wts, g, f, gx, gm):
    # g (B, C, f·H, f·W); gx like x, zero-filled; gm (B, 9·f², H, W)
    nb, nc, h_, w_ = x.shape
    f2 = f * f
    xs = np.empty((9, w_), dtype=x.dtype)
    gxs = np.empty((9, w_), dtype=x.dtype)
    gw = np.empty((9, f2, w_), dtype=x.dtype)
    gs = np.empty(w_, dtype=x.dtype)
    for b in range(nb):
        for h in range(h_):
            gw[:] = 0.0
            for c in range(nc):
                _neighbour_rows(x, b, c, h, xs)
                gxs[:] = 0.0
                for s in range(f2):
                    i, j = s // f, s % f
                    for w in range(w_):
                        gs[w] = g[b, c, h * f + i, w * f + j]
                    for n in range(9):
                        for w in range(w_):
                            gw[n, s, w] += gs[w] * xs[n, w]
                            gxs[n, w] += gs[w] * wts[b, n, s, h, w]
                for n in range(9):  # the neighbours' gradient back to the (clamped) pixels
                    yy = min(max(h + n // 3 - 1, 0), h_ - 1)
                    dx = n % 3 - 1
                    for w in range(w_):
                        gx[b, c, yy, min(max(w + dx, 0), w_ - 1)] += gxs[n, w]
            for s in range(f2):  # softmax backward: w_n (gw_n − Σ_k w_k gw_k)
                for w in range(w_):
                    gs[w] = 0.0
                for n in range(9):
                    for w in range(w_):
                        gs[w] += wts[b, n, s, h, w] * gw[n, s, w]
                for n in range(9):
                    for w in range(w_):
                        gm[b, n * f2 + s, h, w] = wts[b, n, s, h, w] * (gw[n, s, w] - gs[w])


class _ConvexUpsample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mask, factor: int):
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        xn = as_array(x, work)
        b, c, h, w = xn.shape
        m = torch.from_numpy(as_array(mask, work)).view(b, 9, factor * factor, h, w)
        wts = torch.softmax(m, 1).numpy()
        out = np.empty((b, c, factor * h, factor * w), dtype=xn.dtype)
        _fwd(xn, wts, factor, out)
        ctx.save_for_backward(x)  # autograd's check that it does not change in place
        ctx.arrays, ctx.factor, ctx.work = (xn, wts), factor, work
        ctx.dtypes = (x.dtype, mask.dtype)
        return torch.from_numpy(out).to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        ctx.saved_tensors  # noqa: B018  raises if x was modified in place
        xn, wts = ctx.arrays
        f = ctx.factor
        gx = np.zeros_like(xn)
        gm = np.empty((xn.shape[0], 9 * f * f) + xn.shape[2:], dtype=xn.dtype)
        _bwd(xn, wts, as_array(g, ctx.work), f, gx, gm)
        return (torch.from_numpy(gx).to(ctx.dtypes[0]), torch.from_numpy(gm).to(ctx.dtypes[1]),
                None)


def convex_upsample_numba(x: torch.Tensor, mask: torch.Tensor, factor: int) -> torch.Tensor:
    """:func:`cyclecorr.costvol.convex_upsample` on CPU tensors (module doc): ``x`` ``(B, C, H,
    W)``, ``mask`` ``(B, 9·factor², H, W)`` → ``(B, C, factor·H, factor·W)`` in ``x``'s dtype
    (float32 sums, float64 for float64 inputs). The caller checks the shapes."""
    return _ConvexUpsample.apply(x, mask, int(factor))
