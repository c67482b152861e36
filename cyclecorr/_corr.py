"""Local correlation of two feature maps: the cost-volume network's local correlations
(:func:`cyclecorr.costvol.local_correlation`) and ``NetConfig.skips="corr"``.

``correlation(a, b, radius)`` returns, for ``(B, C, H, W)`` maps, ``(B, K, H, W)`` with
``K = (2r+1)²`` and channel ``(dy + r)·(2r+1) + (dx + r)`` holding
``Σ_c a(c, y, x)·b(c, y+dy, x+dx)`` (0 where ``(x+dx, y+dy)`` leaves ``b``), stored
channels-last.

Three implementations of the same operator:

- :func:`correlation_reference`: one multiply-and-sum per displacement in plain PyTorch (any
  device, any autograd order). On a CPU it is memory-bound: each displacement streams both maps
  through memory once forward and several times backward (with a zero-padded gradient per
  displacement);
- :class:`_NumbaCorrelation` (CPU tensors): a numba kernel that keeps a pixel's feature vector in
  cache while it visits its ``K`` neighbours, with a hand-written backward (first order only).
  It is what :func:`correlation` uses on a CPU, bfloat16 and float16 inputs through float32
  copies (the sums are float32; the result is cast back);
- :func:`correlation_tiled`: matrix products (``bmm``) of ``tile × tile`` blocks with their
  windows of ``b``, then a gather of each pixel's ``K`` displacements: every step a dense
  library kernel, so it suits GPUs (what :func:`correlation` uses off the CPU).

On the 2-core CPU, one thread, forward and backward of the cost-volume network's correlations
in a cycle step (36 pairs, float32; ``bench/kernels.py``): 1/8 (64 channels, r 2) 4.3 ms against
the tiled products' 21 ms, 1/4 (32, r 3) 20 ms against 65, 1/2 (16, r 1) 14 ms against 89.

The kernels are serial on purpose: with ``parallel=True`` numba's default OpenMP threading layer
shares the process's OpenMP runtime with PyTorch, and two identical training runs then differed
by 1e-2 in their weights (1.5× faster kernels, but exact resume needs bit-equal runs).
"""
from __future__ import annotations

import numbers

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit

__all__ = ["correlation", "correlation_reference", "correlation_tiled", "as_array"]


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


def as_array(t: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """``t`` (detached) as a C-contiguous array of ``dtype``: ``t``'s own memory where it already
    is one, else one copy (numba's loops over a strided array ran up to 80× slower)."""
    t = t.detach()
    if t.dtype == dtype and t.is_contiguous():
        return t.numpy()
    return torch.empty(t.shape, dtype=dtype).copy_(t).numpy()


def _nhwc(t: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """``t`` ``(N, C, H, W)`` as a C-contiguous ``(N, H, W, C)`` array of ``dtype``."""
    return as_array(t.permute(0, 2, 3, 1), dtype)


class _NumbaCorrelation(torch.autograd.Function):
    """The numba kernels on float32 (float64 for float64 tensors) channels-last copies of the
    inputs, kept for the backward; the result and the gradients in the inputs' dtype."""

    @staticmethod
    def forward(ctx, a, b, radius: int):
        work = torch.float64 if a.dtype == torch.float64 else torch.float32
        an, bn = _nhwc(a, work), _nhwc(b, work)
        out = np.empty(an.shape[:3] + ((2 * radius + 1) ** 2,), dtype=an.dtype)
        _fwd(an, bn, radius, out)
        ctx.save_for_backward(a, b)  # autograd's check that neither changes in place
        ctx.arrays, ctx.radius, ctx.dtype, ctx.work = (an, bn), radius, a.dtype, work
        return torch.from_numpy(out).permute(0, 3, 1, 2).to(a.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        ctx.saved_tensors  # noqa: B018  raises if an input was modified in place
        an, bn = ctx.arrays
        ga, gb = np.zeros_like(an), np.zeros_like(bn)
        _bwd(an, bn, _nhwc(g, ctx.work), ctx.radius, ga, gb)
        back = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).to(ctx.dtype)  # noqa: E731
        return back(ga), back(gb), None


def _tile_index(tile: int, radius: int, device) -> torch.Tensor:
    """``(tile², (2r+1)²)`` positions in a ``(tile + 2r)²`` window of each tile pixel's
    displacements (row-major in both)."""
    k, side = 2 * radius + 1, tile + 2 * radius
    ty, tx, dy, dx = torch.meshgrid(*(torch.arange(n, device=device) for n in (tile, tile, k, k)),
                                    indexing="ij")
    return ((ty + dy) * side + (tx + dx)).reshape(tile * tile, k * k)


def correlation_tiled(a: torch.Tensor, b: torch.Tensor, radius: int,
                      tile: int | None = None) -> torch.Tensor:
    """The operator as matrix products (module doc): the map is cut into ``tile × tile`` blocks,
    each block's features (``tile²`` × C) are multiplied with those of its ``(tile + 2r)²`` window
    of ``b`` (one ``bmm`` for all blocks) and the ``(2r+1)²`` displacements of each pixel are
    gathered from the product. That computes ``((tile + 2r)/(2r+1))²`` times the needed dot
    products (4× at tile 8, r 3); with few channels the products are memory-bound and smaller
    tiles waste less (``tile=None``: 4 below 32 channels, else 8). Maps whose size is not a
    multiple of ``tile`` are zero-padded (and cropped)."""
    _check_pair(a, b, radius)
    radius = int(radius)
    bsz, c, h, w = a.shape
    if tile is None:
        tile = 4 if c < 32 else 8
    t = max(1, min(tile, max(h, w)))
    k, side = 2 * radius + 1, t + 2 * radius
    ph, pw = -h % t, -w % t
    if ph or pw:
        a, b = F.pad(a, (0, pw, 0, ph)), F.pad(b, (0, pw, 0, ph))
    nh, nw = (h + ph) // t, (w + pw) // t
    blocks = a.reshape(bsz, c, nh, t, nw, t).permute(0, 2, 4, 3, 5, 1).reshape(
        bsz * nh * nw, t * t, c)
    b = F.pad(b, (radius, radius, radius, radius))
    windows = b.unfold(2, side, t).unfold(3, side, t)  # (B, C, nh, nw, side, side)
    windows = windows.permute(0, 2, 3, 1, 4, 5).reshape(bsz * nh * nw, c, side * side)
    prod = torch.bmm(blocks, windows)  # (B·nh·nw, t², side²)
    idx = _tile_index(t, radius, a.device)
    out = prod.gather(2, idx.expand(prod.shape[0], -1, -1))
    out = out.view(bsz, nh, nw, t, t, k * k).permute(0, 1, 3, 2, 4, 5).reshape(
        bsz, nh * t, nw * t, -1)
    out = out.permute(0, 3, 1, 2)  # channels-last memory, as the decoders' convolutions take it
    return out[:, :, :h, :w] if (ph or pw) else out


def _check_pair(a: torch.Tensor, b: torch.Tensor, radius) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` are ``(B, C, H, W)`` maps of one shape and
    dtype and ``radius`` is a non-negative integer."""
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"correlation needs two (B, C, H, W) tensors of one shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise ValueError(f"correlation needs one dtype, got {a.dtype} and {b.dtype}")
    if isinstance(radius, bool) or not isinstance(radius, numbers.Integral) or radius < 0:
        raise ValueError(f"radius must be a non-negative integer, got {radius!r}")


def correlation(a: torch.Tensor, b: torch.Tensor, radius: int) -> torch.Tensor:
    """The local correlation of ``a`` with ``b`` (module doc): the numba kernel for CPU tensors
    (float32/64 directly, other floating types through float32), :func:`correlation_tiled`
    elsewhere."""
    _check_pair(a, b, radius)
    radius = int(radius)
    if a.device.type == "cpu" and b.device.type == "cpu" and a.is_floating_point():
        return _NumbaCorrelation.apply(a, b, radius)
    return correlation_tiled(a, b, radius)
