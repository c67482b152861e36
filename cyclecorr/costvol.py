"""A correspondence network with a cost volume (``arch="costvol"``).

Dense-SIFT layer (this part): a fixed, non-learned dense SIFT-like descriptor in plain torch ops.

- :func:`orientation_bands`: per-pixel gradients with the 5-tap derivative ``[1, -8, 0, 8, -1]/12``
  (edges replicated), the colour channel of largest magnitude ``m`` kept, and soft orientation
  binning into ``n`` bands ``θ_k = 2πk/n``: ``e_k = m · max(cos(θ − θ_k), 0)^9``.
- :func:`dense_sift_liu`: Liu et al.'s full-resolution construction (SIFT flow's
  ``cyclecorr.siftflow.dense_sift``), for checking the bands against the numpy reference.
- :func:`sift_level`: the descriptor used by the network at a pyramid level of stride ``s``: the
  bands are averaged over ``s × s`` cells aligned with the level's pixels, the 4×4 cells at
  offsets ``−1 … 2`` (edges replicated) are concatenated (``16·n`` = 128 values), L2-normalised,
  clipped at 0.2 and normalised again (Lowe's SIFT normalisation).

Conventions: images ``(B, 3, H, W)`` (or ``(B, 1, H, W)``) float on [0, 1]; band ``k`` holds
gradients pointing along ``(cos θ_k, sin θ_k)`` in pixel axes (x right, y down).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["orientation_bands", "dense_sift_liu", "sift_level"]

_DERIV = (1.0, -8.0, 0.0, 8.0, -1.0)


def _check_images(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] not in (1, 3):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a (B, 3, H, W) or (B, 1, H, W) tensor, got {shape}")


def orientation_bands(images: torch.Tensor, n_orientations: int = 8,
                      orientation_power: int = 9) -> torch.Tensor:
    """Oriented gradient energy ``(B, n, H, W)`` of ``(B, C, H, W)`` images (C = 1 or 3).

    ``e_k(p) = m(p) · max(cos(θ(p) − 2πk/n), 0)^power`` where ``(m, θ)`` is the gradient (5-tap
    derivative, edges replicated) of the colour channel with the largest magnitude at ``p``.
    Computed in the input's dtype (float32 under autocast: callers cast first).
    """
    _check_images("images", images)
    b, c, h, w = images.shape
    k = torch.tensor(_DERIV, dtype=images.dtype, device=images.device) / 12.0
    x = images.reshape(b * c, 1, h, w)
    gx = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), k.view(1, 1, 1, 5))
    gy = F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), k.view(1, 1, 5, 1))
    gx, gy = gx.view(b, c, h, w), gy.view(b, c, h, w)
    if c > 1:
        best = (gx * gx + gy * gy).argmax(1, keepdim=True)
        gx, gy = gx.gather(1, best), gy.gather(1, best)
    mag = torch.sqrt(gx * gx + gy * gy)
    safe = torch.where(mag > 0, mag, torch.ones_like(mag))
    ux, uy = gx / safe, gy / safe
    t = torch.arange(n_orientations, dtype=images.dtype, device=images.device)
    t = t * (2 * math.pi / n_orientations)
    cos = (ux * torch.cos(t).view(1, -1, 1, 1) + uy * torch.sin(t).view(1, -1, 1, 1)).clamp_min(0)
    return cos.pow(orientation_power) * mag


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


def sift_level(bands: torch.Tensor, stride: int, clip: float = 0.2,
               eps: float = 1e-3) -> torch.Tensor:
    """The dense-SIFT descriptor at a pyramid level of stride ``stride``: ``(B, n, H, W)`` bands
    (:func:`orientation_bands`, ``H`` and ``W`` multiples of ``stride``) → ``(B, 16·n, H/s, W/s)``.

    Cells are the ``s × s`` blocks of the level's pixels (band means); the descriptor of level
    pixel ``i`` concatenates the cells ``i − 1 … i + 2`` in x and y (edges replicated), then
    ``u = v / (‖v‖ + eps)``, ``w = min(u, clip)``, ``out = w · ‖u‖ / ‖w‖``. A textured region gives
    a unit vector, a region of gradient energy ``≪ eps`` a short one (it matches weakly), a flat
    region the zero vector (it matches nothing).
    """
    h, w = bands.shape[-2:]
    if stride < 1 or h % stride or w % stride:
        raise ValueError(f"the bands' size {h}x{w} must be a multiple of the stride {stride}")
    cells = F.avg_pool2d(bands, stride) if stride > 1 else bands
    v = _gather_cells(cells, 1)
    u = v / (v.norm(dim=1, keepdim=True) + eps)
    w = u.clamp_max(clip)
    return w * (u.norm(dim=1, keepdim=True) / w.norm(dim=1, keepdim=True).clamp_min(1e-12))
