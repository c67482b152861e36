"""Dense SIFT: one 128-d SIFT descriptor per pixel (the "SIFT image" of SIFT flow).

Follows the construction of Liu et al.'s dense SIFT used by SIFT flow (TPAMI 2011, ``mexDenseSIFT``
/ ``ImageFeature::imSIFT`` with ``cellsize = 3``, ``gridspacing = 1``, boundary included), written
here from its description:

1. Gradients ``(I_x, I_y)`` of every colour channel with the 5-tap derivative
   ``[1, -8, 0, 8, -1]/12`` (edges replicated); per pixel the channel with the largest magnitude
   ``m`` is kept (colour images).
2. Orientation energy in 8 bands ``θ_k = 2πk/8``: ``e_k = m · max(cos(θ − θ_k), 0)^9`` (Liu's
   "alpha = 9" decay, a smooth soft binning).
3. Each band is pooled over a cell with Liu's separable box kernel of ``2c + 1`` taps
   (``c = cell_size``): weights ``0.25, 1, …, 1, 0.25`` at offsets ``−c … +1`` (c ones in between),
   i.e. a box of width ``c + 1`` centred at offset −1, zero elsewhere.
4. The descriptor of pixel ``p = (x, y)`` concatenates the pooled bands at the 4×4 cell positions
   ``(x + i·c, y + j·c)``, ``i, j ∈ {−1, 0, 1, 2}`` (coordinates clamped to the image): a 4c×4c
   patch, the same geometry for both images, so it biases no flow.
5. ``v ← min(255 · v / (‖v‖₂ + ε), 255)`` with ``ε = 0.01`` (Liu stores this as uint8; here it
   stays float32, not rounded). Flat regions get small descriptors, textured ones norm ≈ 255 — the
   scale for which the published energy parameters ``α = 2·255`` etc. are set.

Invariances: adding a constant to the image changes no gradient, so the descriptors are exactly
unchanged (as long as nothing saturates); multiplying it by a constant changes them only through ε.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["dense_sift", "as_float_image"]

_DERIV = np.array([1.0, -8.0, 0.0, 8.0, -1.0]) / 12.0


def as_float_image(image, name: str = "image") -> np.ndarray:
    """Convert an image to a float64 ``H×W×C`` array (C = 1 or 3) on the [0, 1] scale.

    Accepts numpy ``H×W``, ``H×W×1``, ``H×W×3`` (uint8 → divided by 255; floats taken as [0, 1]),
    ``H×W×4`` (alpha dropped), PIL images, and channel-first ``3×H×W`` / ``1×3×H×W`` arrays or
    torch tensors (detected by shape). Raises ``ValueError`` naming ``name`` on empty, NaN/inf or
    wrongly shaped input.
    """
    if hasattr(image, "detach"):  # torch tensor
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, 2)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"{name}: expected an H×W, H×W×3 or 3×H×W image, got shape {arr.shape}")
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ValueError(f"{name}: image too small ({arr.shape[0]}×{arr.shape[1]})")
    if arr.dtype == np.uint8:
        out = arr.astype(np.float64) / 255.0
    elif arr.dtype == np.uint16:
        out = arr.astype(np.float64) / 65535.0
    elif arr.dtype == bool:
        out = arr.astype(np.float64)
    elif np.issubdtype(arr.dtype, np.number):
        out = arr.astype(np.float64)
    else:
        raise ValueError(f"{name}: unsupported dtype {arr.dtype}")
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name}: image contains NaN or infinite values")
    return out


def dense_sift(image, cell_size: int = 3, n_orientations: int = 8, eps: float = 0.01,
               orientation_power: int = 9) -> np.ndarray:
    """Dense SIFT image of ``image``: ``(H, W, 16·n_orientations)`` float32, values in [0, 255].

    ``image``: see :func:`as_float_image` (uint8, or float on [0, 1]). Formulas in the module
    docstring. ``cell_size = 3`` is the SIFT flow default (patch of 4×4 cells = 12×12 pixels).
    """
    if cell_size < 1:
        raise ValueError(f"cell_size must be ≥ 1, got {cell_size}")
    img = as_float_image(image)
    h, w, _ = img.shape
    gx = ndimage.correlate1d(img, _DERIV, axis=1, mode="nearest")
    gy = ndimage.correlate1d(img, _DERIV, axis=0, mode="nearest")
    mag2 = gx * gx + gy * gy
    best = np.argmax(mag2, axis=2)[:, :, None]
    gx = np.take_along_axis(gx, best, axis=2)[:, :, 0]
    gy = np.take_along_axis(gy, best, axis=2)[:, :, 0]
    mag = np.sqrt(gx * gx + gy * gy)
    safe = np.where(mag > 0, mag, 1.0)
    ux, uy = gx / safe, gy / safe
    bands = np.empty((h, w, n_orientations), np.float32)
    for k in range(n_orientations):
        t = 2 * np.pi * k / n_orientations
        c = np.maximum(ux * np.cos(t) + uy * np.sin(t), 0.0)
        bands[:, :, k] = c ** orientation_power * mag
    # Liu's cell kernel: taps at offsets -c..c, weights 0.25, 1 (c times), 0.25, then zeros
    k = np.zeros(2 * cell_size + 1, np.float32)
    k[0] = k[cell_size + 1] = 0.25
    k[1:cell_size + 1] = 1.0
    bands = ndimage.correlate1d(bands, k, axis=0, mode="nearest")
    bands = ndimage.correlate1d(bands, k, axis=1, mode="nearest")
    # gather the 4x4 grid of cells
    offs = np.array([-1, 0, 1, 2]) * cell_size
    desc = np.empty((h, w, 4, 4, n_orientations), np.float32)
    ys = np.arange(h)
    xs = np.arange(w)
    for j, dy in enumerate(offs):
        yy = np.clip(ys + dy, 0, h - 1)
        for i, dx in enumerate(offs):
            xx = np.clip(xs + dx, 0, w - 1)
            desc[:, :, j, i, :] = bands[yy][:, xx]
    desc = desc.reshape(h, w, -1)
    norm = np.sqrt(np.einsum("ijk,ijk->ij", desc, desc, dtype=np.float64))
    desc *= (255.0 / (norm + eps))[:, :, None].astype(np.float32)
    np.minimum(desc, np.float32(255.0), out=desc)
    return desc
