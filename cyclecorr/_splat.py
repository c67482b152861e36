"""The Gaussian splat of :func:`cyclecorr.geometry.invert_flow` as a numba kernel for CPU tensors.

``splat_numba(flow_ba, sigma, size_a, spread)`` returns what the PyTorch form returns: every
b-pixel ``x`` lands at ``l = x + flow_ba(x)`` in a and adds ``w = exp(−‖l − p‖² / 2σ²)`` to the
a-pixels ``p`` within 3σ of ``l`` (``w``, ``w·x``, ``w·y`` and, for the spread, ``w·‖x‖²``). The
PyTorch form makes one pass over all landing points per offset of the (2⌈3σ⌉)² window, each a
scatter through memory; here each landing point visits its window once, the Gaussian is taken as
the product of its x and y factors (4⌈3σ⌉ exponentials per point instead of one per pixel) and the
sums stay in float64. Serial, like :mod:`cyclecorr._corr` (bit-equal runs).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit

from cyclecorr._corr import as_array

__all__ = ["splat_numba"]


@njit(fastmath=False, cache=True)
def _splat(flow, sigma, ha, wa, spread, den, num):
    # flow (B, 2, Hb, Wb); den (B, Ha, Wa); num (B, 2 or 3, Ha, Wa), zero-filled, float64
    nb, _, hb, wb = flow.shape
    r = int(math.ceil(3.0 * sigma))
    cut = 9.0 * sigma * sigma
    k = -0.5 / (sigma * sigma)
    n = 2 * r
    ex = np.empty(n)  # the Gaussian's separable factors along x and y for one landing point
    ey = np.empty(n)
    ddx = np.empty(n)
    ddy = np.empty(n)
    for b in range(nb):
        for y in range(hb):
            for x in range(wb):
                lx = x + flow[b, 0, y, x]
                ly = y + flow[b, 1, y, x]
                bx = math.floor(lx)
                by = math.floor(ly)
                for i in range(n):
                    ddx[i] = (bx + i - r + 1 - lx) ** 2
                    ddy[i] = (by + i - r + 1 - ly) ** 2
                    ex[i] = math.exp(k * ddx[i])
                    ey[i] = math.exp(k * ddy[i])
                xx = x * x + y * y
                for j in range(n):
                    py = by + j - r + 1
                    if py < 0 or py > ha - 1:
                        continue
                    iy = int(py)
                    for i in range(n):
                        px = bx + i - r + 1
                        if px < 0 or px > wa - 1 or ddx[i] + ddy[j] >= cut:
                            continue
                        w = ex[i] * ey[j]
                        ix = int(px)
                        den[b, iy, ix] += w
                        num[b, 0, iy, ix] += w * x
                        num[b, 1, iy, ix] += w * y
                        if spread:
                            num[b, 2, iy, ix] += w * xx


def splat_numba(flow_ba: torch.Tensor, sigma: float, size_a: tuple[int, int],
                spread: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(den, mean)`` of the splat: ``den`` ``(B, 1, H_a, W_a)`` the summed weights, ``mean``
    ``(B, 2 or 3, H_a, W_a)`` the weighted means of ``x`` and ``y`` (and with ``spread`` the
    weighted variance of the b-pixels, ``E‖x‖² − ‖E x‖²`` ≥ 0), 0 where nothing landed; in
    ``flow_ba``'s dtype (a CPU tensor, no gradient)."""
    ha, wa = (int(v) for v in size_a)
    f = as_array(flow_ba.detach(), torch.float64)
    b = f.shape[0]
    den = np.zeros((b, ha, wa), np.float64)
    num = np.zeros((b, 3 if spread else 2, ha, wa), np.float64)
    _splat(f, float(sigma), ha, wa, bool(spread), den, num)
    mean = np.divide(num, den[:, None], out=np.zeros_like(num), where=den[:, None] > 0)
    if spread:  # the variance, taken in float64 before any cast
        mean[:, 2] = np.maximum(mean[:, 2] - mean[:, 0] ** 2 - mean[:, 1] ** 2, 0.0)
    dt = flow_ba.dtype
    return torch.from_numpy(den[:, None]).to(dt), torch.from_numpy(mean).to(dt)
