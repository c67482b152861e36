"""SIFT flow (Liu, Yuen, Torralba, "SIFT Flow: Dense Correspondence across Scenes and its
Applications", TPAMI 2011): dense SIFT + a discrete MRF solved by dual-layer loopy belief
propagation, coarse to fine.

Conventions (cyclecorr, DESIGN.md): the result ``flow`` is ``flow_ab`` with shape ``(2, H_a, W_a)``,
channel 0 = x, channel 1 = y, in pixels; pixel centres at integer coordinates ``0 … W−1``;
``flow_ab(p) = q − p`` with q the match of a's pixel p in image b, so that sampling b at
``p + flow_ab(p)`` gives an image aligned with a. (Liu's ``SIFTflowc2f(im1, im2)`` returns the same
quantity, ``vx, vy`` such that ``warpImage(im2, vx, vy)`` ≈ im1, so im1 = a, im2 = b.)

Energy minimised at every pyramid level (integer flow ``w = (u, v)``, 4-neighbourhood N)::

    E(w) = Σ_p min(‖s_a(p) − s_b(p + w(p))‖₁, t)                 data, s = dense SIFT (×255)
         + Σ_p γ_ℓ (|u(p)| + |v(p)|)                              small displacement
         + Σ_(p,q)∈N min(α |u(p) − u(q)|, d) + min(α |v(p) − v(q)|, d)   smoothness

Candidates ``p + w`` outside image b get the data cost of the median of all inside candidates
(Liu's "default matching score"). ``t`` (``data_threshold``) is ``None`` by default: Liu's released
code (``mexDiscreteFlow``) does not truncate the data term although the paper writes it truncated;
``"median"`` truncates at that same median, a number truncates there.

Coarse to fine: the SIFT images are smoothed (Gaussian σ = 0.67, 5 taps) and halved ``n_levels − 1``
times (2×2 averaging, so coarse pixel i has its centre at fine coordinate 2i + 0.5). At the coarsest
level the search window is ``±top_window`` around zero with ``n_top_iterations`` BP iterations; at
each finer level the flow from the level above is upsampled (bilinear), doubled and rounded, and
searched ``±window`` around it with ``round(linspace(n_iterations, 0.6·n_iterations, n_levels))``
iterations (finest level gets ``n_iterations``). The small-displacement weight at level ℓ
(0 = finest) is ``γ·2^ℓ``, as in Liu's ``SIFTflowc2f``.

Published defaults (Liu's release, ``demo.m``; also the values used by later papers comparing with
SIFT flow): cell size 3, α = 2·255, d = 40·255, γ = 0.005·255, 4 levels, window 2, top window 10,
60 top iterations, 30 iterations. At 128×128 the top level is 16×16 and ±10 px there is ±80 px at
full resolution, ample for the ~30 px displacements of 128×128 object crops.

Inside each level, as in Liu's code, BP messages are initialised by multigrid BP (``nHierarchy``):
the same MRF on 2×2-merged nodes (data terms summed) is solved first with 20 iterations, and its
messages are copied to the children; 2 such levels at the top, ``n_levels − 1 − ℓ`` at level ℓ.
This matters: in our tests BP started from zero messages with α = 2·255 ends close to its
starting (zero) flow, far above the energy that the multigrid start reaches.

Deviations from Liu's C++ (documented): the returned labelling of each level is the lowest-energy
one decoded over the iterations (Liu returns the last one); the dense SIFT is our own
implementation of the same construction (``dense_sift``); the pyramid uses 2×2 averaging after the
Gaussian instead of MATLAB's bicubic ``imresize``; images of different sizes are handled by resizing
b to a's size (see :func:`sift_flow`), not by a per-pixel scaling offset. Measured on TSS (cars and
bikes at 160 px wide, flow1 = image1 → image2): with these defaults 55–97 % of the masked pixels
are within 5 px of the ground truth on the five non-flipped pairs (zero flow: 0–46 %).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage
from skimage.transform import resize

from cyclecorr.geometry import rescale_points
from cyclecorr.siftflow import _bp
from cyclecorr.siftflow.dense_sift import as_float_image, dense_sift

__all__ = ["SiftFlowParams", "SiftFlowResult", "sift_flow", "sift_flow_descriptors",
           "matchability_from_cost"]


@dataclass(frozen=True)
class SiftFlowParams:
    """Parameters of SIFT flow; defaults are the published ones (Liu's release, ``demo.m``).

    - ``cell_size`` (3): dense SIFT cell size in pixels (patch = 4×4 cells).
    - ``alpha`` (2·255): smoothness weight, per pixel of flow difference.
    - ``d`` (40·255): truncation of the smoothness term (so flow jumps > 20 px cost the same).
    - ``gamma`` (0.005·255): small-displacement weight at the finest level (×2^ℓ at level ℓ).
    - ``n_levels`` (4): pyramid levels (reduced automatically so the top level is ≥ 4 px).
    - ``window`` (2) / ``top_window`` (10): search half-width at the finer levels / the top level.
    - ``n_iterations`` (30) / ``n_top_iterations`` (60): BP iterations at the finest / top level.
    - ``data_threshold`` (None): truncation t of the data term: None (Liu's code), "median" or a
      number (same units as the L1 distance of two ×255 SIFT descriptors).
    - ``top_hierarchy`` (2): multigrid BP levels at the top level (Liu's ``nHierarchy``; the finer
      pyramid level ℓ uses ``n_levels − 1 − ℓ``).
    """

    cell_size: int = 3
    alpha: float = 2.0 * 255
    d: float = 40.0 * 255
    gamma: float = 0.005 * 255
    n_levels: int = 4
    window: int = 2
    top_window: int = 10
    n_iterations: int = 30
    n_top_iterations: int = 60
    data_threshold: float | str | None = None
    top_hierarchy: int = 2

    def __post_init__(self):
        if (self.cell_size < 1 or self.n_levels < 1 or self.window < 0 or self.top_window < 0
                or self.top_hierarchy < 0):
            raise ValueError(f"invalid SiftFlowParams: {self}")
        if self.n_iterations < 1 or self.n_top_iterations < 1:
            raise ValueError(f"SiftFlowParams: iteration counts must be ≥ 1: {self}")
        if not (np.isfinite(self.alpha) and np.isfinite(self.d) and np.isfinite(self.gamma)):
            raise ValueError(f"SiftFlowParams: alpha, d, gamma must be finite: {self}")
        if isinstance(self.data_threshold, str) and self.data_threshold != "median":
            raise ValueError(f"data_threshold must be None, 'median' or a number, got "
                             f"{self.data_threshold!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SiftFlowResult:
    """Output of :func:`sift_flow`.

    - ``flow``: ``(2, H_a, W_a)`` float32, flow_ab in a's pixels pointing into b's pixels.
    - ``cost``: ``(H_a, W_a)`` float32, the (untruncated) L1 distance between the ×255 SIFT
      descriptors of p in a and of its match in b (lower = better; a matchability baseline).
      Matches outside b get the level's default score (median of all candidate costs).
    - ``energy``: per level (coarsest first, finest last) the energy of the starting flow (zero at
      the top, the upsampled coarser flow below), then the energy after every BP iteration. The
      flow of each level is the lowest-energy one of these.
    - ``energy_per_level``: the same split by level (coarsest first).
    - ``level_shapes``: ``(H, W)`` of each level, coarsest first.
    """

    flow: np.ndarray
    cost: np.ndarray
    energy: list = field(default_factory=list)
    energy_per_level: list = field(default_factory=list)
    level_shapes: list = field(default_factory=list)


def _downsample(img: np.ndarray) -> np.ndarray:
    """Gaussian σ = 0.67 (5 taps), then 2×2 averaging (edge replicated for odd sizes)."""
    return _bp.downsample(np.ascontiguousarray(img, dtype=np.float32))


def _upsample(maps: np.ndarray, shape) -> np.ndarray:
    """Coarse maps (C,h,w) → (C,H,W) on the next finer level: bilinear at (p − 0.5)/2."""
    hh, ww = shape
    yc = np.clip((np.arange(hh) - 0.5) / 2.0, 0, maps.shape[1] - 1)
    xc = np.clip((np.arange(ww) - 0.5) / 2.0, 0, maps.shape[2] - 1)
    gy, gx = np.meshgrid(yc, xc, indexing="ij")
    return np.stack([ndimage.map_coordinates(f, [gy, gx], order=1, mode="nearest") for f in maps])


def _upsample_flow(flow: np.ndarray, shape) -> np.ndarray:
    """Coarse flow (2,h,w) → (2,H,W) in fine pixels: bilinear at (p − 0.5)/2, times 2."""
    return 2.0 * _upsample(flow, shape)


def _run_level(s1, s2, off, win, gamma, params, n_iter, n_hier):
    """One level: data term, range term, BP. Returns (flow int (2,H,W), cost, energies)."""
    off_x = np.ascontiguousarray(off[0], dtype=np.int32)
    off_y = np.ascontiguousarray(off[1], dtype=np.int32)
    raw = _bp.data_term(s1, s2, off_x, off_y, int(win))
    inside = raw >= 0
    default = float(np.median(raw[inside])) if inside.any() else 0.0
    raw[~inside] = default
    dterm = raw
    thr = params.data_threshold
    if thr is not None:
        t = default if thr == "median" else float(thr)
        dterm = np.minimum(raw, np.float32(t))
    n = 2 * win + 1
    labels_disp = np.arange(n, dtype=np.float32) - win
    offs = np.stack([off_x, off_y]).astype(np.float32)
    rng = (gamma * np.abs(offs[:, :, :, None] + labels_disp)).astype(np.float32)
    offs_i = np.stack([off_x, off_y])
    labels, energies, _, _ = _bp.multigrid_bp(dterm, rng, offs_i, gamma, int(win), params.alpha,
                                              params.d, int(n_iter), int(n_hier))
    flow = offs_i + labels - win
    h, w = labels.shape[1:]
    yy, xx = np.indices((h, w))
    cost = raw[yy, xx, labels[1], labels[0]]
    return flow, cost.astype(np.float32), energies.tolist()


def _pool_flow(flow: np.ndarray, levels: int) -> np.ndarray:
    """A fine flow ``(2, H, W)`` at pyramid level ``levels``: 2×2 averaging ``levels`` times (edge
    replicated for odd sizes, as the SIFT pyramid), each time halved (coarse pixels)."""
    f = np.asarray(flow, dtype=np.float64)
    for _ in range(levels):
        if f.shape[1] % 2:
            f = np.concatenate([f, f[:, -1:]], axis=1)
        if f.shape[2] % 2:
            f = np.concatenate([f, f[:, :, -1:]], axis=2)
        f = 0.25 * (f[:, 0::2, 0::2] + f[:, 1::2, 0::2] + f[:, 0::2, 1::2] + f[:, 1::2, 1::2]) / 2.0
    return f


def _check_init(init_flow, shape, init_level: int, init_window: int) -> np.ndarray:
    f = np.asarray(init_flow, dtype=np.float64)
    if f.shape != (2, *shape):
        raise ValueError(f"init_flow must have shape (2, H, W) = {(2, *shape)}, got {f.shape}")
    if not np.all(np.isfinite(f)):
        raise ValueError("init_flow contains NaN or infinite values")
    if init_level < 0 or init_window < 0:
        raise ValueError(f"init_level and init_window must be ≥ 0, got {init_level}, "
                         f"{init_window}")
    return f


def sift_flow_descriptors(sift_a: np.ndarray, sift_b: np.ndarray,
                          params: SiftFlowParams | None = None, init_flow=None,
                          init_level: int = 2, init_window: int = 4,
                          stop_level: int = 0) -> SiftFlowResult:
    """SIFT flow between two SIFT images of the same size ``(H, W, C)`` (see :func:`sift_flow`;
    ``init_flow``, ``init_level``, ``init_window``, ``stop_level`` as there)."""
    params = params or SiftFlowParams()
    if sift_a.shape != sift_b.shape or sift_a.ndim != 3:
        raise ValueError(f"SIFT images must have equal shapes (H, W, C): {sift_a.shape} vs "
                         f"{sift_b.shape}")
    if not (np.all(np.isfinite(sift_a)) and np.all(np.isfinite(sift_b))):
        raise ValueError("SIFT images contain NaN or infinite values")
    if init_flow is not None:
        init_flow = _check_init(init_flow, sift_a.shape[:2], init_level, init_window)
    pyr_a = [np.ascontiguousarray(sift_a, dtype=np.float32)]
    pyr_b = [np.ascontiguousarray(sift_b, dtype=np.float32)]
    n_levels = params.n_levels
    while len(pyr_a) < n_levels and min(pyr_a[-1].shape[:2]) >= 8:
        pyr_a.append(_downsample(pyr_a[-1]))
        pyr_b.append(_downsample(pyr_b[-1]))
    n_levels = len(pyr_a)
    iters = np.round(np.linspace(params.n_iterations, params.n_iterations * 0.6,
                                 max(n_levels, 1))).astype(int)
    top = n_levels - 1 if init_flow is None else min(int(init_level), n_levels - 1)
    stop = min(int(stop_level), top)
    if stop < 0:
        raise ValueError(f"stop_level must be ≥ 0, got {stop_level}")
    flow = None
    energy_per_level, shapes = [], []
    cost = None
    for lev in range(top, stop - 1, -1):
        s1, s2 = pyr_a[lev], pyr_b[lev]
        h, w = s1.shape[:2]
        gamma = params.gamma * 2.0 ** lev
        if init_flow is not None and lev == top:
            off = np.round(_pool_flow(init_flow, lev)).astype(np.int32)
            win, n_it = int(init_window), int(iters[lev])
            n_hier = n_levels - lev
        elif lev == n_levels - 1:
            off = np.zeros((2, h, w), np.int32)
            win, n_it = params.top_window, params.n_top_iterations
            n_hier = params.top_hierarchy
        else:
            off = np.round(_upsample_flow(flow.astype(np.float64), (h, w))).astype(np.int32)
            win, n_it = params.window, int(iters[lev])
            n_hier = n_levels - 1 - lev + (init_flow is not None)
        flow, cost, energies = _run_level(s1, s2, off, win, gamma, params, n_it, n_hier)
        energy_per_level.append(energies)
        shapes.append((h, w))
    for lev in range(stop - 1, -1, -1):  # levels not searched: bilinear, in that level's pixels
        flow = _upsample_flow(flow.astype(np.float64), pyr_a[lev].shape[:2])
        cost = _upsample(cost[None].astype(np.float64), pyr_a[lev].shape[:2])[0]
    return SiftFlowResult(flow=flow.astype(np.float32), cost=cost.astype(np.float32),
                          energy=[e for es in energy_per_level for e in es],
                          energy_per_level=energy_per_level, level_shapes=shapes)


def _resize(img: np.ndarray, shape) -> np.ndarray:
    return resize(img, (shape[0], shape[1], img.shape[2]), order=1, mode="edge",
                  anti_aliasing=True)


def sift_flow(image_a, image_b, params: SiftFlowParams | None = None, init_flow=None,
              init_level: int = 2, init_window: int = 4, stop_level: int = 0) -> SiftFlowResult:
    """SIFT flow from image a to image b: ``flow_ab`` ``(2, H_a, W_a)`` and the per-pixel cost.

    ``image_a``, ``image_b``: numpy ``H×W×3`` (or ``H×W``) uint8, or float on [0, 1]; PIL images and
    channel-first ``3×H×W`` arrays/tensors are accepted too. The flow is integer-valued (discrete
    labels) and follows cyclecorr's conventions: ``flow_ab(p) = q − p``, channel 0 = x, 1 = y.

    Images of different sizes: b is resized (bilinear, anti-aliased, pixel-centre aligned) to a's
    size, matched, and the match q' in the resized b is mapped back to b's pixels with
    ``q = (q' + 0.5)·(W_b / W_a) − 0.5`` (same in y), so the flow is still in a's pixels pointing
    into b's pixels (then no longer integer-valued).

    ``init_flow`` (optional, ``(2, H_a, W_a)`` in a's pixels pointing into b's, e.g. a network's
    flow): a *guided* SIFT flow. The coarser levels are skipped; at pyramid level ``init_level``
    (0 = finest; clipped to the coarsest) the search starts from ``init_flow`` (2×2-averaged to
    that level, halved per level, rounded) within ``±init_window`` there, with that level's
    iterations and multigrid start, and the finer levels follow as usual (``±window`` around the
    upsampled flow). So the result is SIFT flow's energy minimum near the guide: at the default
    level 2 a ±4 window reaches ±16 px of the guide at full resolution. Each guided level starts
    its belief propagation from one more multigrid level than unguided SIFT flow's finer levels
    (``n_levels − ℓ`` instead of ``n_levels − 1 − ℓ``): with the wider window at the start this
    reaches lower energies (on the synth-kp-car renders, PCK@0.05 0.26 against 0.21). Images of
    different sizes: ``init_flow`` is in b's pixels and is mapped into the resized b first.

    ``stop_level`` (default 0): the finest pyramid level searched; the flow and cost found there
    are upsampled bilinearly to full size (the flow is then no longer integer-valued). Level 1
    halves the search's resolution and skips its costliest level.

    Parameters and the energy: see :class:`SiftFlowParams` and the module docstring.
    """
    params = params or SiftFlowParams()
    a = as_float_image(image_a, "image_a")
    b = as_float_image(image_b, "image_b")
    if a.shape[2] != b.shape[2]:  # mix of grey and colour: compare in grey
        a = a.mean(axis=2, keepdims=True)
        b = b.mean(axis=2, keepdims=True)
    ha, wa = a.shape[:2]
    hb, wb = b.shape[:2]
    b_rs = b if (hb, wb) == (ha, wa) else _resize(b, (ha, wa))
    if init_flow is not None:
        init_flow = _check_init(init_flow, (ha, wa), init_level, init_window)
        if (hb, wb) != (ha, wa):
            init_flow = _retarget(init_flow, wa / wb, ha / hb)
    sa = dense_sift(a, cell_size=params.cell_size)
    sb = dense_sift(b_rs, cell_size=params.cell_size)
    res = sift_flow_descriptors(sa, sb, params, init_flow=init_flow, init_level=init_level,
                                init_window=init_window, stop_level=stop_level)
    if (hb, wb) != (ha, wa):
        res.flow = _retarget(res.flow, wb / wa, hb / ha).astype(np.float32)
    return res


def _retarget(flow: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """``flow_ab`` ``(2, H, W)`` re-expressed for b resized by ``(sx, sy)``: each match moved by
    :func:`~cyclecorr.geometry.rescale_points`, the source pixels staying (float64)."""
    h, w = flow.shape[1:]
    p = np.indices((h, w), dtype=np.float64)[::-1]  # (x, y) of each source pixel
    return rescale_points(p + flow, np.array([sx, sy])[:, None, None]) - p


def matchability_from_cost(cost: np.ndarray, scale: float | None = None) -> np.ndarray:
    """A matchability baseline from SIFT flow's per-pixel cost: ``exp(−cost / scale)`` in (0, 1].

    ``scale`` defaults to the median of ``cost`` (so half the pixels score above ``e^{-1}``); the
    result is ``(H, W)`` float32. Lower matching cost → higher matchability.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.size == 0 or not np.all(np.isfinite(cost)):
        raise ValueError("cost must be a non-empty finite array")
    if scale is None:
        scale = float(np.median(cost))
    if not scale > 0:
        scale = 1.0
    return np.exp(-cost / scale).astype(np.float32)
