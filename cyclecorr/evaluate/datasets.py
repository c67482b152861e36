"""Evaluation sets: thin wrappers over :mod:`cyclecorr.data` loaders, plus synthetic pairs rendered
from the PASCAL3D+ CAD models (named 3D keypoints) with :mod:`cyclecorr.render`.

``root`` arguments accept the shared data folder (``…/data``, holding ``real/`` and ``cad/``) or
the dataset's own folder; ``None`` means :func:`cyclecorr._paths.shared_data_dir`. A missing folder
raises ``FileNotFoundError`` naming it.

Synthetic pairs (:func:`make_synthetic_pairs`), seeded and deterministic, in two modes:

- models: ``cad/pascal3d/<category>NN.json`` (z up, named keypoints);
- ``mode="mixed"`` (sets ``synthetic-<category>``): pair k's source model drawn at random; the
  target is the *same* model for even k (dense ground truth: flow and matchability from the
  renderer) and a *different* model for odd k (keypoint ground truth only);
- ``mode="cross"`` (sets ``synth-kp-<category>``, the cross-instance keypoint benchmark): every
  pair is two *different* models, the ordered model pair drawn uniformly; its matchability
  ground truth is the renderer's visibility: source pixel p is matchable iff the surface point
  of the source model seen at p is visible from the target's viewpoint (the source model
  rendered again from there; exact depth test, :func:`cyclecorr.render.correspondence_between`)
  — the part is in view, which is what matchability asks of two instances — and background
  pixels are unmatchable. Pair names ``"i-j#k"`` (model indices, pair index) let the paired
  bootstrap of :mod:`cyclecorr.evaluate.stats` resample *models* (pairs sharing a model are not
  independent);
- viewpoints (both modes): source azimuth uniform in [0, 360), target azimuth = source ±
  U(0, ``max_azimuth_gap``) (default 45°, the training quartets' largest gap), elevations
  uniform in ``elevation`` (default [0, 30]°, the render bank's range), distance ``distance``
  (2.5, as in training), θ = 0; both renders cropped to the object's box at ``size × size``
  (margin 0: how training renders are cropped), black background, default light;
- keypoints: the model's named 3D keypoints projected into each render with the renderer's
  depth test (:func:`cyclecorr.render.project_keypoints`: not self-occluded, inside the crop); a
  keypoint counts when it is visible in both renders.

Which categories' PASCAL3D+ models are evaluation-only (never in training) is the rule of
:mod:`cyclecorr.data.holdout`: chairs and aeroplanes; the car models are in the shipped car
model's training data, so ``synth-kp-car`` is not held out for that model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cyclecorr._paths import shared_data_dir
from cyclecorr.data import FlowWebCars, Pascal3D, PFWillow, TSSPairs
from cyclecorr.data.samples import crop_sample
from cyclecorr.render import (
    Viewpoint,
    correspondence_between,
    default_renderer,
    load_mesh,
    project_keypoints,
)

__all__ = ["resolve_dataset_dir", "load_pf_willow", "load_flowweb_car", "load_tss",
           "load_pascal3d_photos", "pascal3d_pairs", "load_pascal3d_set",
           "PASCAL3D_MAX_AZIMUTH_GAP", "PASCAL3D_MIN_COMMON", "SyntheticPair",
           "make_synthetic_pairs", "SYNTHETIC_CATEGORIES", "SYNTH_KP_VIEWPOINTS"]

SYNTHETIC_CATEGORIES = ("car", "chair", "aeroplane")


def resolve_dataset_dir(root, *rel: str, marker: str | None = None) -> Path:
    """``root/rel…`` when it exists, else ``root`` itself when it looks like the dataset (holds
    ``marker`` when given); raises ``FileNotFoundError`` naming the folder otherwise."""
    if root is None:
        root = shared_data_dir()
        if root is None:
            raise FileNotFoundError("shared data folder not found: pass --data ROOT or set "
                                    "CYCLECORR_DATA")
    root = Path(root)
    cand = root.joinpath(*rel)
    if cand.is_dir():
        return cand
    if root.is_dir() and (marker is None or any(root.glob(marker))):
        return root
    raise FileNotFoundError(f"dataset folder not found: {cand} (nor is {root} the dataset itself)")


def load_pf_willow(root=None, classes=None, limit: int | None = None) -> dict[str, list]:
    """PF-WILLOW as ``{class: [Sample]}`` (0-based keypoints), first ``limit`` images per class."""
    ds = PFWillow(resolve_dataset_dir(root, "real", "pf-willow", marker="*/*.mat"), classes=classes)
    out: dict[str, list] = {}
    for i, (cls, _, _) in enumerate(ds.items):
        if limit is None or len(out.get(cls, [])) < limit:
            out.setdefault(cls, []).append(ds[i])
    return out


def load_flowweb_car(root=None, limit: int | None = None) -> list:
    """FlowWeb/PASCAL car crops as a list of ``Sample`` (0-based keypoints, masks, parts)."""
    ds = FlowWebCars(resolve_dataset_dir(root, "real", "flowweb-car", marker="*.mat"))
    n = len(ds) if limit is None else min(limit, len(ds))
    return [ds[i] for i in range(n)]


def load_tss(root=None, limit: int | None = None) -> list:
    """TSS pairs as a list of ``PairSample`` (``meta`` has ``group`` and ``name``)."""
    ds = TSSPairs(resolve_dataset_dir(root, "real", "tss", marker="**/image1.png"))
    n = len(ds) if limit is None else min(limit, len(ds))
    return [ds[i] for i in range(n)]


def load_pascal3d_photos(root, category: str = "car", limit: int | None = None,
                         size: int = 128) -> list:
    """PASCAL3D+'s ImageNet photos of ``category`` with their 2D keypoints, as a real-photo
    keypoint set outside the evaluation sets (PF-WILLOW, FlowWeb and TSS come from PASCAL VOC
    and other sources, never ImageNet): objects neither truncated, occluded nor difficult, each
    cropped to its box and resized to ``size × size`` (aspect not kept, as the FlowWeb crops),
    keypoints carried by the crop. ``root``: the release folder (``Annotations/``, ``Images/``);
    the ``pascal`` sub-set is never read. First ``limit`` objects."""
    ds = Pascal3D(root, category, sources=("imagenet",), skip_truncated=True,
                  skip_occluded=True, skip_difficult=True)
    n = len(ds) if limit is None else min(limit, len(ds))
    return [crop_sample(ds[i], size=size) for i in range(n)]


#: the pascal3d-* pair rule: largest azimuth gap (degrees) and fewest keypoints visible in both
PASCAL3D_MAX_AZIMUTH_GAP = 45.0
PASCAL3D_MIN_COMMON = 3


def pascal3d_pairs(samples, n_pairs: int = 500, seed: int = 0,
                   max_azimuth_gap: float = PASCAL3D_MAX_AZIMUTH_GAP,
                   min_common: int = PASCAL3D_MIN_COMMON) -> list[tuple[int, int]]:
    """Ordered pairs ``(i, j)``, i ≠ j, of ``samples`` for keypoint transfer: azimuths (from the
    annotation) within ``max_azimuth_gap`` degrees (as the training quartets' photo pairs) and at
    least ``min_common`` keypoints visible in both; ``n_pairs`` of them drawn without
    replacement by ``seed`` (all when fewer), in index order. Samples without a viewpoint pair
    with any azimuth."""
    vis = np.array([np.asarray(s.visible, bool) for s in samples]).astype(np.float32)
    az = np.array([np.nan if s.viewpoint is None else s.viewpoint.azimuth for s in samples])
    n = len(samples)
    cand = []  # flat indices i·n + j, a block of rows at a time (memory ∝ block·n)
    for i0 in range(0, n, 1024):
        rows = np.arange(i0, min(i0 + 1024, n))
        common = vis[rows] @ vis.T
        gap = np.abs((az[rows, None] - az[None, :] + 180.0) % 360.0 - 180.0)
        ok = (common >= min_common) & ~(gap > max_azimuth_gap)  # NaN gap: no viewpoint, kept
        ok[np.arange(len(rows)), rows] = False
        r, c = np.nonzero(ok)
        cand.append(rows[r].astype(np.int64) * n + c)
    flat = np.concatenate(cand) if cand else np.zeros(0, np.int64)
    if len(flat) > n_pairs:
        flat = np.sort(np.random.default_rng(seed).choice(flat, size=n_pairs, replace=False))
    return [(int(k // n), int(k % n)) for k in flat]


def load_pascal3d_set(root, category: str = "car", n_pairs: int = 500, seed: int = 0,
                      limit: int | None = None) -> tuple[list, list[tuple[int, int]]]:
    """The ``pascal3d-<category>`` set: :func:`load_pascal3d_photos` and their
    :func:`pascal3d_pairs` (default rule). Raises ``ValueError`` naming ``root`` when no pair
    qualifies."""
    samples = load_pascal3d_photos(root, category, limit=limit)
    pairs = pascal3d_pairs(samples, n_pairs, seed=seed)
    if not pairs:
        raise ValueError(f"PASCAL3D+ {category} photos under {root}: no two of the {len(samples)} "
                         f"share {PASCAL3D_MIN_COMMON} visible keypoints within "
                         f"{PASCAL3D_MAX_AZIMUTH_GAP:g}° of azimuth")
    return samples, pairs


@dataclass
class SyntheticPair:
    """Two renders with ground truth, all in the ``size × size`` cropped frames.

    ``kps_a``/``kps_b``: ``(N, 2)`` (x, y) 0-based, NaN where not visible, same names
    ``keypoint_names``; ``flow_ab`` ``(2, S, S)`` only for same-model pairs (else None);
    ``match_ab`` ``(S, S)`` for same-model pairs and for ``mode="cross"`` pairs (the source's
    visibility from the target's viewpoint), else None; ``mask_a``/``mask_b`` object masks;
    ``meta``: model files, viewpoints and, in ``mode="cross"``, ``pair_name`` ``"i-j#k"``.
    """

    image_a: np.ndarray
    image_b: np.ndarray
    kps_a: np.ndarray
    kps_b: np.ndarray
    keypoint_names: list
    mask_a: np.ndarray
    mask_b: np.ndarray
    flow_ab: np.ndarray | None = None
    match_ab: np.ndarray | None = None
    meta: dict = field(default_factory=dict)


def make_synthetic_pairs(root=None, category: str = "car", n_pairs: int = 20, seed: int = 0,
                         size: int = 128, max_azimuth_gap: float = 45.0,
                         progress: bool = False, mode: str = "mixed",
                         elevation: tuple[float, float] = (0.0, 30.0),
                         distance: float = 2.5) -> list[SyntheticPair]:
    """Render ``n_pairs`` seeded pairs of PASCAL3D+ CAD models of ``category`` (see the module
    docstring for both modes, the viewpoint ranges and the ground truth)."""
    if category not in SYNTHETIC_CATEGORIES:
        raise ValueError(f"unknown synthetic category {category!r}; choose from "
                         f"{SYNTHETIC_CATEGORIES}")
    if mode not in ("mixed", "cross"):
        raise ValueError(f"mode must be 'mixed' or 'cross', got {mode!r}")
    folder = resolve_dataset_dir(root, "cad", "pascal3d", marker="*.json")
    files = sorted(folder.glob(f"{category}[0-9]*.json"))
    if not files:
        raise FileNotFoundError(f"no PASCAL3D+ CAD models {category}NN.json in {folder}")
    if mode == "cross" and len(files) < 2:
        raise ValueError(f"cross-instance pairs need ≥ 2 {category} models, found {len(files)} "
                         f"in {folder}")
    meshes = [load_mesh(f) for f in files]
    rng = np.random.default_rng(seed)
    renderer = default_renderer()
    pairs = []
    it = range(n_pairs)
    if progress:
        it = tqdm(it, desc=f"render {'synth-kp' if mode == 'cross' else 'synthetic'}-{category}",
                  leave=False)
    lo, hi = (float(e) for e in elevation)
    for k in it:
        if mode == "mixed":
            ia = int(rng.integers(len(meshes)))
            if k % 2 == 0 or len(meshes) == 1:
                ib = ia
            else:
                ib = int((ia + 1 + rng.integers(len(meshes) - 1)) % len(meshes))
        else:
            ia = int(rng.integers(len(meshes)))
            ib = int((ia + 1 + rng.integers(len(meshes) - 1)) % len(meshes))
        az_a = float(rng.uniform(0, 360))
        gap = float(rng.uniform(0, max_azimuth_gap)) * (1 if rng.random() < 0.5 else -1)
        vp_a = Viewpoint(azimuth=az_a, elevation=float(rng.uniform(lo, hi)), distance=distance)
        vp_b = Viewpoint(azimuth=(az_a + gap) % 360, elevation=float(rng.uniform(lo, hi)),
                         distance=distance)
        va = renderer.render(meshes[ia], vp_a, size)
        vb = renderer.render(meshes[ib], vp_b, size)
        ka = project_keypoints(meshes[ia], view=va)
        kb = project_keypoints(meshes[ib], view=vb)
        names = [n for n in ka.names if n in set(kb.names)]
        ia_idx = {n: i for i, n in enumerate(ka.names)}
        ib_idx = {n: i for i, n in enumerate(kb.names)}
        kps_a = np.array([ka.xy[ia_idx[n]] if ka.visible[ia_idx[n]] else (np.nan, np.nan)
                          for n in names], np.float64).reshape(-1, 2)
        kps_b = np.array([kb.xy[ib_idx[n]] if kb.visible[ib_idx[n]] else (np.nan, np.nan)
                          for n in names], np.float64).reshape(-1, 2)
        flow = match = None
        meta = {"model_a": files[ia].name, "model_b": files[ib].name,
                "viewpoint_a": [vp_a.azimuth, vp_a.elevation],
                "viewpoint_b": [vp_b.azimuth, vp_b.elevation]}
        if ia == ib:
            gt = correspondence_between(va, vb)
            flow, match = np.asarray(gt.flow, np.float32), np.asarray(gt.matchability, np.float32)
        elif mode == "cross":
            # the source model seen from the target's viewpoint: which of its points are in view
            va_at_b = renderer.render(meshes[ia], vp_b, size, rgb=False)
            match = np.asarray(correspondence_between(va, va_at_b).matchability, np.float32)
            meta["pair_name"] = f"{ia}-{ib}#{k}"
            meta["match_truth"] = "source model's surface point visible from the target viewpoint"
        pairs.append(SyntheticPair(
            image_a=va.rgb, image_b=vb.rgb, kps_a=kps_a, kps_b=kps_b, keypoint_names=names,
            mask_a=va.mask, mask_b=vb.mask, flow_ab=flow, match_ab=match, meta=meta))
    return pairs


#: the sets' generation parameters recorded with every result (module docstring)
SYNTH_KP_VIEWPOINTS = ("source azimuth U[0,360), target azimuth source +-U(0,45], elevations "
                       "U[0,30], distance 2.5, theta 0; 128x128 crops of the object box "
                       "(margin 0), black background, default light")
