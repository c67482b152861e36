"""A correspondence network with a cost volume (``arch="costvol"``): flow and matchability from
feature similarities, trained by the same objective as the paper network (:mod:`cyclecorr.model`).

Default layers (``width=1``, input 128×128; every convolution 3×3 unless marked, ReLU between)::

    pyramid (shared)   conv/2 3→16, conv 16→16            @64  (1/2)
                       conv/2 16→32, conv 32→32           @32  (1/4)
                       conv/2 32→64, conv 64→64           @16  (1/8)   each level L2-normalised
    dense SIFT         8 orientation bands of the grey image averaged over 2×2 pixels, cells of
                       4×4 and 8×8 pixels at 1/4 and 1/8 (128-d descriptors of 4×4 cells)
    1/8   global correlation 256×256 of [a²·learned, b²·SIFT] (192-d), top-4 similarities,
          windowed kernel soft-argmax (5×5 around the argmax, σ = 1, learned temperature) →
          initial flow; local correlation r=2 around it;
          decoder [corr 25, source 64, flow 2, top-4 4] → 1×1 48 → 48 → 48 → head 3
    1/4   flow, logit, hidden ×2 (bilinear); target warped by the flow; local correlation r=3
          (learned + SIFT); decoder [49, 32, 2, 1, 48] → 1×1 32 → 32 → 32 → head 3
    1/2   the same with r=1, no SIFT; decoder [9, 16, 2, 1, 32] → 1×1 24 → 24 → 24 → head 3,
          convex-up-sampling mask 1×1 24 → 36
    1/1   convex up-sampling ×2 of the flow and the matchability logit

Each head outputs a residual flow (in its level's pixels, scaled to input pixels) and a residual
matchability logit; the flow and logits are float32 also under autocast. 0.39 GFLOP per pair
(:meth:`CostVolumeNet.flops_by_part`: pyramid 0.08 per image, decoders 0.18, correlations 0.05).

Pieces, each usable alone and tested in closed form:

- dense SIFT: :func:`orientation_bands` (5-tap derivative, edges replicated, the colour channel of
  largest gradient or the grey image, soft binning ``e_k = m·max(cos(θ − 2πk/8), 0)^9``),
  :func:`dense_sift_liu` (Liu et al.'s full-resolution construction, equal to
  ``cyclecorr.siftflow.dense_sift``), :func:`sift_cells` (band means per level),
  :func:`sift_descriptors` (4×4 cells, L2-normalised, not clipped) and
  :func:`sift_local_correlation` (the descriptors' similarity from the 8 cell channels);
- correlations: :func:`global_correlation` (one ``bmm``), :func:`local_correlation` (a numba
  kernel on a CPU, tiled ``bmm`` elsewhere: :mod:`cyclecorr._corr`), :func:`kernel_soft_argmax`,
  :func:`warp_features` (``cyclecorr.geometry.warp``, zeros outside), :func:`convex_upsample`
  (RAFT's idea).

Choices beyond the description in the issue, all options of :class:`CostVolumeConfig`, made for the
CPU budget (``bench/evaluate.py --arch costvol``; measured as CPU time per pair at one thread
because this 2-core machine was shared while they were made):

- SIFT similarity without Lowe's 0.2 clip (as Liu's dense SIFT): the dot product of two
  descriptors is then a 4×4 box sum of 8-channel cell dot products, so the network never stores
  the 128-d descriptor at the finer levels (a 64×64×128 descriptor per image cost more than the
  whole rest of the encoder);
- SIFT at 1/8 and 1/4 only (``sift_levels=3`` adds 1/2: +30 % time per pair) and from gradients
  of the image averaged over 2×2 pixels (``sift_input_stride=1``: +1.2 ms per pair; the untrained
  network's re-framing test on 20 FlowWeb car crops: 54 % of pixels within 5 px vs 57 %);
- radius 1 at 1/2 (radius 2: +8 % time), a windowed kernel soft-argmax and top-k statistics
  instead of a softmax entropy (each full pass over the 256×256 correlation costs about as much as
  a 3×3 convolution layer at 1/8);
- pyramid normalisation ``"none"`` by default: ``"instance"`` cost +26 % (float32) and +22 %
  (bf16) forward time per pair; ``"batch"`` +2 %, but it couples the pairs of a batch (a cycle
  batch mixes renders and photos in its statistics, DDP processes keep their own, and evaluation
  runs on running averages). Which trains better is not measured here;
- the flow by which each level's target features are warped carries no gradient
  (``detach_warp``, as RAFT between its iterations); the residual sums still pass the loss's
  gradient to every level.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from cyclecorr._corr import correlation, correlation_tiled
from cyclecorr._upsample import convex_upsample_numba
from cyclecorr.geometry import pixel_grid, warp

__all__ = ["orientation_bands", "dense_sift_liu", "sift_cells", "sift_descriptors",
           "sift_local_correlation", "global_correlation",
           "local_correlation", "kernel_soft_argmax", "local_soft_argmax", "warp_features",
           "convex_upsample", "convex_upsample_reference",
           "CostVolumeConfig", "CostVolumeNet"]

_DERIV = (1.0, -8.0, 0.0, 8.0, -1.0)


def _check_images(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] not in (1, 3):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a (B, 3, H, W) or (B, 1, H, W) tensor, got {shape}")


def orientation_bands(images: torch.Tensor, n_orientations: int = 8,
                      orientation_power: int = 9) -> torch.Tensor:
    """Oriented gradient energy ``(B, n, H, W)`` of ``(B, C, H, W)`` images (C = 1 or 3).

    ``e_k(p) = m(p) · max(cos(θ(p) − 2πk/n), 0)^power`` where ``(m, θ)`` is the gradient (5-tap
    derivative, edges replicated) of the colour channel with the largest magnitude at ``p`` (the
    first on a tie). Computed in the input's dtype (callers under autocast cast to float32).
    For an even ``n`` and an odd power, bands ``k`` and ``k + n/2`` are the positive and
    negative parts of one signed ``m·cos^power = g·(g²/m²)^((power−1)/2)`` with
    ``g = (I_x, I_y)·(cos θ_k, sin θ_k)``: half the work, no division by ``m`` per band.
    """
    _check_images("images", images)
    p = F.pad(images, (2, 2, 2, 2), mode="replicate")
    a, b = p[..., 2:-2, :], p[..., :, 2:-2]
    gx = (a[..., :-4] - a[..., 4:] + 8.0 * (a[..., 3:-1] - a[..., 1:-3])) / 12.0
    gy = (b[..., :-4, :] - b[..., 4:, :] + 8.0 * (b[..., 3:-1, :] - b[..., 1:-3, :])) / 12.0
    if images.shape[1] == 3:  # the channel of largest gradient magnitude
        m2 = gx * gx + gy * gy
        s0 = (m2[:, 0:1] >= m2[:, 1:2]) & (m2[:, 0:1] >= m2[:, 2:3])
        s1 = m2[:, 1:2] >= m2[:, 2:3]
        gx = torch.where(s0, gx[:, 0:1], torch.where(s1, gx[:, 1:2], gx[:, 2:3]))
        gy = torch.where(s0, gy[:, 0:1], torch.where(s1, gy[:, 1:2], gy[:, 2:3]))
    n, power = n_orientations, orientation_power
    t = torch.arange(n if n % 2 or power % 2 == 0 else n // 2, dtype=images.dtype,
                     device=images.device) * (2 * math.pi / n)
    g = gx * torch.cos(t).view(1, -1, 1, 1) + gy * torch.sin(t).view(1, -1, 1, 1)
    m2 = gx * gx + gy * gy
    inv = torch.where(m2 > 0, 1.0 / torch.where(m2 > 0, m2, torch.ones_like(m2)),
                      torch.zeros_like(m2))
    if len(t) < n:  # signed cos^power·m, split into opposite bands
        c2 = g * g * inv
        e = g * c2.pow((power - 1) // 2)
        return torch.cat((e.clamp_min(0), (-e).clamp_min(0)), 1)
    cos = (g * inv.sqrt()).clamp_min(0)
    return cos.pow(power) * m2.sqrt()


def _gather_cells(cells: torch.Tensor, step: int) -> torch.Tensor:
    """Concatenate the 4×4 grid of ``cells`` at offsets ``(−1, 0, 1, 2)·step`` in x and y (edges
    replicated): ``(B, n, H, W) -> (B, 16·n, H, W)``, channel ``((j·4 + i)·n + k)`` for the cell
    at x offset ``i`` and y offset ``j`` and band ``k`` (the numpy reference's order)."""
    b, n, h, w = cells.shape
    p = F.pad(cells, (step, 2 * step, step, 2 * step), mode="replicate")
    parts = [p[:, :, j * step:j * step + h, i * step:i * step + w]
             for j in range(4) for i in range(4)]
    return torch.stack(parts, 1).reshape(b, 16 * n, h, w)


def dense_sift_liu(images: torch.Tensor, cell_size: int = 3, eps: float = 0.01) -> torch.Tensor:
    """Liu et al.'s dense SIFT at full resolution (as ``cyclecorr.siftflow.dense_sift``):
    ``(B, C, H, W)`` on [0, 1] → ``(B, 128, H, W)`` on [0, 255].

    Bands of :func:`orientation_bands` pooled by Liu's separable cell kernel (weights
    ``0.25, 1 (c times), 0.25`` at offsets ``−c … +1``), 4×4 cells at offsets ``(−1 … 2)·c``
    (edges replicated), scaled to ``255 / (‖v‖ + eps)`` and clipped at 255. Channel order:
    ``(y cell, x cell, band)``, as the numpy reference's ``(H, W, 4, 4, 8)`` flattened.
    """
    if cell_size < 1:
        raise ValueError(f"cell_size must be >= 1, got {cell_size}")
    bands = orientation_bands(images)
    b, n, h, w = bands.shape
    c = cell_size
    k = torch.zeros(2 * c + 1, dtype=bands.dtype, device=bands.device)
    k[0] = k[c + 1] = 0.25
    k[1:c + 1] = 1.0
    x = bands.reshape(b * n, 1, h, w)
    x = F.conv2d(F.pad(x, (0, 0, c, c), mode="replicate"), k.view(1, 1, -1, 1))
    x = F.conv2d(F.pad(x, (c, c, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    desc = _gather_cells(x.view(b, n, h, w), c)
    norm = desc.norm(dim=1, keepdim=True)
    return (desc * (255.0 / (norm + eps))).clamp_max(255.0)


def sift_cells(images: torch.Tensor, strides=(2, 4, 8), colour: bool = False,
               input_stride: int = 1, chunk: int = 4) -> list[torch.Tensor]:
    """The dense-SIFT cells of ``images`` ``(B, C, H, W)`` on [0, 1] at each stride: band means
    (:func:`orientation_bands`, 8 bands) over the ``s × s`` blocks of pixels, ``(B, 8, H/s, W/s)``
    per stride (increasing, each a multiple of the previous; ``H, W`` multiples of the last).

    ``colour=False`` takes the gradient of the mean of the colour channels (grey), ``True`` that
    of the channel of largest magnitude (SIFT flow's choice, ~1.4× the time). With
    ``input_stride=2`` the bands are computed on the image averaged over 2×2 blocks (4× less
    work; the finest cells then hold one such block). Computed in float32 (float64 for float64
    images; also under autocast), ``chunk`` images at a time (the bands of a few images stay in
    the CPU's cache).
    """
    _check_images("images", images)
    h, w = images.shape[-2:]
    seq = (input_stride, *strides)
    if any(b % a or b < a for a, b in zip(seq, seq[1:])) or h % strides[-1] or w % strides[-1]:
        raise ValueError(f"strides {tuple(strides)} must each be a multiple of the previous (and "
                         f"of input_stride {input_stride}) and divide the image size {h}x{w}")
    with torch.autocast(images.device.type, enabled=False):
        x = images if images.dtype == torch.float64 else images.float()
        if not colour and x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        if input_stride > 1:
            x = F.avg_pool2d(x, input_stride)
        outs: list[list[torch.Tensor]] = [[] for _ in strides]
        for part in x.split(max(1, chunk)):
            cells, done = orientation_bands(part), input_stride
            for i, s in enumerate(strides):
                if s > done:
                    cells = F.avg_pool2d(cells, s // done)
                done = s
                outs[i].append(cells)
    return [torch.cat(o) if len(o) > 1 else o[0] for o in outs]


def _box4(x: torch.Tensor) -> torch.Tensor:
    """``Σ x(p + o)`` over the 4×4 offsets ``o ∈ {−1, 0, 1, 2}²`` (zeros outside), as a
    depthwise convolution (3× faster than ``avg_pool2d`` on a CPU, channels-last)."""
    c = x.shape[1]
    ones = torch.ones(c, 1, 4, 4, dtype=x.dtype, device=x.device)
    return F.conv2d(F.pad(x, (1, 2, 1, 2)), ones, groups=c)


def sift_descriptors(cells: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Dense-SIFT descriptors from cells (:func:`sift_cells`): ``(B, n, h, w)`` →
    ``(B, 16·n, h, w)``
    (channels-last memory). The descriptor of pixel ``p`` concatenates the cells at
    ``p + (i, j)``, ``i, j ∈ {−1, 0, 1, 2}`` (zero outside the map; channel ``(j·4 + i)·n + k``
    for band ``k``), divided by ``‖v‖ + eps``: a unit vector where textured, a short one where
    the gradient energy is ``≪ eps``, zero where flat. Not clipped (as Liu's dense SIFT, and
    unlike Lowe's 0.2 clip): the dot product of two descriptors is then a sum of 16 cell dot
    products, which :func:`sift_local_correlation` computes from the ``n`` cell channels."""
    b, n, h, w = cells.shape
    cp = F.pad(cells, (1, 2, 1, 2)).permute(0, 2, 3, 1)  # (B, h+3, w+3, n)
    v = cp.unfold(1, 4, 1).unfold(2, 4, 1)  # (B, h, w, n, 4 (y), 4 (x))
    v = v.permute(0, 1, 2, 4, 5, 3).reshape(b, h, w, 16 * n)
    return (v / (v.norm(dim=-1, keepdim=True) + eps)).permute(0, 3, 1, 2)


def sift_local_correlation(cells_a: torch.Tensor, cells_b: torch.Tensor, radius: int,
                           eps: float = 1e-3) -> torch.Tensor:
    """:func:`local_correlation` of the :func:`sift_descriptors` of two cell maps, computed from
    the cells: ``(B, n, h, w)`` × 2 → ``(B, (2r+1)², h, w)``.

    ``desc_a(p) · desc_b(p + d) = Σ_o cells_a(p + o) · cells_b(p + d + o) / ((‖v_a(p)‖ + eps)
    (‖v_b(p + d)‖ + eps))``: the cell correlation at each displacement summed over the 4×4 box of
    offsets ``o``, with the norms from the box sums of the cells' squared norms. It correlates
    ``n`` = 8 channels instead of 128 (0 outside ``cells_b``, as :func:`local_correlation`).
    """
    _check_pair(cells_a, cells_b, same_size=True)
    k = 2 * radius + 1
    num = _box4(local_correlation(cells_a, cells_b, radius))
    inv_a = 1.0 / (_box4(cells_a.square().sum(1, keepdim=True)).sqrt() + eps)
    inv_b = 1.0 / (_box4(cells_b.square().sum(1, keepdim=True)).sqrt() + eps)
    b, _, h, w = inv_b.shape
    # 1 / (‖v_b(p + d)‖ + eps) per displacement (0 outside: num is 0 there too)
    inv_b = F.unfold(inv_b, k, padding=radius).view(b, k * k, h, w)
    return num * inv_a * inv_b


# --- correlation operators -------------------------------------------------------------------

def _check_pair(a: torch.Tensor, b: torch.Tensor, same_size: bool) -> None:
    if a.dim() != 4 or b.dim() != 4 or a.shape[:2] != b.shape[:2] or (
            same_size and a.shape != b.shape):
        raise ValueError(f"feature maps must be (B, C, H, W) with the same B and C"
                         f"{' and size' if same_size else ''}: got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")


def global_correlation(fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """All-pairs dot products: ``(B, C, Ha, Wa)`` × ``(B, C, Hb, Wb)`` → ``(B, Ha·Wa, Hb·Wb)``
    with ``out[b, i, j] = fa[b, :, i] · fb[b, :, j]`` (pixels flattened row-major, ``i = y·W + x``).
    One batched matmul; pass L2-normalised features for cosine similarities."""
    _check_pair(fa, fb, same_size=False)
    return torch.bmm(fa.flatten(2).transpose(1, 2), fb.flatten(2))


def local_correlation(fa: torch.Tensor, fb: torch.Tensor, radius: int,
                      tile: int | None = None) -> torch.Tensor:
    """Dot products of ``fa``'s feature at each pixel with ``fb``'s at every displacement
    ``(dx, dy) ∈ [−r, r]²``: ``(B, C, H, W)`` × 2 → ``(B, (2r+1)², H, W)``, channel
    ``(dy + r)·(2r+1) + (dx + r)`` holds ``fa(x, y) · fb(x + dx, y + dy)``; 0 where
    ``(x + dx, y + dy)`` is outside ``fb``. Stored channels-last (as the decoders' convolutions
    take it).

    :func:`cyclecorr._corr.correlation`: a numba kernel on a CPU (3-6× faster forward and
    backward than matrix products at this network's sizes), tiled matrix products elsewhere;
    ``tile`` asks for the matrix products with that tile size
    (:func:`cyclecorr._corr.correlation_tiled`); both check the two maps (one shape, one dtype)
    and the radius.
    """
    if tile is None:
        return correlation(fa, fb, radius)
    return correlation_tiled(fa, fb, radius, tile)


def kernel_soft_argmax(corr: torch.Tensor, height: int, width: int,
                       temperature: torch.Tensor | float, sigma: float, radius: int = 2,
                       best: torch.Tensor | None = None) -> torch.Tensor:
    """Match positions from an all-pairs correlation by a kernel soft-argmax in a window.

    Args:
        corr: ``(B, N, Hb·Wb)`` similarities of each of ``N`` source pixels with every target
            pixel (:func:`global_correlation`).
        height, width: the target map's ``Hb, Wb``.
        temperature: scale of the similarities in the softmax (a scalar, may be a learnable
            tensor).
        sigma: width in target pixels of the Gaussian kernel centred at each row's argmax.
        radius: the window: target pixels within ``radius`` of the argmax in x and y (those
            inside the map).
        best: ``(B, N)`` flattened argmax indices if already known (e.g. from ``topk``).

    Returns:
        ``(B, N, 2)`` positions (x, y) in target pixels: ``Σ_q w(q)·q`` over the window with
        ``w ∝ exp(temperature·corr(q) − ‖q − q*‖² / (2σ²))``, ``q*`` the argmax. Differentiable
        in ``corr`` and ``temperature`` (``q*`` is piecewise constant); unlike a global soft-argmax
        a second, distant mode does not pull the position towards it. Reads ``(2r+1)²`` values
        per row after the argmax instead of passing over the whole row again.
    """
    if corr.dim() != 3 or corr.shape[-1] != height * width:
        raise ValueError(f"corr must be (B, N, {height}·{width}), got {tuple(corr.shape)}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if best is None:
        best = corr.argmax(-1)  # (B, N) flattened target index
    o = torch.arange(-radius, radius + 1, device=corr.device)
    qx = (best % width).unsqueeze(-1).unsqueeze(-2) + o  # (B, N, 1, k)
    qy = (best // width).unsqueeze(-1).unsqueeze(-1) + o.unsqueeze(-1)  # (B, N, k, 1)
    inside = ((qx >= 0) & (qx < width) & (qy >= 0) & (qy < height)).flatten(-2)
    idx = (qy.clamp(0, height - 1) * width + qx.clamp(0, width - 1)).flatten(-2)
    d2 = (o.unsqueeze(-1).square() + o.square()).flatten().to(corr.dtype)  # (k²,)
    logits = corr.gather(-1, idx) * temperature - d2 * (0.5 / (sigma * sigma))
    w = torch.softmax(logits.masked_fill(~inside, float("-inf")), dim=-1)
    qx, qy = qx.expand(idx.shape[:2] + (len(o), len(o))), qy.expand(idx.shape[:2] + (len(o),) * 2)
    return torch.stack(((w * qx.flatten(-2)).sum(-1), (w * qy.flatten(-2)).sum(-1)), -1)


def local_soft_argmax(corr: torch.Tensor, radius: int,
                      temperature: torch.Tensor | float) -> torch.Tensor:
    """The expected displacement under a softmax over a local correlation's window:
    ``(B, (2r+1)², H, W)`` (:func:`local_correlation`'s channel order) → ``(B, 2, H, W)``
    ``Σ_d softmax(temperature · corr)_d · d`` (x, y), in the correlation's pixels; float32
    (float64 for a float64 correlation).
    Differentiable in ``corr`` and ``temperature``; a window whose similarities are all equal
    gives zero."""
    k = 2 * radius + 1
    if corr.dim() != 4 or corr.shape[1] != k * k:
        raise ValueError(f"corr must be (B, {k * k}, H, W) for radius {radius}, got "
                         f"{tuple(corr.shape)}")
    dtype = torch.promote_types(corr.dtype, torch.float32)
    w = torch.softmax(corr.to(dtype) * temperature, dim=1)
    o = torch.arange(-radius, radius + 1, device=corr.device, dtype=dtype)
    dx = o.repeat(k).view(1, k * k, 1, 1)
    dy = o.repeat_interleave(k).view(1, k * k, 1, 1)
    return torch.cat(((w * dx).sum(1, keepdim=True), (w * dy).sum(1, keepdim=True)), 1)


def warp_features(feat_b: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``feat_b`` read at ``p + flow(p)`` (bilinear, zeros outside;
    :func:`cyclecorr.geometry.warp`):
    ``(B, C, H_b, W_b)`` and a flow ``(B, 2, H, W)`` in ``feat_b``'s pixels → ``(B, C, H, W)``.
    Computed in the flow's dtype (float32 under autocast: positions stay exact)."""
    return warp(feat_b.to(flow.dtype), flow, padding="zeros")


def convex_upsample(x: torch.Tensor, mask: torch.Tensor, factor: int) -> torch.Tensor:
    """Up-sample ``x`` ``(B, C, H, W)`` by ``factor``: each output pixel is a convex combination
    of the 3×3 input pixels around the one it lies in (edges replicated), with weights
    ``softmax`` over the 9 of ``mask`` ``(B, 9·factor², H, W)`` (channel ``n·factor² + i·factor
    + j`` for neighbour ``n`` (row-major 3×3) of sub-pixel row ``i``, column ``j``). A zero mask
    averages the 9 neighbours. Values are combined, not rescaled (flows in input pixels).
    Output ``(B, C, factor·H, factor·W)``.

    On CPU tensors a numba kernel (:mod:`cyclecorr._upsample`, sums in float32 or float64),
    elsewhere :func:`convex_upsample_reference`."""
    b, c, h, w = x.shape
    f = factor
    if mask.shape != (b, 9 * f * f, h, w):
        raise ValueError(f"mask must be ({b}, {9 * f * f}, {h}, {w}), got {tuple(mask.shape)}")
    if x.device.type == "cpu" and mask.device.type == "cpu" and x.is_floating_point():
        return convex_upsample_numba(x, mask, f)
    return convex_upsample_reference(x, mask, f)


def convex_upsample_reference(x: torch.Tensor, mask: torch.Tensor, factor: int) -> torch.Tensor:
    """:func:`convex_upsample` in PyTorch operations (any device, any autograd order)."""
    b, c, h, w = x.shape
    f = factor
    # a sum over the 9 neighbours (1.5-3× faster on a CPU than one broadcast product or a
    # per-pixel bmm: no (C, 9, f², H, W) temporary)
    wts = torch.softmax(mask.reshape(b, 9, f * f, h, w).to(x.dtype), dim=1)
    xp = F.pad(x, (1, 1, 1, 1), mode="replicate")
    out = None
    for n, wn in enumerate(wts.unbind(1)):  # unbind: one backward op, not 9 zero-filled copies
        dy, dx = divmod(n, 3)
        term = xp[:, :, dy:dy + h, dx:dx + w].unsqueeze(2) * wn.unsqueeze(1)
        out = term if out is None else out + term  # (B, C, f², H, W)
    return out.view(b, c, f, f, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c, f * h, f * w)


# --- the network -----------------------------------------------------------------------------

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
_NORMS = ("none", "batch", "instance")
_STRIDES = (2, 4, 8)  # pyramid levels, fine to coarse


def _triple(name: str, v, kind=int) -> tuple:
    try:
        t = tuple(kind(x) for x in v)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of 3 numbers (levels 1/2, 1/4, 1/8), "
                         f"got {v!r}") from None
    if len(t) != 3:
        raise ValueError(f"{name} must have 3 values (levels 1/2, 1/4, 1/8), got {v!r}")
    return t


@dataclass
class CostVolumeConfig:
    """Options of :class:`CostVolumeNet` (defaults: sized for a 2-core CPU at 128×128).

    Sequences of three give one value per pyramid level, **fine to coarse** (1/2, 1/4, 1/8 of the
    input resolution).

    Attributes:
        image_size: input side in pixels (a positive multiple of 16).
        width: channel multiplier on the pyramid and the decoders (not on the heads).
        pyramid_channels: learned feature channels per level (two 3×3 convolutions each).
        decoder_channels: hidden channels of each level's decoder.
        decoder_convs: 3×3 convolutions per decoder (after a 1×1 input convolution).
        norm: normalisation in the pyramid: ``"none"``, ``"batch"`` or ``"instance"`` (the
            decoders have none).
        sift: add the fixed dense-SIFT descriptor's similarity (128-d, from 8 cell channels) to
            the learned features' in the correlations.
        sift_levels: how many of the coarsest levels use it (3: all, 2: 1/8 and 1/4).
        sift_input_stride: 1 computes the SIFT gradients at the input resolution, 2 on the image
            averaged over 2×2 blocks.
        radius: local-correlation radius per level, in that level's pixels (at 1/8 it is the
            correlation around the initial match).
        top_k: sorted best similarities of each source pixel (over the whole target), fed to
            the 1/8 decoder with the local correlation around the initial match.
        kernel_radius: the kernel soft-argmax's window around the argmax, in 1/8-level pixels.
        kernel_sigma: its Gaussian kernel's standard deviation, in 1/8-level pixels.
        temperature: initial softmax temperature on the global correlation (learned).
        coarse_init: where the 1/8 level starts: ``"argmax"`` (the kernel soft-argmax match of
            the global correlation is the initial flow, its local correlation around it) or
            ``"zero"`` (the initial flow is zero, as the paper network's untrained output: the
            local correlation is taken around each pixel itself and the soft-argmax
            displacement enters the decoder as two input channels, so the decoder moves a pixel
            away from where it is only where the correlation supports it).
        detach_warp: warp the target features by the current flow without a gradient into
            the sampling positions (as RAFT detaches its flow between iterations): each level's
            flow still receives the loss's gradient through the residual sum; the warps' and
            the SIFT correlations' backward passes are then not computed.
        local_argmax: at 1/4 and 1/2, also read the local correlation's soft-argmax
            displacement (:func:`local_soft_argmax`, learned temperature per level, initially
            ``temperature``): its two channels enter the level's decoder, and it is added to the
            level's residual flow scaled by a learned gate (initially ``argmax_gate``), so a
            level moves to its best local match before anything is learnt (LoFTR's fine-level
            expectation, applied at every refinement level).
        argmax_gate: the gates' initial value.
        feature_weight, sift_weight: initial scales of the L2-normalised learned and SIFT parts
            of the correlation features (learned, one pair per level); a similarity is
            ``feature_weight²·cos(learned) + sift_weight²·cos(SIFT)``.
    """

    #: the architecture's name in :func:`cyclecorr.model.build_network` (not a field)
    arch: ClassVar[str] = "costvol"

    image_size: int = 128
    width: float = 1.0
    pyramid_channels: tuple = (16, 32, 64)
    decoder_channels: tuple = (24, 32, 48)
    decoder_convs: int = 2
    norm: str = "none"
    sift: bool = True
    sift_levels: int = 2
    sift_input_stride: int = 2
    radius: tuple = (1, 3, 2)
    top_k: int = 4
    kernel_radius: int = 2
    kernel_sigma: float = 1.0
    temperature: float = 20.0
    coarse_init: str = "argmax"
    detach_warp: bool = True
    local_argmax: bool = False
    argmax_gate: float = 1.0
    feature_weight: float = 0.5
    sift_weight: float = 1.0

    def __post_init__(self):
        if not isinstance(self.image_size, int) or self.image_size <= 0 or self.image_size % 16:
            raise ValueError(f"image_size must be a positive multiple of 16, got "
                             f"{self.image_size!r}")
        if not self.width > 0:
            raise ValueError(f"width must be positive, got {self.width}")
        self.pyramid_channels = _triple("pyramid_channels", self.pyramid_channels)
        self.decoder_channels = _triple("decoder_channels", self.decoder_channels)
        self.radius = _triple("radius", self.radius)
        for name in ("pyramid_channels", "decoder_channels"):
            if min(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if min(self.radius) < 0 or max(self.radius) > 8:
            raise ValueError(f"radius must be integers in [0, 8], got {self.radius}")
        if not (isinstance(self.decoder_convs, int) and self.decoder_convs >= 1):
            raise ValueError(f"decoder_convs must be an integer >= 1, got {self.decoder_convs!r}")
        if self.norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {self.norm!r}")
        if self.coarse_init not in ("argmax", "zero"):
            raise ValueError(f"coarse_init must be 'argmax' or 'zero', got {self.coarse_init!r}")
        if not isinstance(self.local_argmax, bool):
            raise ValueError(f"local_argmax must be true or false, got {self.local_argmax!r}")
        if not math.isfinite(self.argmax_gate):
            raise ValueError(f"argmax_gate must be a finite number, got {self.argmax_gate!r}")
        if not isinstance(self.detach_warp, bool):
            raise ValueError(f"detach_warp must be true or false, got {self.detach_warp!r}")
        if not isinstance(self.sift, bool):
            raise ValueError(f"sift must be true or false, got {self.sift!r}")
        if self.sift_levels not in (1, 2, 3):
            raise ValueError(f"sift_levels must be 1, 2 or 3, got {self.sift_levels!r}")
        if self.sift_input_stride not in (1, 2):
            raise ValueError(f"sift_input_stride must be 1 or 2, got {self.sift_input_stride!r}")
        if not (isinstance(self.top_k, int) and self.top_k >= 1):
            raise ValueError(f"top_k must be an integer >= 1, got {self.top_k!r}")
        if not (isinstance(self.kernel_radius, int) and 1 <= self.kernel_radius <= 8):
            raise ValueError(f"kernel_radius must be an integer in [1, 8], got "
                             f"{self.kernel_radius!r}")
        for name in ("kernel_sigma", "temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.feature_weight > 0:
            raise ValueError(f"feature_weight must be positive, got {self.feature_weight}")
        if self.sift and not self.sift_weight > 0:
            raise ValueError(f"sift_weight must be positive, got {self.sift_weight}")

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("pyramid_channels", "decoder_channels", "radius"):
            d[k] = list(d[k])
        return d


def _norm_layer(kind: str, ch: int) -> list[nn.Module]:
    if kind == "batch":
        return [nn.BatchNorm2d(ch)]
    if kind == "instance":
        return [nn.InstanceNorm2d(ch, affine=True)]
    return []


def _level(cin: int, cout: int, norm: str, first: bool) -> nn.Sequential:
    """One pyramid level: [ReLU] conv3×3/2 [norm] ReLU conv3×3 [norm]. The level's output is
    the last convolution's (signed, so learned cosines are not all positive); the next level
    starts with the ReLU."""
    layers: list[nn.Module] = [] if first else [nn.ReLU()]
    layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), *_norm_layer(norm, cout),
               nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, padding=1),
               *_norm_layer(norm, cout)]
    return nn.Sequential(*layers)


class _Decoder(nn.Module):
    """conv1×1 (in → d) ReLU, ``n`` × [conv3×3 (d → d) ReLU] = hidden state; head conv3×3
    (d → 3): a residual flow (x, y, in the level's pixels) and a residual matchability logit;
    with ``mask`` a 1×1 convolution (d → 36) of the convex up-sampling weights."""

    def __init__(self, cin: int, d: int, n: int, mask: bool):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(cin, d, 1), nn.ReLU(inplace=True)]
        for _ in range(n):
            layers += [nn.Conv2d(d, d, 3, padding=1), nn.ReLU(inplace=True)]
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Conv2d(d, 3, 3, padding=1)
        self.mask = nn.Conv2d(d, 36, 1) if mask else None

    def forward(self, x):
        h = self.trunk(x)
        return h, self.head(h), (self.mask(h) if self.mask is not None else None)


class CostVolumeNet(nn.Module):
    """Dense flow + matchability from a cost volume (see the module docstring and
    :class:`CostVolumeConfig`).

    ``forward(src, tgt)`` takes two ``(B, 3, S, S)`` float tensors in [0, 1] and returns
    ``{"flow": (B, 2, S, S) pixels, flow_src→tgt, channel 0 = x; "matchability": (B, 1, S, S) in
    [0, 1]; "matchability_logits": (B, 1, S, S)}``, float32 also under autocast.

    The halves, for a training step that encodes each image once: :meth:`encode_levels`
    (``code`` = the 1/8 features, ``skips`` = the 1/4 and 1/2 features; each the learned
    channels followed by the 128 SIFT channels), :meth:`encode_pair`, :meth:`decode`,
    :meth:`decode_flow`, :meth:`decode_matchability`.
    """

    #: one decoder computes flow and matchability (see :class:`cyclecorr.train.modules.CycleModule`)
    decodes_jointly = True

    def __init__(self, config: CostVolumeConfig | None = None, **overrides):
        super().__init__()
        cfg = config or CostVolumeConfig()
        if overrides:
            cfg = CostVolumeConfig(**{**cfg.to_dict(), **overrides})
        self.config = cfg
        ch = [max(1, int(round(c * cfg.width))) for c in cfg.pyramid_channels]
        dec = [max(1, int(round(c * cfg.width))) for c in cfg.decoder_channels]
        self._ch = ch
        # which levels (fine to coarse) carry the 8 SIFT cell channels
        self._sift = [cfg.sift and i >= 3 - cfg.sift_levels for i in range(3)]
        self.pyramid = nn.ModuleList(
            [_level(3 if i == 0 else ch[i - 1], ch[i], cfg.norm, i == 0) for i in range(3)])
        # the similarity scales of the learned and SIFT parts, per level (fine to coarse)
        self.feature_weight = nn.Parameter(torch.full((3,), float(cfg.feature_weight)))
        # one SIFT scale per level that uses SIFT (fine to coarse; none without SIFT)
        if cfg.sift:
            self.sift_weight = nn.Parameter(torch.full((cfg.sift_levels,), float(cfg.sift_weight)))
        else:
            self.register_parameter("sift_weight", None)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(cfg.temperature)))
        k = [(2 * r + 1) ** 2 for r in cfg.radius]
        a = 2 if cfg.local_argmax else 0  # the soft-argmax displacement's channels
        if cfg.local_argmax:  # per refinement level (1/2, 1/4)
            self.argmax_gate = nn.Parameter(torch.full((2,), float(cfg.argmax_gate)))
            self.log_argmax_temperature = nn.Parameter(
                torch.full((2,), math.log(cfg.temperature)))
        else:
            self.register_parameter("argmax_gate", None)
            self.register_parameter("log_argmax_temperature", None)
        self.decoders = nn.ModuleList([
            _Decoder(k[0] + ch[0] + 3 + a + dec[1], dec[0], cfg.decoder_convs, mask=True),
            _Decoder(k[1] + ch[1] + 3 + a + dec[2], dec[1], cfg.decoder_convs, mask=False),
            _Decoder(k[2] + ch[2] + 2 + cfg.top_k, dec[2], cfg.decoder_convs, mask=False),
        ])
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan-out, ReLU) hidden convolutions with zero biases; zero heads and
        mask layers (an untrained network outputs the kernel soft-argmax flow of the 1/8
        correlation, up-sampled, and matchability 0.5); the similarity scales and temperature at
        their configured initial values."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for d in self.decoders:
            for m in (d.head, d.mask):
                if m is not None:
                    nn.init.zeros_(m.weight)
                    nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.feature_weight.fill_(self.config.feature_weight)
            if self.sift_weight is not None:
                self.sift_weight.fill_(self.config.sift_weight)
            self.log_temperature.fill_(math.log(self.config.temperature))
            if self.argmax_gate is not None:
                self.argmax_gate.fill_(self.config.argmax_gate)
                self.log_argmax_temperature.fill_(math.log(self.config.temperature))

    def grown_keys(self) -> list[str]:
        """No layer of this network is grown into an older model file."""
        return []

    def set_input_size(self, size: int) -> CostVolumeNet:
        """Run at ``size × size`` from now on (a positive multiple of 16); returns ``self``. No
        layer depends on the number of pixels; the flow is in the new size's pixels."""
        self.config = dataclasses.replace(self.config, image_size=int(size))
        return self

    def _check(self, name: str, x: torch.Tensor) -> None:
        s = self.config.image_size
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3 or \
                x.shape[2] != s or x.shape[3] != s:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must have shape (B, 3, {s}, {s}), got {shape}")

    # -- encoder ----------------------------------------------------------------------------

    def encode_levels(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """``(code, skips)`` of ``(B, 3, S, S)`` images in [0, 1]: ``code`` ``(B, c₃ + 8, S/8,
        S/8)``, ``skips`` ``((B, c₂ + 8, S/4, S/4), (B, c₁ + 8, S/2, S/2))`` (coarse to fine);
        each the L2-normalised learned features followed by the 8 dense-SIFT cell channels of
        that level (:func:`sift_cells`; in the learned features' dtype; without ``sift`` the
        learned features alone)."""
        self._check("images", images)
        x = (images - self.mean) / self.std
        feats = []
        for level in self.pyramid:
            x = level(x)
            feats.append(F.normalize(x, dim=1, eps=1e-6).to(x.dtype))
        levels = [i for i in range(3) if self._sift[i]]
        if levels:
            cells = sift_cells(images, [_STRIDES[i] for i in levels],
                               input_stride=self.config.sift_input_stride)
            for i, c in zip(levels, cells):
                feats[i] = _cat(feats[i], c)
        return feats[2], (feats[1], feats[0])

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The 1/8 code of :meth:`encode_levels`."""
        return self.encode_levels(images)[0]

    def encode_pair(self, src: torch.Tensor, tgt: torch.Tensor) -> tuple:
        """Check and encode a batch of pairs in one pass: ``(code_src, code_tgt, skips_src,
        skips_tgt)``, the arguments of :meth:`decode`."""
        self._check("src", src)
        self._check("tgt", tgt)
        if src.shape[0] != tgt.shape[0]:
            raise ValueError(f"batch sizes differ: src {tuple(src.shape)} vs tgt "
                             f"{tuple(tgt.shape)}")
        code, skips = self.encode_levels(torch.cat((src, tgt), 0))
        cs, ct = code.chunk(2, 0)
        halves = [f.chunk(2, 0) for f in skips]
        return cs, ct, tuple(h[0] for h in halves), tuple(h[1] for h in halves)

    # -- decoder ----------------------------------------------------------------------------

    def _global_features(self, f: torch.Tensor, source: bool) -> torch.Tensor:
        """The 1/8 features of the global correlation: ``[a²·learned, b²·SIFT descriptor]`` for
        the source, ``[learned, SIFT descriptor]`` for the target, so that a dot product is
        ``a²·cos(learned) + b²·cos(SIFT)``."""
        c = self._ch[2]
        parts = [f[:, :c]]
        if self._sift[2]:
            parts.append(sift_descriptors(f[:, c:].detach()).to(f.dtype))  # fixed: no gradient
        if source:
            parts[0] = parts[0] * self.feature_weight[2].square().to(f.dtype)
            if self._sift[2]:
                parts[1] = parts[1] * self._sift_scale(2).to(f.dtype)
        return torch.cat(parts, 1) if len(parts) > 1 else parts[0]

    def _warp(self, f_tgt: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """The target features read at ``p + flow(p)`` (level pixels), in their dtype; with
        ``detach_warp`` the sampling positions carry no gradient."""
        if self.config.detach_warp:
            flow = flow.detach()
        return warp_features(f_tgt, flow).to(f_tgt.dtype)

    def _sift_scale(self, level: int) -> torch.Tensor:
        """``b²`` of a level that uses SIFT."""
        return self.sift_weight[level - (3 - len(self.sift_weight))].square()

    def _local(self, f_src: torch.Tensor, f_tgt: torch.Tensor, level: int) -> torch.Tensor:
        """``a²·(learned local correlation) + b²·(SIFT local correlation)`` of a source feature
        map and a (warped) target feature map of one level: ``(B, (2r+1)², h, w)``."""
        c, r = self._ch[level], self.config.radius[level]
        out = local_correlation(f_src[:, :c], f_tgt[:, :c], r) * \
            self.feature_weight[level].square().to(f_src.dtype)
        if self._sift[level]:
            s = sift_local_correlation(f_src[:, c:].detach(), f_tgt[:, c:].detach(), r)
            out = out + s.to(out.dtype) * self._sift_scale(level).to(out.dtype)
        return out

    def _check_levels(self, code_src, code_tgt, skips_src, skips_tgt) -> None:
        if len(skips_src) != 2 or len(skips_tgt) != 2:
            raise ValueError(f"decode needs the two skip feature maps of each image "
                             f"(encode_levels), got {len(skips_src)} and {len(skips_tgt)}")
        for i, (a, b) in enumerate(zip((code_src, *skips_src), (code_tgt, *skips_tgt))):
            want = self._ch[2 - i] + 8 * self._sift[2 - i]
            if a.shape != b.shape or a.dim() != 4 or a.shape[1] != want:
                raise ValueError(f"level 1/{_STRIDES[2 - i]}: source and target features must "
                                 f"both be (B, {want}, H, W), got {tuple(a.shape)} and "
                                 f"{tuple(b.shape)}")

    def decode(self, code_src: torch.Tensor, code_tgt: torch.Tensor,
               skips_src: tuple = (), skips_tgt: tuple = ()) -> dict[str, torch.Tensor]:
        """Flow and matchability in one pass (see the class doc) from :meth:`encode_pair`'s
        features."""
        self._check_levels(code_src, code_tgt, skips_src, skips_tgt)
        cfg = self.config
        temp = self.log_temperature.exp()
        # 1/8: global correlation, kernel soft-argmax, statistics, local correlation around it
        fa, fb = self._global_features(code_src, True), self._global_features(code_tgt, False)
        b, _, h, w = code_src.shape
        corr = global_correlation(fa, fb).float()  # (B, h·w, h·w)
        top, best = self._top_k(corr)
        pos = kernel_soft_argmax(corr, h, w, temp, cfg.kernel_sigma, cfg.kernel_radius, best)
        flow = pos.transpose(1, 2).reshape(b, 2, h, w) - pixel_grid(h, w, device=fa.device)
        stats = top.transpose(1, 2).reshape(b, -1, h, w)  # flow above: 1/8-level pixels
        src = code_src[:, :self._ch[2]]
        if cfg.coarse_init == "zero":  # the match is a feature; the flow starts at zero
            local = self._local(code_src, code_tgt, 2)
            hid, out, _ = self.decoders[2](_cat(local, src, flow, stats))
            flow = out[:, :2].float()
        else:
            local = self._local(code_src, self._warp(code_tgt, flow), 2)
            hid, out, _ = self.decoders[2](_cat(local, src, flow, stats))
            flow = flow + out[:, :2].float()
        logit = out[:, 2:].float()
        flow = flow * _STRIDES[2]  # input pixels from here on
        # 1/4 and 1/2: warp, local correlation, residual
        mask = None
        for level, f_src, f_tgt in ((1, skips_src[0], skips_tgt[0]),
                                    (0, skips_src[1], skips_tgt[1])):
            s = _STRIDES[level]
            flow, logit, hid = (_up2(t) for t in (flow, logit, hid))
            flow_l = flow / s
            local = self._local(f_src, self._warp(f_tgt, flow_l), level)
            state = (flow_l, logit)
            if cfg.local_argmax:
                disp = local_soft_argmax(local, cfg.radius[level],
                                         self.log_argmax_temperature[level].exp())
                state += (disp,)
            x = _cat(local, f_src[:, :self._ch[level]], torch.cat(state, 1), hid)
            hid, out, mask = self.decoders[level](x)
            flow = flow + out[:, :2].float() * s
            if cfg.local_argmax:
                flow = flow + self.argmax_gate[level] * disp * s
            logit = logit + out[:, 2:].float()
        up = convex_upsample(torch.cat((flow, logit), 1), mask, 2)
        flow, logit = up[:, :2].contiguous(), up[:, 2:].contiguous()
        return {"flow": flow, "matchability": torch.sigmoid(logit), "matchability_logits": logit}

    def _top_k(self, corr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, N, top_k)`` each row's largest similarities (descending; the last repeated where
        a row is shorter) and ``(B, N)`` the argmax."""
        k, n = self.config.top_k, corr.shape[-1]
        top, idx = corr.topk(min(k, n), dim=-1)
        if n < k:
            top = torch.cat((top, top[..., -1:].expand(*top.shape[:-1], k - n)), -1)
        return top, idx[..., 0]

    def decode_flow(self, code_src: torch.Tensor, code_tgt: torch.Tensor,
                    skips_src: tuple = (), skips_tgt: tuple = ()) -> torch.Tensor:
        """The flow of :meth:`decode` ``(B, 2, S, S)`` (the matchability logits come from the
        same decoders, so nothing is saved by leaving them out)."""
        return self.decode(code_src, code_tgt, skips_src, skips_tgt)["flow"]

    def decode_matchability(self, code_src: torch.Tensor, code_tgt: torch.Tensor,
                            skips_src: tuple = (), skips_tgt: tuple = ()) -> torch.Tensor:
        """The matchability logits of :meth:`decode` ``(B, 1, S, S)`` (a full decoder pass:
        the matchability of each level is read from its correlation)."""
        return self.decode(code_src, code_tgt, skips_src, skips_tgt)["matchability_logits"]

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.decode(*self.encode_pair(src, tgt))

    # -- cost --------------------------------------------------------------------------------

    def flops_per_pair(self) -> int:
        """Multiply-accumulate count ×2 of one forward pass on one (src, tgt) pair: two encoder
        passes and one decoder pass (convolutions and correlation matrix products)."""
        f = self.flops_by_part()
        return 2 * f["encoder"] + f["correlation"] + f["decoder"]

    def flops_by_part(self) -> dict[str, int]:
        """Multiply-accumulate count ×2 of one forward pass of each part at ``image_size``:

        - ``encoder``: the pyramid's convolutions on one image;
        - ``decoder``: the decoders' convolutions for one pair;
        - ``correlation``: the correlations of one pair as computed: the global ``bmm``, the
          tiled local-correlation ``bmm`` products (their redundant dot products included, see
          :func:`local_correlation`), the SIFT cell correlations and their 4×4 box sums;
        - ``flow_decoder`` and ``match_decoder``: what :meth:`decode_flow` and
          :meth:`decode_matchability` each compute for one pair, ``correlation + decoder`` (both
          run the whole decoder: the matchability is read from the correlations).

        The dense-SIFT bands, warps, soft-argmax and up-sampling are element-wise and not
        counted.
        """
        s = self.config.image_size

        def convs(module: nn.Module, side: int) -> int:  # every convolution at one resolution
            return sum(2 * side * side * m.kernel_size[0] * m.kernel_size[1]
                       * (m.in_channels // m.groups) * m.out_channels
                       for m in module.modules() if isinstance(m, nn.Conv2d))

        totals = {"encoder": sum(convs(lv, s // st) for lv, st in zip(self.pyramid, _STRIDES)),
                  "decoder": sum(convs(d, s // st) for d, st in zip(self.decoders, _STRIDES))}
        corr = 0
        n8 = (s // 8) ** 2
        corr += 2 * n8 * n8 * (self._ch[2] + 128 * self._sift[2])  # global
        for level in range(3):
            side = s // _STRIDES[level]
            r = self.config.radius[level]
            k = (2 * r + 1) ** 2
            for c in (self._ch[level], 8 if self._sift[level] else 0):
                if c:
                    t = min(4 if c < 32 else 8, side)
                    corr += 2 * ((side + t - 1) // t) ** 2 * t * t * (t + 2 * r) ** 2 * c
            if self._sift[level]:
                corr += 2 * 16 * k * side * side  # the 4×4 box sums of the cell correlations
        totals["correlation"] = corr
        totals["flow_decoder"] = totals["match_decoder"] = corr + totals["decoder"]
        return totals


def _cat(*ts: torch.Tensor) -> torch.Tensor:
    """Concatenate ``(B, C_i, H, W)`` tensors (each ``C_i ≥ 2``) over channels in the first
    tensor's dtype and memory layout (channels-last when its channels are the innermost axis):
    ``torch.cat`` of mixed layouts comes out NCHW, and the next convolution would copy it back;
    under autocast float32 parts would promote the whole input to float32. (A 1-channel map has
    no definite layout: join it to another part first.)"""
    first = ts[0]
    fmt = torch.channels_last if first.stride(1) == 1 and first.shape[1] > 1 else \
        torch.contiguous_format
    return torch.cat([t.to(first.dtype).contiguous(memory_format=fmt) for t in ts], 1)


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
