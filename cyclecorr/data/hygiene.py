"""Near-duplicates between training photos and evaluation images.

A photo that is (a crop of, a resized or re-encoded copy of, or a photo that contains) an image of
an evaluation set must never enter training. :func:`find_duplicate` decides this for one photo
against an :class:`EvaluationIndex` of the evaluation images, in three steps:

1. **Local features**: SIFT keypoints and descriptors (scikit-image) of the grey image, resized
   so that its shorter side is at least ``MIN_SIDE`` and its longer side at most ``MAX_SIDE``
   pixels (small crops get enough keypoints, large photos stay cheap); keypoints are stored in the
   image's own pixels.
2. **Geometric verification**: per evaluation image, descriptor matches that pass Lowe's ratio
   test (nearest vs second-nearest descriptor *of that image*, ratio ``RATIO``), then the best
   map ``q = s ⊙ p + t`` (per-axis scale up to ``MAX_ANISOTROPY`` apart, and a translation:
   crops and resizes, the aspect ratio kept or not; no rotation) over all hypotheses formed by
   two matches, counted by its inliers (within ``INLIER_PX·max(1, s)`` px per axis), refined
   by least squares on the inliers.
3. **Photometric confirmation**: for a candidate with at least ``MIN_INLIERS`` inliers, the
   evaluation image is sampled at ``s ⊙ p + t`` over the photo's grid; the two grey images (blurred
   by a pixel of the coarser one) must have a normalised cross-correlation of at least ``MIN_NCC``
   over an overlap covering at least ``MIN_OVERLAP`` of the smaller of the two images. Two
   photos of different cars can share a few matched corners; only the same pixels correlate.

Both directions are covered by the same test: the photo may lie inside the evaluation image
(a training crop of an evaluation photo) or contain it (an evaluation crop inside a training
photo); the overlap is measured against the smaller image.

:func:`evaluation_images` lists the images of the evaluation sets the project knows under a data
root (``real/pf-willow``, ``real/flowweb-car``, ``real/tss``, recursively);
:meth:`EvaluationIndex.build` computes their features once and caches them
(``cyclecorr._paths.cache_dir()/hygiene``, keyed by every file's SHA-256 and the parameters).
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from skimage.feature import SIFT
from tqdm import tqdm

from cyclecorr._io import atomic_write_bytes
from cyclecorr._paths import cache_dir
from cyclecorr.data.io import IMAGE_SUFFIXES, DataError, read_image
from cyclecorr.data.retrieval import spawn_pool

__all__ = ["EVALUATION_SETS", "Duplicate", "EvaluationIndex", "evaluation_images",
           "image_features", "find_duplicate", "load_index", "PARAMS"]

#: Evaluation sets the project evaluates on: name → folder under the data root.
EVALUATION_SETS = {"pf-willow": "real/pf-willow", "flowweb-car": "real/flowweb-car",
                   "tss": "real/tss"}

MIN_SIDE = 160
MAX_SIDE = 320
RATIO = 0.85
INLIER_PX = 3.0
MIN_INLIERS = 6
MIN_NCC = 0.8
MIN_OVERLAP = 0.25
SCALE_RANGE = (1 / 8, 8.0)
MAX_ANISOTROPY = 2.0
#: Everything that changes a verdict (recorded with every screening result).
PARAMS = {"version": 1, "min_side": MIN_SIDE, "max_side": MAX_SIDE, "ratio": RATIO,
          "inlier_px": INLIER_PX, "min_inliers": MIN_INLIERS, "min_ncc": MIN_NCC,
          "min_overlap": MIN_OVERLAP, "scale_range": list(SCALE_RANGE),
          "max_anisotropy": MAX_ANISOTROPY}


@dataclass
class Duplicate:
    """A photo found to be a near-duplicate of ``eval_image``: ``eval(q) ≈ photo(p)`` for
    ``q = scale ⊙ p + offset`` (pixels, per axis), with the evidence that decided it."""

    eval_image: str
    scale: tuple[float, float]
    offset: tuple[float, float]
    inliers: int
    matches: int
    ncc: float
    overlap: float

    def to_dict(self) -> dict:
        return asdict(self)


def _grey(image: np.ndarray) -> np.ndarray:
    """``H×W×3`` uint8 → ``H×W`` float64 in [0, 1] (ITU-R 601 luma, as scikit-image's rgb2gray)."""
    img = np.asarray(image)
    if img.ndim == 2:
        return img.astype(np.float64) / 255.0
    return (img[..., :3].astype(np.float64) @ np.array([0.2125, 0.7154, 0.0721])) / 255.0


def _feature_scale(h: int, w: int) -> float:
    s = 1.0
    if min(h, w) < MIN_SIDE:
        s = MIN_SIDE / min(h, w)
    if max(h, w) * s > MAX_SIDE:
        s = MAX_SIDE / max(h, w)
    return s


def _resize_grey(g: np.ndarray, s: float) -> np.ndarray:
    if s == 1.0:
        return g
    h, w = g.shape
    im = Image.fromarray(g.astype(np.float32), mode="F")
    im = im.resize((max(8, round(w * s)), max(8, round(h * s))), Image.BICUBIC)
    return np.clip(np.asarray(im, dtype=np.float64), 0.0, 1.0)


def image_features(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SIFT keypoints ``(N, 2)`` float32 (x, y) in the image's pixels and L2-normalised
    descriptors ``(N, 128)`` float32 of an ``H×W×3`` uint8 image (``N = 0`` for a flat image)."""
    g = _grey(image)
    s = _feature_scale(*g.shape)
    det = SIFT(upsampling=1)
    try:
        det.detect_and_extract(_resize_grey(g, s))
    except RuntimeError:  # no keypoint at all (flat or tiny image)
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32)
    kp = (det.keypoints[:, ::-1].astype(np.float64) + 0.5) / s - 0.5  # (row, col) → (x, y)
    desc = det.descriptors.astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True) + 1e-6
    return kp.astype(np.float32), desc


def evaluation_images(root) -> dict[str, list[Path]]:
    """``{set name: [image files]}`` of the :data:`EVALUATION_SETS` found under the data root
    ``root`` (sets whose folder is absent are left out)."""
    root = Path(root)
    out = {}
    for name, rel in EVALUATION_SETS.items():
        folder = root / rel
        if folder.is_dir():
            files = sorted(p for p in folder.rglob("*")
                           if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if files:
                out[name] = files
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class EvaluationIndex:
    """Features of a set of evaluation images, ready for :func:`find_duplicate`.

    Attributes:
        paths: the images (``str``), in index order.
        keypoints, descriptors: per image, as :func:`image_features` returns them.
        greys: per image, the ``H×W`` grey image in [0, 1] (for the photometric check).
        key: SHA-256 over the parameters and every image's content (what a cached index is
            keyed by, and what a screening records).
    """

    def __init__(self, paths, keypoints, descriptors, greys, key: str):
        self.paths = [str(p) for p in paths]
        self.keypoints = keypoints
        self.descriptors = descriptors
        self.greys = greys
        self.key = key
        k = max((len(d) for d in descriptors), default=0)
        # padded (images, k, 128) descriptors; the padding never wins (similarity −2)
        self._desc = np.zeros((len(paths), max(k, 2), 128), np.float32)
        self._valid = np.zeros((len(paths), max(k, 2)), bool)
        for i, d in enumerate(descriptors):
            self._desc[i, :len(d)] = d
            self._valid[i, :len(d)] = True

        self._desc_t = torch.from_numpy(self._desc.reshape(-1, 128).T.copy())
        self._pad = torch.from_numpy(~self._valid)[None]

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def build(cls, paths, cache: str | Path | None = None, progress: bool = False
              ) -> EvaluationIndex:
        """Index the images ``paths`` (cached under ``cache``, default
        ``cache_dir()/hygiene``; an unreadable image raises :class:`DataError` naming it)."""
        paths = [Path(p) for p in paths]
        hashes = [_sha256(p) for p in paths]
        key = hashlib.sha256(json.dumps({"params": PARAMS, "files": hashes}).encode()).hexdigest()
        if cache is None:
            cache = cache_dir() / "hygiene"
        cache = Path(cache)
        cache_file = cache / f"index-{key[:24]}.npz"
        greys = None
        if cache_file.is_file():
            try:
                with np.load(cache_file, allow_pickle=False) as z:
                    n = len(paths)
                    kps = [z[f"k{i}"] for i in range(n)]
                    descs = [z[f"d{i}"] for i in range(n)]
                    greys = [z[f"g{i}"] for i in range(n)]
            except (OSError, KeyError, ValueError):
                greys = None  # a damaged cache file is rebuilt
        if greys is None:
            kps, descs, greys = [], [], []
            for p in tqdm(paths, desc="index evaluation images", unit="img", disable=not progress):
                img = read_image(p)
                k, d = image_features(img)
                kps.append(k)
                descs.append(d)
                greys.append(_grey(img).astype(np.float32))
            cache.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            np.savez_compressed(buf, **{f"k{i}": k for i, k in enumerate(kps)},
                                **{f"d{i}": d for i, d in enumerate(descs)},
                                **{f"g{i}": g for i, g in enumerate(greys)})
            atomic_write_bytes(cache_file, buf.getvalue())
        return cls(paths, kps, descs, greys, key)


def _best_scale_translation(a: np.ndarray, b: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """The map ``b ≈ s ⊙ a + t`` (per-axis scales ``s = (sx, sy)``: crops and resizes, the
    aspect ratio kept or not; no rotation) with the most inliers among the hypotheses of every
    two matches, refined by least squares on its inliers. Returns ``(inliers, s, t)``;
    ``(0, nan, nan)`` when no hypothesis is valid."""
    n = len(a)
    i, j = np.triu_indices(n, 1)
    da, db = a[j] - a[i], b[j] - b[i]
    ok = (np.abs(da) > 3.0).all(1)
    s = np.where(ok[:, None], db / np.where(np.abs(da) > 3.0, da, 1.0), 0.0)       # (H, 2)
    lo, hi = SCALE_RANGE
    ok &= (s > lo).all(1) & (s < hi).all(1) & (np.abs(np.log(np.maximum(s[:, 0], 1e-9)
                                                           / np.maximum(s[:, 1], 1e-9)))
                                                < np.log(MAX_ANISOTROPY))
    if not ok.any():
        return 0, np.full(2, np.nan), np.full(2, np.nan)
    s, i = s[ok], i[ok]
    t = b[i] - s * a[i]                                               # (H, 2)
    tol = INLIER_PX * np.maximum(1.0, s)                              # per axis, (H, 2)
    res = (s[:, None] * a[None] + t[:, None] - b[None]) / tol[:, None]  # (H, n, 2)
    inl = (res ** 2).sum(2) <= 1.0
    best = int(np.argmax(inl.sum(1)))
    m, sb, tb = inl[best], s[best], t[best]
    # least squares per axis on the inliers (b_c = s_c·a_c + t_c), a few rounds: two-match
    # hypotheses are noisy, the fit over all inliers is not
    for _ in range(3):
        am, bm = a[m], b[m]
        ac, bc = am - am.mean(0), bm - bm.mean(0)
        s_ls = (ac * bc).sum(0) / np.maximum((ac * ac).sum(0), 1e-9)
        if not ((s_ls > lo).all() and (s_ls < hi).all()):
            break
        t_ls = bm.mean(0) - s_ls * am.mean(0)
        m2 = ((((s_ls * a + t_ls - b) / (INLIER_PX * np.maximum(1.0, s_ls))) ** 2).sum(1)
              <= 1.0)
        if m2.sum() < 0.9 * m.sum() or m2.sum() < 2:
            break
        m, sb, tb = m2, s_ls, t_ls
    return int(m.sum()), sb, tb


def _blur(g: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(g, sigma) if sigma > 0.3 else g


def _photometric(grey: np.ndarray, eval_grey: np.ndarray, s: np.ndarray, t: np.ndarray
                 ) -> tuple[float, float]:
    """NCC of ``grey(p)`` and ``eval_grey(s ⊙ p + t)`` over their overlap, and the overlap's
    share of the smaller image (both in [0, 1])."""
    h, w = grey.shape
    eh, ew = eval_grey.shape
    sg = float(np.sqrt(s[0] * s[1]))  # mean scale
    # compare at the coarser image's resolution: blur the finer one by about one coarse pixel
    g = _blur(grey, 0.5 / sg if sg < 1 else 0.0)
    e = _blur(eval_grey, 0.5 * sg if sg > 1 else 0.0)
    step = max(1, int(round(1 / (2 * min(1.0, sg)))))  # the photo's grid at ~coarse spacing
    ys, xs = np.mgrid[0:h:step, 0:w:step].astype(np.float64)
    qx, qy = s[0] * xs + t[0], s[1] * ys + t[1]
    inside = (qx >= 0) & (qx <= ew - 1) & (qy >= 0) & (qy <= eh - 1)
    n_in = int(inside.sum())
    area_photo = (h * w) / step ** 2
    area_eval_in_photo = (eh * ew) / (s[0] * s[1]) / step ** 2
    overlap = n_in / max(1.0, min(area_photo, area_eval_in_photo))
    if n_in < 64:
        return 0.0, float(min(overlap, 1.0))
    ev = ndimage.map_coordinates(e, [qy[inside], qx[inside]], order=1)
    gv = g[ys[inside].astype(int), xs[inside].astype(int)]
    gv, ev = gv - gv.mean(), ev - ev.mean()
    denom = np.sqrt((gv * gv).sum() * (ev * ev).sum())
    ncc = float((gv * ev).sum() / denom) if denom > 1e-9 else 0.0
    return ncc, float(min(overlap, 1.0))


def find_duplicate(image: np.ndarray, index: EvaluationIndex,
                   features: tuple[np.ndarray, np.ndarray] | None = None) -> Duplicate | None:
    """The evaluation image that ``image`` (``H×W×3`` uint8) is a near-duplicate of, or ``None``
    (see the module doc for the test). ``features``: its :func:`image_features`, if known."""
    if len(index) == 0:
        return None
    kp, desc = features if features is not None else image_features(image)
    if len(desc) < 2:
        return None

    n_img, k = index._valid.shape
    with torch.no_grad():
        sim = torch.from_numpy(desc) @ index._desc_t                  # (N, images·k)
        sim = sim.view(len(desc), n_img, k).masked_fill_(index._pad, -2.0)
        top, arg = sim.topk(2, dim=2)                                  # best two per image
    s1, s2 = top[..., 0].numpy(), top[..., 1].numpy()
    d1, d2 = np.sqrt(np.maximum(2 - 2 * s1, 0)), np.sqrt(np.maximum(2 - 2 * s2, 0))
    passed = d1 < RATIO * d2                                       # (N, images)
    nn = arg[..., 0].numpy()                                       # (N, images)
    grey = None
    best: Duplicate | None = None
    for e in np.argsort(-passed.sum(0)):
        m = np.flatnonzero(passed[:, e])
        if len(m) < MIN_INLIERS:
            break
        a = kp[m].astype(np.float64)
        b = index.keypoints[e][nn[m, e]].astype(np.float64)
        inl, s, t = _best_scale_translation(a, b)
        if inl < MIN_INLIERS:
            continue
        if grey is None:
            grey = _grey(image)
        ncc, overlap = _photometric(grey, index.greys[e].astype(np.float64), s, t)
        if ncc >= MIN_NCC and overlap >= MIN_OVERLAP:
            cand = Duplicate(index.paths[e], (float(s[0]), float(s[1])),
                             (float(t[0]), float(t[1])), inl, len(m), ncc, overlap)
            if best is None or cand.ncc > best.ncc:
                best = cand
    return best


def load_index(root, extra_dirs=(), cache=None, progress: bool = False) -> EvaluationIndex:
    """The index of the known evaluation sets under ``root`` (``None``: none) plus every image
    under ``extra_dirs`` (folders that must not exist, or be empty, raise :class:`DataError`)."""
    paths: list[Path] = []
    if root is not None:
        for files in evaluation_images(root).values():
            paths.extend(files)
    for d in extra_dirs:
        d = Path(d)
        if not d.is_dir():
            raise DataError(f"{d}: evaluation image folder not found")
        files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{d}: no images in this evaluation image folder")
        paths.extend(files)
    return EvaluationIndex.build(paths, cache=cache, progress=progress)


# ---------------------------------------------------------------------------------------------
# screening many photos (cached verdicts, optional worker processes)
_WORKER_INDEX: EvaluationIndex | None = None


def _worker_check(paths: list, cache: str, key: str, images: list) -> list:
    """Worker side of :meth:`Screener.check` (the index is loaded once per process)."""
    global _WORKER_INDEX
    if _WORKER_INDEX is None or _WORKER_INDEX.key != key:
        _WORKER_INDEX = EvaluationIndex.build(paths, cache=cache)
    return [None if (d := find_duplicate(im, _WORKER_INDEX)) is None else d.to_dict()
            for im in images]


def image_key(image: np.ndarray) -> str:
    """Content key of a decoded image (SHA-1 of its shape and pixels)."""
    a = np.ascontiguousarray(image)
    return hashlib.sha1(repr(a.shape).encode() + a.tobytes()).hexdigest()


class Screener:
    """Checks photos against an :class:`EvaluationIndex`, remembering every verdict on disk
    (``<cache>/verdicts-<index key>.json``: content key → ``None`` or the :class:`Duplicate`), so
    that a second preparation over the same photos, or one resumed after a kill, does not
    recompute them. ``workers > 1`` spreads the work over spawned processes."""

    def __init__(self, index: EvaluationIndex, workers: int = 1, cache: str | Path | None = None):
        if cache is None:
            cache = cache_dir() / "hygiene"
        self.index = index
        self.cache = Path(cache)
        self.workers = max(1, int(workers))
        self._file = self.cache / f"verdicts-{index.key[:24]}.json"
        self.verdicts: dict[str, dict | None] = {}
        if self._file.is_file():
            try:
                self.verdicts = json.loads(self._file.read_text())
            except (OSError, ValueError):
                self.verdicts = {}  # a damaged verdict file is recomputed
        self._pool = None

    def check(self, images: list[np.ndarray]) -> list[Duplicate | None]:
        """Verdicts for ``images`` (``H×W×3`` uint8), in order."""
        keys = [image_key(im) for im in images]
        todo = [i for i, k in enumerate(keys) if k not in self.verdicts]
        if todo and len(self.index):
            if self.workers > 1 and len(todo) > 1:
                if self._pool is None:
                    self._pool = spawn_pool(self.workers)
                chunks = [todo[j::self.workers] for j in range(self.workers)]
                futs = [self._pool.submit(_worker_check, self.index.paths, str(self.cache),
                                          self.index.key, [images[i] for i in c])
                        for c in chunks]
                for c, f in zip(chunks, futs):
                    for i, v in zip(c, f.result()):
                        self.verdicts[keys[i]] = v
            else:
                for i in todo:
                    d = find_duplicate(images[i], self.index)
                    self.verdicts[keys[i]] = None if d is None else d.to_dict()
            self.save()
        elif todo:
            for i in todo:
                self.verdicts[keys[i]] = None
        return [None if (v := self.verdicts[k]) is None else
                Duplicate(**{**v, "scale": tuple(v["scale"]), "offset": tuple(v["offset"])})
                for k in keys]

    def save(self) -> None:
        self.cache.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self._file, json.dumps(self.verdicts).encode())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> Screener:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
