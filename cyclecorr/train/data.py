"""Training data: deterministic batch order, augmentation, synthetic quartets, stage-1 pairs.

Exact resume and DDP equality rest on one rule: **what a process sees at iteration t is a pure
function of (seed, t, rank, world size)**. :func:`global_batch` draws the global batch of step t
from per-epoch permutations seeded by (seed, epoch); each DDP rank takes a contiguous slice of it;
augmentation draws come from a generator seeded by (seed, t, position in the global batch). No RNG
state needs saving.

Items are dicts of tensors. Quartets: ``s1, s2, r1, r2`` (3,S,S) in [0, 1], ``flow_s1s2`` (2,S,S)
pixels, ``match_s1s2`` (1,S,S) in {0, 1}. Stage-1 pairs: ``src, tgt`` (3,S,S), ``flow`` (2,S,S)
(SIFT flow src→tgt) and ``valid`` (1,S,S).
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cyclecorr.geometry import affine_flow, compose_flow, inside_mask, pixel_grid, sample, warp
from cyclecorr.siftflow import compute_sift_flow_batch, load_sift_flow
from cyclecorr.train.config import ZOOM_FILLS, AugmentConfig

__all__ = ["epoch_permutation", "global_batch", "rank_slice", "StepBatchSampler",
           "AugmentedDataset", "self_warp_pair", "bend_pair", "hflip_quartet", "hflip_pair",
           "SyntheticQuartets", "SiftPairs", "sample_stage1_pairs", "QUARTET_KEYS", "collate",
           "random_zoom", "zoom_item"]

QUARTET_KEYS = ("s1", "s2", "r1", "r2", "flow_s1s2", "match_s1s2")


def _seed(*parts: int) -> int:
    h = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the ``n`` items in ``epoch`` (a pure function of seed and epoch)."""
    g = torch.Generator().manual_seed(_seed(seed, epoch, 1))
    return torch.randperm(n, generator=g)


def global_batch(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Dataset indices of the global batch of iteration ``step``.

    The stream of items is epoch 0's permutation, then epoch 1's, …; step t takes items
    ``t·B … t·B + B − 1`` of that stream.
    """
    if n <= 0:
        raise ValueError("the training set is empty")
    out = []
    start = step * batch_size
    perm_cache: dict[int, torch.Tensor] = {}
    for k in range(start, start + batch_size):
        e, i = divmod(k, n)
        if e not in perm_cache:
            perm_cache[e] = epoch_permutation(n, seed, e)
        out.append(int(perm_cache[e][i]))
    return out


def rank_slice(batch_size: int, rank: int, world: int) -> slice:
    """The positions of the global batch that DDP process ``rank`` of ``world`` takes."""
    if batch_size % world:
        raise ValueError(f"global batch {batch_size} is not divisible by the {world} processes")
    per = batch_size // world
    return slice(rank * per, (rank + 1) * per)


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields, for steps ``start … stop − 1``, this rank's list of ``(index, step, position)``.

    ``position`` is the item's place in the global batch; it seeds the augmentation.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int,
                 rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.stop = start, stop
        self.sl = rank_slice(batch_size, rank, world)

    def __len__(self):
        return max(0, self.stop - self.start)

    def __iter__(self):
        for t in range(self.start, self.stop):
            idx = global_batch(self.n, self.batch_size, self.seed, t)
            pos = range(self.batch_size)
            yield [(i, t, p) for i, p in zip(idx[self.sl], pos[self.sl])]


def _flip_field(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def _flip_flow(flow: torch.Tensor) -> torch.Tensor:
    f = flow.flip(-1).clone()
    f[..., 0, :, :] = -f[..., 0, :, :]
    return f


def hflip_quartet(q: dict) -> dict:
    """Mirror a quartet left–right: every image and field flipped, the flow's x negated.

    With ``x' = W − 1 − x`` a match ``q = p + F(p)`` becomes ``q' = p' − F_x(p)``, so
    ``F'(p') = (−F_x(p), F_y(p))``.
    """
    out = dict(q)
    for k, v in q.items():
        if not isinstance(v, torch.Tensor) or v.dim() < 2:
            continue
        out[k] = _flip_flow(v) if k.startswith("flow") else _flip_field(v)
    return out


hflip_pair = hflip_quartet  # same rule: keys starting with "flow" are flows


def _jitter(img: torch.Tensor, g: torch.Generator, amp: float) -> torch.Tensor:
    b = (torch.rand((), generator=g) * 2 - 1) * amp
    c = 1 + (torch.rand((), generator=g) * 2 - 1) * amp
    m = img.mean()
    return ((img - m) * c + m + b).clamp(0, 1)


def render_background_mask(img: torch.Tensor, color=(0.0, 0.0, 0.0), tol: float = 0.5 / 255
                           ) -> torch.Tensor:
    """``(1, H, W)`` True where a render ``(3, H, W)`` shows its constant background colour
    (every channel within ``tol``); a lit surface is never exactly that colour."""
    c = torch.as_tensor(color, dtype=img.dtype).view(3, 1, 1)
    return ((img - c).abs() <= tol).all(dim=0, keepdim=True)


def replace_render_background(img: torch.Tensor, g: torch.Generator,
                              color=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """The render ``img`` with its constant background replaced by a random multi-scale colour
    texture (drawn from ``g``), so that renders cannot be told from photos by their empty
    background. Object pixels are unchanged."""
    bg = render_background_mask(img, color)
    tex = _texture(g, img.shape[-1])[0]
    if tex.shape[-2:] != img.shape[-2:]:
        tex = F.interpolate(tex[None], size=img.shape[-2:], mode="bilinear",
                            align_corners=False)[0]
    return torch.where(bg, tex.to(img.dtype), img)


ZOOM_SIDES = (("s1", "r1", "src"), ("s2", "r2", "tgt"))
ZOOM_FIELDS = (("flow_s1s2", "match_s1s2"), ("flow", "valid"))


def random_zoom(g: torch.Generator, size: int, scale_range=(0.6, 1.3), shift: float = 0.15,
                aspect: float = 0.1) -> torch.Tensor:
    """A random ``(2, 3)`` map from new pixels to old pixels: the image is magnified by a
    log-uniform factor in ``scale_range`` (< 1 shrinks the object and shows more border), its
    x/y magnifications differ by up to ``±aspect``, and it moves by up to ``shift · size``
    pixels per axis, about the image centre."""
    lo, hi = (float(v) for v in scale_range)
    if not 0 < lo <= hi:
        raise ValueError(f"zoom scale range must satisfy 0 < lo ≤ hi, got {scale_range}")
    u = lambda: float(torch.rand((), generator=g))  # noqa: E731
    s = math.exp(math.log(lo) + u() * (math.log(hi) - math.log(lo)))
    a = 1 + (2 * u() - 1) * aspect
    sx, sy = s * a, s / a
    t = torch.tensor([(2 * u() - 1) * shift * size, (2 * u() - 1) * shift * size])
    c = (size - 1) / 2
    m = torch.zeros(2, 3)
    m[0, 0], m[1, 1] = 1 / sx, 1 / sy      # new p -> old c + (p - c - t) / s
    m[:, 2] = torch.tensor([c - (c + t[0]) / sx, c - (c + t[1]) / sy])
    return m


def zoom_item(item: dict, maps: tuple[torch.Tensor, torch.Tensor],
              zero_pad_keys: tuple = ("s1", "s2"), fill: str = "border",
              g: torch.Generator | None = None) -> dict:
    """Re-frame the two sides of a training item, each by its own affine map (new pixel → old
    pixel, as from :func:`random_zoom`): side 1 is ``s1, r1`` (or ``src``), side 2 ``s2, r2``
    (or ``tgt``); a render and the photo it was rendered for move together, so the renders'
    own legs stay as they were while the real pair r1 → r2 gains the relative scale and shift.

    The ground-truth flow side 1 → side 2 follows exactly: with ``A1, A2`` the maps,
    ``F'(p) = A2⁻¹(A1 p + F(A1 p)) − p``; its matchability is 1 where all four pixels around
    ``A1 p`` were matchable and the new match lies inside the image. Images read outside
    their frame repeat their border (``fill="border"``) or show a random multi-scale colour
    texture drawn from ``g`` (``fill="texture"``, one texture per image, like the renders'
    replaced backgrounds); renders in ``zero_pad_keys`` always get their black background."""
    if fill not in ZOOM_FILLS:
        raise ValueError(f"zoom fill must be one of {ZOOM_FILLS}, got {fill!r}")
    if fill == "texture" and g is None:
        raise ValueError("zoom fill 'texture' needs a generator g")
    a1, a2 = maps
    out = dict(item)
    for side, m in ((ZOOM_SIDES[0], a1), (ZOOM_SIDES[1], a2)):
        for k in side:
            if k not in item:
                continue
            img = item[k]
            fl = affine_flow(m.to(img.dtype), *img.shape[-2:])
            if k in zero_pad_keys:
                out[k] = warp(img[None], fl, "zeros")[0]
            elif fill == "border":
                out[k] = warp(img[None], fl, "border")[0]
            else:  # outside the old frame: a texture; the seam is blended over one pixel
                h, w = img.shape[-2:]
                inside = warp(torch.ones_like(img[None, :1]), fl, "zeros")[0]
                tex = _texture(g, max(h, w))[0, :, :h, :w].to(img.dtype)
                out[k] = inside * warp(img[None], fl, "border")[0] + (1 - inside) * tex
    for fk, mk in ZOOM_FIELDS:
        if fk not in item:
            continue
        flow = item[fk][None]
        h, w = flow.shape[-2:]
        grid = pixel_grid(h, w, dtype=flow.dtype)
        p_old = grid + affine_flow(a1.to(flow.dtype), h, w)
        q_old = p_old + sample(flow, p_old, "border")
        inv2 = _inv(a2.to(flow.dtype))
        q_new = (inv2[:, :2] @ q_old.flatten(2) + inv2[:, 2:]).view_as(q_old)
        out[fk] = (q_new - grid)[0]
        if mk in item:
            valid = sample(item[mk][None].to(flow.dtype), p_old, "zeros") > 0.999
            ok = valid & inside_mask(q_new, h, w).bool()
            out[mk] = ok.to(item[mk].dtype)[0]
    return out


def self_warp_pair(img: torch.Tensor, g: torch.Generator, scale_range=(0.6, 1.3),
                   shift: float = 0.15, aspect: float = 0.1, fill: str = "texture") -> dict:
    """A photo and a re-framed copy of itself, with the exact flow between them.

    ``img`` ``(3, S, S)``; each side is re-framed by its own :func:`random_zoom` map (drawn from
    ``g``), so the pair differs by a relative scale, aspect and shift, and by the fill where a
    side shows more than the photo (``fill`` as in :func:`zoom_item`). Returns ``warp_src``,
    ``warp_tgt`` ``(3, S, S)``, ``flow_warp`` ``(2, S, S)`` (src → tgt, pixels) and
    ``match_warp`` ``(1, S, S)`` (1 where a src pixel shows the photo and lands inside tgt).
    """
    if img.dim() != 3 or img.shape[0] != 3:
        raise ValueError(f"self-warp image must be (3, S, S), got {tuple(img.shape)}")
    size = img.shape[-1]
    maps = tuple(random_zoom(g, size, scale_range, shift, aspect) for _ in range(2))
    base = {"src": img, "tgt": img, "flow": torch.zeros_like(img[:2]),
            "valid": torch.ones_like(img[:1])}
    out = zoom_item(base, maps, zero_pad_keys=(), fill=fill, g=g)
    return {"warp_src": out["src"], "warp_tgt": out["tgt"], "flow_warp": out["flow"],
            "match_warp": out["valid"]}


def smooth_deformation(g: torch.Generator, size: int, amplitude: float, grid: int = 4
                       ) -> torch.Tensor:
    """A random smooth displacement field ``(2, size, size)`` in pixels: offsets drawn uniformly in
    ``[-amplitude, amplitude]`` on a ``grid × grid`` lattice of control points spanning the image,
    interpolated bicubically (so it may exceed ``amplitude`` slightly between them)."""
    if amplitude < 0 or grid < 2:
        raise ValueError(f"deformation needs amplitude ≥ 0 and grid ≥ 2, got {amplitude}, {grid}")
    ctrl = (torch.rand(1, 2, grid, grid, generator=g) * 2 - 1) * amplitude
    return F.interpolate(ctrl, size=(size, size), mode="bicubic", align_corners=True)[0]


def deform_self_warp(pair: dict, g: torch.Generator, amplitude: float, grid: int = 4,
                     jitter: float = 0.0) -> dict:
    """Make a :func:`self_warp_pair` look more like two photos of two objects: the source is
    bent by a :func:`smooth_deformation` ``d`` (``src'(p) = src(p + d(p))``, edge pixels repeated)
    and the two sides get independent brightness / contrast changes of amplitude ``jitter``.

    The flow stays exact: ``flow'(p) = d(p) + flow(p + d(p))`` (:func:`compose_flow`; within the
    photo ``flow`` is affine, which bilinear reading reproduces exactly), and a source pixel stays
    matchable only where ``p + d(p)`` lies inside the image with all four neighbours matchable.
    ``amplitude = jitter = 0`` returns ``pair`` unchanged."""
    src, tgt, flow, match = bend_pair(pair["warp_src"], pair["warp_tgt"], pair["flow_warp"],
                                      pair["match_warp"], g, amplitude, grid, jitter)
    return {**pair, "warp_src": src, "warp_tgt": tgt, "flow_warp": flow, "match_warp": match}


def bend_pair(src: torch.Tensor, tgt: torch.Tensor, flow: torch.Tensor, match: torch.Tensor,
              g: torch.Generator, amplitude: float, grid: int = 4, jitter: float = 0.0
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`deform_self_warp` on the four tensors of any pair, ``src``, ``tgt`` ``(3, S, S)``,
    ``flow`` ``(2, S, S)`` and ``match`` ``(1, S, S)``: returns them bent and jittered (the
    inputs themselves where ``amplitude = jitter = 0``)."""
    if amplitude > 0:
        d = smooth_deformation(g, src.shape[-1], amplitude, grid)[None]
        m = warp(match[None].float(), d, padding="zeros")[0]
        src = warp(src[None], d, padding="border")[0]
        flow = compose_flow(d, flow[None])[0]
        match = (m >= 0.999).to(match.dtype)
    if jitter > 0:
        src, tgt = _jitter(src, g, jitter), _jitter(tgt, g, jitter)
    return src, tgt, flow, match


class AugmentedDataset(torch.utils.data.Dataset):
    """Wraps a dataset of dict items; ``__getitem__((index, step, position))`` returns the item
    with deterministic augmentation as ``augment`` (an :class:`~cyclecorr.train.config.
    AugmentConfig`; None: none) says.

    ``keys``: the keys an item must have (only those are kept; empty: all).
    ``real_keys``: keys of the real images (colour jitter applies only to them).
    ``render_keys``: keys of renders whose black background is replaced by a random texture with
    probability ``augment.render_background`` (each render its own texture).
    ``augment.zoom``: probability of :func:`zoom_item` with two :func:`random_zoom` maps; renders
    are padded with their black background, photos as ``augment.zoom_fill`` says.
    ``self_warp``: add a :func:`self_warp_pair` of ``r1``, bent and jittered by
    :func:`deform_self_warp` when ``augment.warp_deform`` / ``warp_jitter`` are set.
    ``bend``: after the zoom, bend the source of a stage-1 pair (``src`` → ``tgt``) and jitter
    both sides by :func:`bend_pair`, as the self-warp pair is (``augment.warp_deform``,
    ``warp_jitter``), the flow following exactly.
    ``pairs``: a dataset of render pairs across instances
    (:class:`cyclecorr.data.render_pairs.RenderPairDataset`): each item gets one, drawn by
    its own stream, flipped with probability ``augment.hflip`` and its backgrounds replaced with
    probability ``augment.render_background`` (its own draws).
    Order: flip, zoom, bend, colour jitter, render background, self-warp pair, render pair.
    """

    def __init__(self, base, seed: int, augment: AugmentConfig | None = None, keys: tuple = (),
                 real_keys: tuple = ("r1", "r2", "src", "tgt"),
                 render_keys: tuple = ("s1", "s2"), self_warp: bool = False, pairs=None,
                 bend: bool = False):
        augment = augment if augment is not None else AugmentConfig(hflip=0.0)
        if augment.zoom_fill not in ZOOM_FILLS:
            raise ValueError(f"zoom fill must be one of {ZOOM_FILLS}, got {augment.zoom_fill!r}")
        self.base, self.seed, self.augment = base, seed, augment
        self.keys, self.real_keys, self.render_keys = keys, real_keys, render_keys
        self.self_warp = bool(self_warp)
        self.bend = bool(bend)
        self.pairs = pairs
        if pairs is not None and len(pairs) == 0:
            raise ValueError("the render-pair dataset is empty")

    def __len__(self):
        return len(self.base)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            index, step, pos = key
        else:
            index, step, pos = key, 0, 0
            return self._check(self.base[index], index)
        item = self._check(self.base[index], index)
        a = self.augment
        zoom_range = (a.zoom_min, a.zoom_max)
        g = torch.Generator().manual_seed(_seed(self.seed, step, pos, 2))
        if a.hflip > 0 and float(torch.rand((), generator=g)) < a.hflip:
            item = hflip_quartet(item)
        if a.zoom > 0:
            g_z = torch.Generator().manual_seed(_seed(self.seed, step, pos, 4))
            if float(torch.rand((), generator=g_z)) < a.zoom:
                size = next(v.shape[-1] for k, v in item.items()
                            if k in ZOOM_SIDES[0] and isinstance(v, torch.Tensor))
                maps = tuple(random_zoom(g_z, size, zoom_range, a.zoom_shift, a.zoom_aspect)
                             for _ in range(2))
                item = zoom_item(item, maps, zero_pad_keys=self.render_keys, fill=a.zoom_fill,
                                 g=g_z)
        if self.bend and (a.warp_deform > 0 or a.warp_jitter > 0):
            g_d = torch.Generator().manual_seed(_seed(self.seed, step, pos, 6))
            bent = bend_pair(item["src"], item["tgt"], item["flow"], item["valid"], g_d,
                             float(a.warp_deform), int(a.warp_deform_grid), float(a.warp_jitter))
            item = {**item, **dict(zip(("src", "tgt", "flow", "valid"), bent))}
        if a.color_jitter > 0:
            item = dict(item)
            for k in self.real_keys:
                if k in item:
                    item[k] = _jitter(item[k], g, a.color_jitter)
        if a.render_background > 0:
            g_bg = torch.Generator().manual_seed(_seed(self.seed, step, pos, 3))
            if float(torch.rand((), generator=g_bg)) < a.render_background:
                item = dict(item)
                for k in self.render_keys:
                    if k in item:
                        item[k] = replace_render_background(item[k], g_bg)
        if self.self_warp:
            if "r1" not in item:
                raise ValueError(f"training item {index}: the self-warp pair needs a photo 'r1' "
                                 f"(has {sorted(item)})")
            g_w = torch.Generator().manual_seed(_seed(self.seed, step, pos, 5))
            pair = self_warp_pair(item["r1"], g_w, zoom_range, a.zoom_shift, a.zoom_aspect,
                                  a.zoom_fill)
            if a.warp_deform > 0 or a.warp_jitter > 0:  # own stream: other draws unchanged
                g_d = torch.Generator().manual_seed(_seed(self.seed, step, pos, 6))
                pair = deform_self_warp(pair, g_d, float(a.warp_deform), int(a.warp_deform_grid),
                                        float(a.warp_jitter))
            item = {**item, **pair}
        if self.pairs is not None:  # own streams: the item's other draws are unchanged
            g_p = torch.Generator().manual_seed(_seed(self.seed, step, pos, 7))
            rp = self.pairs[int(torch.randint(len(self.pairs), (), generator=g_p))]
            if a.hflip > 0 and float(torch.rand((), generator=g_p)) < a.hflip:
                rp = hflip_pair(rp)
            if a.render_background > 0 and float(torch.rand((), generator=g_p)) < \
                    a.render_background:
                rp = {**rp, **{k: replace_render_background(rp[k], g_p)
                               for k in ("pair_src", "pair_tgt")}}
            item = {**item, **rp}
        return item

    def _check(self, item, index):
        if not isinstance(item, dict):
            raise ValueError(f"training item {index}: expected a dict of tensors, got "
                             f"{type(item).__name__}")
        missing = [k for k in self.keys if k not in item]
        if missing:
            raise ValueError(f"training item {index}: missing keys {missing} "
                             f"(has {sorted(item)})")
        return {k: (torch.as_tensor(v).float() if k in self.keys else v) for k, v in item.items()
                if k in self.keys or not self.keys}


def collate(items: list[dict]) -> dict:
    """Stack a list of dict items into a batch (tensor values only)."""
    keys = [k for k, v in items[0].items() if isinstance(v, torch.Tensor)]
    return {k: torch.stack([it[k] for it in items]) for k in keys}


# --------------------------------------------------------------------------- synthetic quartets

_BICUBIC: dict[tuple[int, int], torch.Tensor] = {}


def _bicubic_matrix(n: int, size: int) -> torch.Tensor:
    """(size, n) matrix W with ``F.interpolate(x, (size, size), mode="bicubic") = W x Wᵀ`` for an
    n×n x (torch's bicubic is separable and its weights, border clamping included, sum to 1, so
    the image whose row i is all ones interpolates to column i of W in every column)."""
    w = _BICUBIC.get((n, size))
    if w is None:
        rows = torch.zeros(n, 1, n, n)
        rows[torch.arange(n), 0, torch.arange(n), :] = 1.0
        w = F.interpolate(rows, size=(size, size), mode="bicubic",
                          align_corners=False)[:, 0, :, 0].T.contiguous()
        _BICUBIC[(n, size)] = w
    return w


def _texture(g: torch.Generator, size: int, scales=(4, 8, 16, 32)) -> torch.Tensor:
    """A random smooth colour texture (1, 3, size, size) in [0, 1]: bicubically upsampled noise at
    the given scales, weighted 1.5^-i; each upsampling is two small matmuls (W x Wᵀ), ~10× faster
    than ``F.interpolate`` at 128 px, the same values up to float rounding."""
    img = torch.zeros(1, 3, size, size)
    for i, s in enumerate(scales):
        noise = torch.rand(1, 3, s, s, generator=g)
        w = _bicubic_matrix(s, size)
        img = img + (w @ noise @ w.T) / (1.5 ** i)
    img = img - img.amin(dim=(2, 3), keepdim=True)
    img = img / img.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    return img


def _affine(g: torch.Generator, size: int, rot: float, scale: float, shift: float,
            base: torch.Tensor | None = None) -> torch.Tensor:
    """A random (2, 3) pixel affine map near the identity, centred on the image centre."""
    u = lambda: float(torch.rand((), generator=g) * 2 - 1)  # noqa: E731
    a = u() * rot
    s = 1 + u() * scale
    asym = 1 + u() * scale * 0.5
    c = (size - 1) / 2
    rotm = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    A = rotm @ torch.diag(torch.tensor([s * asym, s / asym]))
    t = torch.tensor([u() * shift, u() * shift])
    ctr = torch.tensor([c, c])
    m = torch.zeros(2, 3)
    m[:, :2] = A
    m[:, 2] = ctr + t - A @ ctr
    if base is not None:  # compose: first base, then m
        full = torch.eye(3)
        full[:2] = m
        b3 = torch.eye(3)
        b3[:2] = base
        m = (full @ b3)[:2]
    return m


def _inv(m: torch.Tensor) -> torch.Tensor:
    full = torch.eye(3, dtype=m.dtype)
    full[:2] = m
    return torch.linalg.inv(full)[:2]


def _compose(m_outer: torch.Tensor, m_inner: torch.Tensor) -> torch.Tensor:
    a = torch.eye(3, dtype=m_outer.dtype)
    a[:2] = m_outer
    b = torch.eye(3, dtype=m_inner.dtype)
    b[:2] = m_inner
    return (a @ b)[:2]


class SyntheticQuartets(torch.utils.data.Dataset):
    """Procedural quartets with exactly known flows (for tests, smoke runs and validation).

    Each image shows an "object" (an ellipse of texture) in front of its own background texture.
    View ``v`` of an instance maps its pixel p to the instance's canonical frame by an affine
    ``G_v``; ``s1, s2`` share one texture (the "CAD model"), ``r1, r2`` another (the "real"
    instance); ``s1``'s map is close to ``r1``'s and ``s2``'s to ``r2``'s (same viewpoint). So
    ``F_ab(p) = G_b⁻¹ G_a p − p`` for any two images, and ``match_s1s2(p) = 1`` where p is on the
    object and its match lies inside s2. Item ``i`` is a pure function of (seed, i).

    Extra keys ``affine_<ab>`` ((2, 3) maps q = A p + t) for the pairs s1r1, r1r2, r2s2, s1s2.
    """

    def __init__(self, n: int = 256, size: int = 128, seed: int = 0, rot: float = 0.35,
                 scale: float = 0.15, shift: float = 0.08, view_gap: float = 0.05):
        if n < 1:
            raise ValueError(f"n must be ≥ 1, got {n}")
        self.n, self.size, self.seed = n, size, seed
        self.rot, self.scale, self.shift, self.view_gap = rot, scale, shift * size, view_gap

    def __len__(self):
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(f"quartet index {i} out of range (0 … {self.n - 1})")
        S = self.size
        g = torch.Generator().manual_seed(_seed(self.seed, i, 3))
        tex_s, tex_r = _texture(g, S), _texture(g, S)
        # canonical object: an ellipse, fixed per quartet
        rx, ry = [float(S * (0.28 + 0.12 * torch.rand((), generator=g))) for _ in range(2)]
        grid = pixel_grid(S, S)
        c = (S - 1) / 2
        obj = (((grid[:, :1] - c) / rx) ** 2 + ((grid[:, 1:] - c) / ry) ** 2 <= 1).float()
        # views: G maps image pixel -> canonical pixel
        g1 = _affine(g, S, self.rot, self.scale, self.shift)
        g2 = _affine(g, S, self.rot, self.scale, self.shift)
        gap = self.view_gap
        maps = {"s1": g1, "s2": g2,
                "r1": _affine(g, S, gap, gap, gap * S, base=g1),
                "r2": _affine(g, S, gap, gap, gap * S, base=g2)}
        out = {}
        for name, gm in maps.items():
            tex = tex_s if name[0] == "s" else tex_r
            flow_to_canon = affine_flow(gm, S, S)
            fg = warp(tex, flow_to_canon, "border")
            m = warp(obj, flow_to_canon, "zeros")
            bg = _texture(g, S, scales=(2, 4, 8)) * 0.8
            out[name] = (m * fg + (1 - m) * bg)[0].clamp(0, 1)

        def rel(a, b):  # map a-pixel -> b-pixel
            return _compose(_inv(maps[b]), maps[a])

        a_s1s2 = rel("s1", "s2")
        flow = affine_flow(a_s1s2, S, S)
        q = grid + flow
        on_obj = warp(obj, affine_flow(maps["s1"], S, S), "zeros") > 0.5
        match = (inside_mask(q, S, S).bool() & on_obj).float()
        out["flow_s1s2"] = flow[0]
        out["match_s1s2"] = match[0]
        for a, b in (("s1", "r1"), ("r1", "r2"), ("r2", "s2"), ("s1", "s2")):
            out[f"affine_{a}{b}"] = rel(a, b)
        return out


# --------------------------------------------------------------------------- stage-1 pairs

def sample_stage1_pairs(n_items: int, n_pairs: int, seed: int, source: str = "quartet"
                        ) -> list[tuple[int, str, int, str]]:
    """A fixed list of ``(quartet_i, key_a, quartet_j, key_b)`` image pairs for stage 1.

    ``source="quartet"``: r1 and r2 of one quartet, quartets in a seeded random order without
    repetition (cycling when ``n_pairs > n_items``); ``"random"``: r1 of one quartet with r2 of
    another random quartet. Pure function of the arguments.
    """
    if source not in ("quartet", "random"):
        raise ValueError(f"source must be 'quartet' or 'random', got {source!r}")
    if n_items < 1:
        raise ValueError("no quartets to draw stage-1 pairs from")
    g = torch.Generator().manual_seed(_seed(seed, n_items, n_pairs, 4))
    out = []
    if source == "quartet" or n_items == 1:
        perm = torch.randperm(n_items, generator=g).tolist()
        return [(perm[k % n_items], "r1", perm[k % n_items], "r2") for k in range(n_pairs)]
    for _ in range(n_pairs):
        i = int(torch.randint(n_items, (), generator=g))
        j = int(torch.randint(n_items - 1, (), generator=g))
        j = j + 1 if j >= i else j
        out.append((i, "r1", j, "r2"))
    return out


class SiftPairs(torch.utils.data.Dataset):
    """Stage-1 pairs ``(src, tgt, flow, valid)`` with SIFT-flow targets cached on disk.

    Args:
        quartets: a dataset of quartet dicts (the images are read from it).
        pairs: from :func:`sample_stage1_pairs`.
        cache_dir: SIFT flow cache (computed with ``cyclecorr.siftflow.compute_sift_flow_batch``
            on first use, resumable: finished pairs are skipped).
        workers: SIFT flow processes. ``progress``: tqdm bar.
    """

    def __init__(self, quartets, pairs, cache_dir, workers: int = 2, progress: bool = True,
                 chunk: int = 200):
        self.quartets, self.pairs = quartets, list(pairs)
        self.cache_dir = Path(cache_dir)
        self.paths: list[Path] = []
        size = None
        for start in range(0, len(self.pairs), chunk):
            arrs = []
            for (i, ka, j, kb) in self.pairs[start:start + chunk]:
                a, b = self._image(i, ka), self._image(j, kb)
                size = a.shape[0]
                arrs.append((a, b))
            self.paths += compute_sift_flow_batch(arrs, self.cache_dir, workers=workers,
                                                  size=size, progress=progress)

    def _image(self, i, key) -> np.ndarray:
        img = self.quartets[i][key]
        img = torch.as_tensor(img).float().clamp(0, 1)
        return (img.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, k: int) -> dict:
        i, ka, j, kb = self.pairs[k]
        src = torch.as_tensor(self.quartets[i][ka]).float()
        tgt = torch.as_tensor(self.quartets[j][kb]).float()
        res = load_sift_flow(self.paths[k])
        flow = torch.from_numpy(np.ascontiguousarray(res.flow)).float()
        if flow.shape[-2:] != src.shape[-2:]:
            raise ValueError(f"{self.paths[k]}: SIFT flow has size {tuple(flow.shape[-2:])}, "
                             f"images {tuple(src.shape[-2:])}")
        valid = torch.isfinite(flow).all(0, keepdim=True).float()
        return {"src": src, "tgt": tgt, "flow": torch.nan_to_num(flow), "valid": valid}
