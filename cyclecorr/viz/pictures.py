"""Pictures of a correspondence: warps, matchability heat maps, keypoint/grid transfer overlays,
and PNG writing. numpy images are ``H×W×3`` uint8; flows ``(2, H, W)`` or ``(H, W, 2)`` (channel
0 = x, pixels, ``flow_ab(p) = q − p``); keypoints ``(N, 2)`` (x, y) 0-based. matplotlib runs on the
Agg backend (no display needed).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from cyclecorr._io import atomic_path
from cyclecorr.geometry import inside_mask, pixel_grid, rescale_points, sample

__all__ = ["warp_image", "heatmap", "blend", "grid_points", "draw_correspondences",
           "save_png", "side_by_side", "colorbar", "salient_points"]


def _flow_chw(flow) -> np.ndarray:
    f = np.asarray(flow, dtype=np.float32)
    if f.ndim == 3 and f.shape[0] == 2:
        return f
    if f.ndim == 3 and f.shape[2] == 2:
        return np.ascontiguousarray(f.transpose(2, 0, 1))
    raise ValueError(f"flow must be (2, H, W) or (H, W, 2), got {f.shape}")


def _check_image(name: str, image) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"{name} must be H×W×3, got {a.shape}")
    if a.dtype != np.uint8:
        a = np.clip(np.asarray(a, np.float64) * (255.0 if a.max() <= 1.0 else 1.0), 0, 255)
        a = (a + 0.5).astype(np.uint8)
    return a


def warp_image(image_b, flow_ab, fill: int = 0) -> np.ndarray:
    """Target warped onto the source: ``out(p) = image_b(p + flow_ab(p))`` (bilinear; points
    outside b get ``fill``). Output has the flow's ``H×W``; b may have another size."""
    b = _check_image("image_b", image_b)
    f = torch.from_numpy(_flow_chw(flow_ab))[None]
    img = torch.from_numpy(np.array(b)).permute(2, 0, 1)[None].float()
    q = pixel_grid(*f.shape[-2:]) + f
    out = sample(img, q, "border")
    ok = inside_mask(q, *b.shape[:2]).bool()
    out = torch.where(ok, out, torch.full_like(out, float(fill)))
    return out[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()


def heatmap(values, cmap: str = "inferno", vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """``H×W`` values → ``H×W×3`` uint8 with a matplotlib colour map (default: inferno, 0 dark)."""
    import matplotlib  # on use: heavy, needed by the pictures that draw with it

    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"values must be H×W, got {v.shape}")
    t = np.clip((np.nan_to_num(v, nan=vmin) - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    rgba = matplotlib.colormaps[cmap](t)
    return (rgba[..., :3] * 255 + 0.5).astype(np.uint8)


def colorbar(cmap: str = "inferno", label: str = "matchability", width: int = 260,
             threshold: float | None = 0.5) -> np.ndarray:
    """A horizontal colour bar of :func:`heatmap`'s 0–1 scale as an ``H×W×3`` uint8 picture, with
    ticks and an optional marked threshold."""
    import matplotlib  # on use: heavy, and pyplot must come after the Agg backend is chosen

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    dpi = 100
    fig = plt.figure(figsize=(width / dpi, 0.62), dpi=dpi)
    ax = fig.add_axes([0.05, 0.55, 0.9, 0.3])
    ax.imshow(heatmap(np.linspace(0, 1, 256)[None].repeat(8, 0), cmap), aspect="auto",
              extent=(0, 1, 0, 1))
    ax.set_yticks([])
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.tick_params(labelsize=6, length=2, pad=1)
    if threshold is not None:
        ax.axvline(threshold, color="#2ecc40", lw=1.2)
    ax.set_title(label, fontsize=7, pad=2)
    fig.canvas.draw()
    out = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return out


def salient_points(image, matchability=None, n: int = 12, threshold: float = 0.5,
                   min_dist: float | None = None) -> np.ndarray:
    """Up to ``n`` well-spread source points worth checking by eye: corners and edges of the
    image's structure (smoothed structure tensor's smaller eigenvalue, so flat sky and fine road
    noise score low; below 5 % of the best score nothing is picked), weighted by matchability
    and restricted to pixels with matchability ≥ ``threshold`` when it is given; greedy
    selection keeps points ``min_dist`` apart (default: an eighth of the smaller side).
    Returns ``(N, 2)`` (x, y) float, integer pixel centres."""
    a = _check_image("image", image).astype(np.float64).mean(axis=2) / 255.0
    h, w = a.shape
    g = ndimage.gaussian_filter(a, 1.0)
    gx = ndimage.sobel(g, axis=1)
    gy = ndimage.sobel(g, axis=0)
    s = max(1.5, min(h, w) / 40.0)
    jxx = ndimage.gaussian_filter(gx * gx, s)
    jyy = ndimage.gaussian_filter(gy * gy, s)
    jxy = ndimage.gaussian_filter(gx * gy, s)
    score = 0.5 * (jxx + jyy) - np.sqrt(0.25 * (jxx - jyy) ** 2 + jxy ** 2)
    score = np.clip(score, 0, None)
    border = max(1, int(round(min(h, w) * 0.04)))
    ok = np.zeros((h, w), bool)
    ok[border:h - border, border:w - border] = True
    if matchability is not None:
        m = np.nan_to_num(np.asarray(matchability, np.float64))
        if m.shape != (h, w):
            raise ValueError(f"matchability is {m.shape}, image is {(h, w)}")
        ok &= m >= threshold
        score = score * m
    score = np.where(ok, score, -1.0)
    md = min(h, w) / 8.0 if min_dist is None else float(min_dist)
    floor = max(0.05 * float(score.max()), 1e-12)  # weak responses are not worth checking
    order = np.argsort(score, axis=None)[::-1]
    picked: list[tuple[int, int]] = []
    for idx in order:
        if len(picked) >= n or score.flat[idx] < floor:
            break
        y, x = divmod(int(idx), w)
        if all((x - px) ** 2 + (y - py) ** 2 >= md * md for px, py in picked):
            picked.append((x, y))
    return np.asarray(picked, np.float64).reshape(-1, 2)


def blend(image, overlay, alpha: float = 0.5) -> np.ndarray:
    """``(1 − α)·image + α·overlay`` for two ``H×W×3`` uint8 images of one size."""
    a = _check_image("image", image).astype(np.float64)
    b = _check_image("overlay", overlay).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"image {a.shape} and overlay {b.shape} differ")
    return ((1 - alpha) * a + alpha * b + 0.5).astype(np.uint8)


def grid_points(height: int, width: int, step: int | None = None, n: int = 10,
                mask=None) -> np.ndarray:
    """Regular grid of ``(x, y)`` points (``n`` per side, or every ``step`` px), centred; only
    those inside ``mask`` (``H×W`` bool) when given. Returns ``(N, 2)`` float."""
    if step is None:
        step = max(1, int(round(min(height, width) / n)))
    xs = np.arange(step / 2.0, width, step)
    ys = np.arange(step / 2.0, height, step)
    gx, gy = np.meshgrid(xs, ys)
    pts = np.stack([gx.ravel(), gy.ravel()], 1)
    pts = np.floor(pts).clip(0, [width - 1, height - 1])
    if mask is not None:
        m = np.asarray(mask, bool)
        pts = pts[m[pts[:, 1].astype(int), pts[:, 0].astype(int)]]
    return pts.astype(np.float64)


def side_by_side(image_a, image_b, gap: int = 8) -> tuple[np.ndarray, float, float]:
    """``[a | gap | b]`` on white, both scaled to the same height. Returns the canvas and the
    scale and x offset of b (a keeps its size: b is resized to a's height)."""
    a = _check_image("image_a", image_a)
    b = _check_image("image_b", image_b)
    h = a.shape[0]
    sb = h / b.shape[0]
    wb = max(1, int(round(b.shape[1] * sb)))
    b_rs = np.asarray(Image.fromarray(b).resize((wb, h), Image.BILINEAR))
    canvas = np.full((h, a.shape[1] + gap + wb, 3), 255, np.uint8)
    canvas[:, :a.shape[1]] = a
    canvas[:, a.shape[1] + gap:] = b_rs
    return canvas, sb, float(a.shape[1] + gap)


def draw_correspondences(image_a, image_b, kps_a, kps_b, path, valid=None, kps_b_true=None,
                         title: str | None = None, dpi: int = 100, min_height: int = 320,
                         numbers: bool = False, max_width: int = 4096) -> Path:
    """Side-by-side picture of a and b with lines from ``kps_a`` to ``kps_b`` (``(N, 2)`` each,
    in a's and b's pixels), each pair in its own colour (and numbered with ``numbers``); optional
    ground truth ``kps_b_true`` (drawn as crosses); rows with ``valid = False`` or NaN are
    skipped. Pictures lower than ``min_height`` px are enlarged for display. Saves a PNG to
    ``path``."""
    import matplotlib  # on use: heavy, and pyplot must come after the Agg backend is chosen

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    canvas, sb, off = side_by_side(image_a, image_b)
    # small images are enlarged for display (coordinates scaled to match), never beyond
    # max_width pixels across (a long thin image would otherwise make a huge canvas)
    zoom = max(1.0, min(min_height / canvas.shape[0], max_width / canvas.shape[1]))
    if zoom > 1.0:
        zh, zw = int(round(canvas.shape[0] * zoom)), int(round(canvas.shape[1] * zoom))
        canvas = np.asarray(Image.fromarray(canvas).resize((zw, zh), Image.BILINEAR))
    ka = np.asarray(kps_a, np.float64).reshape(-1, 2)
    kb = np.asarray(kps_b, np.float64).reshape(-1, 2)
    if ka.shape != kb.shape:
        raise ValueError(f"kps_a {ka.shape} and kps_b {kb.shape} differ")
    ok = np.isfinite(ka).all(1) & np.isfinite(kb).all(1)
    if valid is not None:
        ok &= np.asarray(valid, bool)
    h, w = canvas.shape[:2]
    fig = plt.figure(figsize=(w / dpi, h / dpi), dpi=dpi)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(canvas)
    colors = plt.get_cmap("hsv")(np.linspace(0, 1, max(len(ka), 1), endpoint=False))
    def za(x):  # a's pixel → canvas pixel (pixel centres stay centres under the zoom)
        return rescale_points(x, zoom)

    for i in np.flatnonzero(ok):
        xa, ya = za(ka[i, 0]), za(ka[i, 1])
        xb, yb = za(kb[i, 0] * sb + off), za(kb[i, 1] * sb)
        big = numbers and len(ka) <= 30
        ax.plot([xa, xb], [ya, yb], "-", color=colors[i], lw=1.2 if big else 0.7, alpha=0.8)
        for x, y in ((xa, ya), (xb, yb)):
            ax.plot([x], [y], "o", color=colors[i], ms=5 if big else 2.5, mec="k" if big else None,
                    mew=0.5)
            if numbers:
                ax.text(x + 4, y - 4, str(i + 1), color="white", fontsize=7, fontweight="bold",
                        bbox=dict(facecolor=colors[i], alpha=0.8, pad=0.6, lw=0))
    if kps_b_true is not None:
        kt = np.asarray(kps_b_true, np.float64).reshape(-1, 2)
        for i in np.flatnonzero(np.isfinite(kt).all(1)):
            ax.plot([za(kt[i, 0] * sb + off)], [za(kt[i, 1] * sb)], "x",
                    color=colors[i % len(colors)], ms=5, mew=1.5)
    if title:
        ax.text(4, 12, title, color="white", fontsize=8,
                bbox=dict(facecolor="black", alpha=0.5, pad=1, lw=0))
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.axis("off")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def save_png(path, image) -> Path:
    """Write an ``H×W×3`` (or ``H×W``) uint8 image as PNG (folders created)."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"{path}: save_png needs uint8, got {a.dtype}")
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(a).save(tmp, format="PNG")
    return path
