"""Flow colour coding with the Middlebury colour wheel (Baker et al., IJCV 2011).

Direction → hue, magnitude → saturation: a flow vector ``(u, v)`` (channel 0 = x, 1 = y, pixels;
image y points down) with angle ``a = atan2(−v, −u)`` and normalised length ``r = |f| / max_flow``
reads the wheel at position ``(a/π + 1)/2 · (K − 1)`` (``K`` = 55 colours: red→yellow 15,
yellow→green 6, green→cyan 4, cyan→blue 11, blue→magenta 13, magenta→red 6), linearly
interpolated, then mixed with white: ``c = 1 − r·(1 − c_wheel)`` for ``r ≤ 1``; longer vectors
(``r > 1``) are darkened, ``c = 0.75·c_wheel``. Zero flow is white. Unknown flow (NaN) is black.
"""
from __future__ import annotations

import numpy as np

__all__ = ["color_wheel", "flow_to_color", "color_wheel_legend", "flow_legend", "page_flow_scale"]

_SEGMENTS = (15, 6, 4, 11, 13, 6)  # RY, YG, GC, CB, BM, MR


def color_wheel() -> np.ndarray:
    """``(55, 3)`` float wheel colours in [0, 1] (Middlebury order, starting at red)."""
    cols = []
    ry, yg, gc, cb, bm, mr = _SEGMENTS
    # each segment ramps one channel while the others are fixed
    for i in range(ry):
        cols.append((1.0, i / ry, 0.0))
    for i in range(yg):
        cols.append((1.0 - i / yg, 1.0, 0.0))
    for i in range(gc):
        cols.append((0.0, 1.0, i / gc))
    for i in range(cb):
        cols.append((0.0, 1.0 - i / cb, 1.0))
    for i in range(bm):
        cols.append((i / bm, 0.0, 1.0))
    for i in range(mr):
        cols.append((1.0, 0.0, 1.0 - i / mr))
    return np.asarray(cols, dtype=np.float64)


def _as_uv(flow) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(flow, dtype=np.float64)
    if hasattr(flow, "detach"):
        f = flow.detach().cpu().numpy().astype(np.float64)
    if f.ndim == 4 and f.shape[0] == 1:
        f = f[0]
    if f.ndim == 3 and f.shape[0] == 2:
        return f[0], f[1]
    if f.ndim == 3 and f.shape[2] == 2:
        return f[..., 0], f[..., 1]
    raise ValueError(f"flow must be (2, H, W) or (H, W, 2), got {f.shape}")


def flow_to_color(flow, max_flow: float | None = None) -> np.ndarray:
    """Colour-code a flow: ``(2, H, W)`` / ``(H, W, 2)`` (or a ``(1, 2, H, W)`` tensor) → ``H×W×3``
    uint8. ``max_flow`` (pixels) is the length shown fully saturated; default: the largest finite
    length in the field (at least 1)."""
    u, v = _as_uv(flow)
    bad = ~(np.isfinite(u) & np.isfinite(v))
    u = np.where(bad, 0.0, u)
    v = np.where(bad, 0.0, v)
    mag = np.sqrt(u ** 2 + v ** 2)
    if max_flow is None:
        max_flow = float(mag.max()) if mag.size else 1.0
    max_flow = max(float(max_flow), 1e-9) if max_flow > 0 else 1.0
    r = mag / max_flow
    wheel = color_wheel()
    k = len(wheel)
    a = np.arctan2(-v, -u) / np.pi  # in [−1, 1]
    fk = (a + 1.0) / 2.0 * (k - 1)
    k0 = np.floor(fk).astype(np.int64) % k
    k1 = (k0 + 1) % k
    w = (fk - np.floor(fk))[..., None]
    col = (1 - w) * wheel[k0] + w * wheel[k1]
    inside = (r <= 1)[..., None]
    col = np.where(inside, 1.0 - r[..., None] * (1.0 - col), col * 0.75)
    col[bad] = 0.0
    return np.clip(np.floor(255.0 * col + 0.5), 0, 255).astype(np.uint8)


def color_wheel_legend(size: int = 64) -> np.ndarray:
    """A ``size × size`` picture of the coding (flow pointing from the centre to each pixel,
    saturated at the inscribed circle)."""
    c = (size - 1) / 2.0
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    return flow_to_color(np.stack([xs - c, ys - c]), max_flow=c)


def page_flow_scale(sizes) -> float:
    """The flow length (pixels) drawn at full colour on a page: a round number (1, 2 or 5 × a
    power of ten) at most a fifth of the longest image side in ``sizes`` (``(H, W)`` pairs), at
    least 1. It depends on the image sizes only, never on the flows, so that a small flow looks
    small and every pair on a page shares one scale."""
    longest = max((max(int(h), int(w)) for h, w in sizes), default=128)
    target = max(1.0, longest / 5.0)
    k = 10.0 ** np.floor(np.log10(target))
    return float(max(m * k for m in (1.0, 2.0, 5.0) if m * k <= target))


def flow_legend(scale: float, size: int = 200) -> np.ndarray:
    """The colour key of :func:`flow_to_color` at ``max_flow = scale`` as an ``H×W×3`` uint8
    picture with axes in pixels: the colour at (u, v) is that of a flow vector (u, v) (x right,
    y down); full colour on the circle of radius ``scale``, darker beyond it."""
    import matplotlib  # on use: heavy, and pyplot must come after the Agg backend is chosen

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    r = 1.3 * scale
    n = 161
    us = np.linspace(-r, r, n)
    uu, vv = np.meshgrid(us, us)
    img = flow_to_color(np.stack([uu, vv]), max_flow=scale)
    dpi = 100
    fig = plt.figure(figsize=(size / dpi * 1.25, size / dpi * 1.2), dpi=dpi)
    ax = fig.add_axes([0.2, 0.18, 0.75, 0.72])
    ax.imshow(img, extent=(-r, r, r, -r), interpolation="bilinear")
    t = np.linspace(0, 2 * np.pi, 200)
    for rad, style in ((scale, "-"), (scale / 2, ":")):
        ax.plot(rad * np.cos(t), rad * np.sin(t), style, color="k", lw=0.8)
    ax.annotate(f"{scale:g} px", (scale * 0.71, -scale * 0.71), fontsize=7,
                xytext=(2, 2), textcoords="offset points")
    ax.set_xlim(-r, r)
    ax.set_ylim(r, -r)
    ax.tick_params(labelsize=6)
    ax.set_xlabel("flow x (px, right +)", fontsize=7)
    ax.set_ylabel("flow y (px, down +)", fontsize=7)
    ax.set_title(f"white: 0 px; full colour: {scale:g} px", fontsize=7)
    fig.canvas.draw()
    out = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return out
