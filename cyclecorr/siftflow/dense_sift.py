"""Dense SIFT: one 128-d SIFT descriptor per pixel (the "SIFT image" of SIFT flow).

Follows the construction of Liu et al.'s dense SIFT used by SIFT flow (TPAMI 2011, ``mexDenseSIFT``
with ``cellsize = 3``, ``gridspacing = 1``), written from the description, not copied:

1. Gradients ``(I_x, I_y)`` of every colour channel with the 5-tap derivative ``[1, -8, 0, 8, -1]/12``
   (edges replicated); per pixel the channel with the largest magnitude is kept (colour images).
2. The gradient orientation ``θ = atan2(I_y, I_x)`` is soft-binned into 8 orientation bins
   (linear interpolation between the two nearest bin centres ``2πk/8``), weighted by the magnitude.
3. Each orientation plane is pooled over a cell with a separable triangular kernel of half-width
   ``cell_size`` (weights ``cell_size + 1 − |i|``, normalised to sum 1).
4. The descriptor of pixel ``p = (x, y)`` concatenates the pooled histograms of a 4×4 grid of cells
   centred at ``(x + i·c, y + j·c)``, ``i, j ∈ {−1, 0, 1, 2}`` (``c = cell_size``; coordinates
   clamped to the image), i.e. a 4c×4c patch whose centre sits at ``p + c/2``, the same for both
   images so that it biases no flow.
5. ``v ← v / (‖v‖₂ + ε)``, clipped at 0.2, renormalised, and scaled by 255 (the value range of
   Liu's uint8 SIFT images, for which the published energy parameters ``α = 2·255`` etc. are set).

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
               clip: float = 0.2) -> np.ndarray:
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
    theta = np.mod(np.arctan2(gy, gx), 2 * np.pi)
    pos = theta / (2 * np.pi / n_orientations)
    b0 = np.floor(pos).astype(np.int64)
    frac = pos - b0
    b0 %= n_orientations
    b1 = (b0 + 1) % n_orientations
    hist = np.zeros((h, w, n_orientations))
    rows, cols = np.indices((h, w))
    np.add.at(hist, (rows, cols, b0), mag * (1.0 - frac))
    np.add.at(hist, (rows, cols, b1), mag * frac)
    # cell pooling: separable triangular kernel of half-width cell_size
    k = cell_size + 1.0 - np.abs(np.arange(-cell_size, cell_size + 1, dtype=np.float64))
    k /= k.sum()
    hist = ndimage.correlate1d(hist, k, axis=0, mode="nearest")
    hist = ndimage.correlate1d(hist, k, axis=1, mode="nearest")
    # gather the 4x4 grid of cells
    offs = np.array([-1, 0, 1, 2]) * cell_size
    desc = np.empty((h, w, 4, 4, n_orientations))
    ys = np.arange(h)
    xs = np.arange(w)
    for j, dy in enumerate(offs):
        yy = np.clip(ys + dy, 0, h - 1)
        for i, dx in enumerate(offs):
            xx = np.clip(xs + dx, 0, w - 1)
            desc[:, :, j, i, :] = hist[yy][:, xx]
    desc = desc.reshape(h, w, -1)
    desc /= np.linalg.norm(desc, axis=2, keepdims=True) + eps
    np.minimum(desc, clip, out=desc)
    desc /= np.linalg.norm(desc, axis=2, keepdims=True) + eps
    return (desc * 255.0).astype(np.float32)
