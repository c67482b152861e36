"""Preparing training quartets ``<s1, s2, r1, r2>`` with the renderer's ground truth ``~F_s1s2``,
``~M_s1s2``: the generation behind ``cyclecorr prepare`` (:func:`prepare_quartets`). The folder it
writes is described in :mod:`cyclecorr.data.quartet_files` and read back by the datasets of
:mod:`cyclecorr.data.quartet_datasets`.

Pipeline
--------
1. **Real crops**: every real image of the ``--real`` folders is screened against the
   evaluation images (:mod:`cyclecorr.data.hygiene`: near-duplicates are left out and listed),
   cropped to its object box (annotation, else the whole image) and resized to 128×128
   (:func:`crop_sample`); stored once in ``real_crops.safetensors`` (uint8) with their sources,
   VOC pose tags and the excluded photos.
2. **Render bank** (:mod:`cyclecorr.data.retrieval`): HOG of every CAD model over the viewpoint
   grid, cached in ``<out>/cache/bank-<key>.npz``.
3. **Retrieval** (``retrieval.safetensors``): per real crop its viewpoint (annotated when the
   dataset has one, as in the paper; else the nearest renders, constrained by the VOC pose tag)
   and its K = 20 nearest models at that viewpoint.
4. **Quartets**, drawn per shard from a generator seeded with ``(seed, shard index)`` so that a
   shard's content never depends on which other shards exist (resume = uninterrupted run).

Validity rule (all must hold; rejected candidates are counted and reported)
---------------------------------------------------------------------------
- ``r1 ≠ r2`` and their (grid) viewpoints differ by at most ``max_azimuth_gap`` (default 45°)
  in azimuth and ``max_elevation_gap`` (20°) in elevation, so that r1 and r2 overlap;
- a model ``m`` is among the K nearest models of **both** r1 and r2 (chosen uniformly among
  the shared ones);
- ``s1 = render(m, vp(r1))``, ``s2 = render(m, vp(r2))`` (``background`` colour, default black;
  ``light`` "default" = :class:`cyclecorr.render.Light`, or "random" = one
  :func:`cyclecorr.render.random_light` per quartet shared by s1 and s2; cropped to the
  object's box and resized to 128×128; camera distance ``distance``, also for annotated
  PASCAL3D+ viewpoints, whose azimuth, elevation and in-plane rotation are used) and
  ``~F_s1s2``, ``~M_s1s2`` come from :func:`cyclecorr.render.correspondence_between`;
- at least ``min_matchable`` (default 0.2) of s1's object pixels are matchable in s2;
- with ``require_pose``, r1 and r2 have an annotated viewpoint or a VOC pose tag (HOG alone
  confuses front and rear views of cars: see :data:`cyclecorr.data.retrieval.POSE_AZIMUTH`).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections import OrderedDict
from concurrent.futures import as_completed
from dataclasses import asdict
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save
from tqdm import tqdm

from cyclecorr._io import file_sha256, remove_stale_temporaries
from cyclecorr._paths import cache_dir, shared_data_dir
from cyclecorr.data.datasets import ImageFolder, Pascal3D, VOCDetection
from cyclecorr.data.holdout import check_training_models
from cyclecorr.data.hygiene import PARAMS as HYGIENE_PARAMS
from cyclecorr.data.hygiene import Screener, load_index
from cyclecorr.data.io import DataError, atomic_write_bytes
from cyclecorr.data.quartet_config import QuartetConfig
from cyclecorr.data.quartet_files import (
    FORMAT,
    MANIFEST,
    PLAN_FILE,
    REAL_FILE,
    RETRIEVAL_FILE,
    VERSION,
    shard_hash_path,
    shard_path,
)
from cyclecorr.data.retrieval import (
    POSE_AZIMUTH,
    build_bank,
    estimate_viewpoints,
    get_mesh,
    hog_descriptors,
    nearest_grid_viewpoint,
    nearest_models,
    spawn_pool,
    viewpoint_grid,
)
from cyclecorr.data.samples import crop_sample
from cyclecorr.render import Renderer, Viewpoint, correspondence_between, list_meshes, random_light

__all__ = ["QuartetConfig", "prepare_quartets", "collect_real", "collect_models", "parse_shard",
           "QuartetGenerator", "quartet_generator"]

_SCREEN_CHUNK = 256  # photos screened per batch (bounds memory; verdicts are saved per batch)


def parse_shard(spec: str | None) -> tuple[int, int]:
    """``"i/n"`` → ``(i, n)`` with ``0 ≤ i < n``; None → ``(0, 1)``."""
    if spec is None:
        return 0, 1
    try:
        i, n = (int(v) for v in str(spec).split("/"))
    except ValueError as e:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {spec!r}") from e
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard i/n needs 0 ≤ i < n, got {spec!r}")
    return i, n


def _save_st(path: Path, tensors: dict, metadata: dict | None = None) -> str:
    """Write a safetensors file atomically; return its sha256."""
    # one metadata entry: safetensors stores metadata in a hash map (unordered), and a file must
    # be byte-identical when regenerated
    payload = save({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                   metadata={"cyclecorr": json.dumps(metadata or {}, sort_keys=True)})
    atomic_write_bytes(path, payload)
    return hashlib.sha256(payload).hexdigest()


def _load_st(path: Path) -> tuple[dict, dict]:
    try:
        with safe_open(str(path), framework="np") as f:
            meta = json.loads((f.metadata() or {}).get("cyclecorr", "{}"))
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except Exception as e:
        raise DataError(f"{path}: unreadable safetensors file ({type(e).__name__}: {e})") from e


# ---------------------------------------------------------------------------------------------
# sources
def collect_real(dirs, category: str = "car"):
    """Open each real-image folder with the loader its layout calls for.

    - ``<dir>/Annotations/<category>_pascal`` → :class:`Pascal3D` (annotated viewpoints);
    - ``<dir>/Annotations`` + ``<dir>/JPEGImages`` → :class:`VOCDetection` (non-truncated,
      non-difficult objects of ``category``, shorter box side ≥ 48 px);
    - ``<dir>/<category>/`` exists → that sub-folder as an :class:`ImageFolder`;
    - else ``<dir>`` as an :class:`ImageFolder` (with its ``boxes.tsv`` where present).

    Returns a list of ``(folder, dataset)``.
    """
    out = []
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise FileNotFoundError(f"{d}: real-image folder not found")
        if (d / "Annotations" / f"{category}_pascal").is_dir():
            ds = Pascal3D(d, category)
        elif (d / "Annotations").is_dir() and (d / "JPEGImages").is_dir():
            ds = VOCDetection(d, category, skip_truncated=True, skip_difficult=True, min_size=48)
        elif (d / category).is_dir():
            ds = ImageFolder(d / category)
        else:
            ds = ImageFolder(d)
        if len(ds) == 0:
            raise DataError(f"{d}: no {category} images found")
        out.append((d, ds))
    return out


def collect_models(dirs, category: str = "car") -> list[str]:
    """Mesh files under the ``--cad`` folders (sorted per folder). PASCAL3D+ JSON models whose
    name starts with another category than ``category`` are skipped (``cad/pascal3d`` holds
    cars, chairs and aeroplanes side by side)."""
    others = ("aeroplane", "bicycle", "boat", "bottle", "bus", "car", "chair", "diningtable",
              "motorbike", "sofa", "train", "tvmonitor")
    out = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: CAD folder not found")
        found = []
        for p in list_meshes(d):
            if p.suffix.lower() == ".json":
                stem = p.stem.lower()
                if any(stem.startswith(o) for o in others) and not stem.startswith(category):
                    continue
            found.append(str(Path(p).resolve()))
        if not found:
            raise DataError(f"{d}: empty folder (no {category} mesh files)")
        out.extend(found)
    return out


# ---------------------------------------------------------------------------------------------
# the per-process quartet generator
class QuartetGenerator:
    """Holds real crops + retrieval plan + meshes, renders views with an LRU cache."""

    def __init__(self, folder: Path, cache_views: int = 96):
        self.folder = Path(folder)
        plan = json.loads((self.folder / PLAN_FILE).read_text())
        self.cfg = QuartetConfig(**plan["config"])
        self.models = plan["models"]
        real, _ = _load_st(self.folder / REAL_FILE)
        self.images = real["images"]
        ret, _ = _load_st(self.folder / RETRIEVAL_FILE)
        self.vp = ret["viewpoint"].astype(np.float64)          # (N, 3) az, el, theta
        self.grid_index = ret["grid_index"].astype(np.int64)   # (N,)
        self.knn = ret["knn"].astype(np.int64)                 # (N, K)
        self.grid = ret["grid"].astype(np.float64)             # (V, 2)
        g = self.grid
        az_ok = _azd(g[:, None, 0], g[None, :, 0]) <= self.cfg.max_azimuth_gap + 1e-6
        el_ok = np.abs(g[:, None, 1] - g[None, :, 1]) <= self.cfg.max_elevation_gap + 1e-6
        compat = az_ok & el_ok
        # crops quartets may use: all, or (require_pose) those whose viewpoint is annotated or
        # constrained by a VOC pose tag
        ok = np.ones(len(self.images), bool)
        if self.cfg.require_pose:
            ok = (ret["annotated"] > 0) | (ret.get("pose_tagged", np.zeros_like(ok)) > 0)
            if ok.sum() < 2:
                raise DataError(f"{self.folder}: require_pose needs ≥ 2 real crops with an "
                                f"annotated viewpoint or a VOC pose tag, found {int(ok.sum())}")
        self.eligible = np.flatnonzero(ok)
        by_v = [np.flatnonzero((self.grid_index == v) & ok) for v in range(len(g))]
        self.pool = [np.concatenate([by_v[u] for u in np.flatnonzero(compat[v])] or
                                    [np.zeros(0, np.int64)]) for v in range(len(g))]
        self.views: OrderedDict = OrderedDict()
        self.cache_views = cache_views
        self.bad_models: dict = {}  # model index → why it cannot be rendered
        self.renderer = None
        self.t = {"render": 0.0, "gt": 0.0}

    def _view(self, m: int, vp: np.ndarray, light=None):
        key = (m, *np.round(vp, 4).tolist(), light)
        v = self.views.get(key)
        if v is not None:
            self.views.move_to_end(key)
            return v
        if self.renderer is None:
            # keep every model uploaded: re-uploading a heavy textured mesh costs more than a render
            self.renderer = Renderer(cache_size=max(8, min(256, len(self.models))))
        t0 = time.perf_counter()
        mesh = get_mesh(self.models[m])
        v = self.renderer.render(mesh, Viewpoint(float(vp[0]), float(vp[1]), float(vp[2]),
                                                 self.cfg.distance), self.cfg.size,
                                 light=light, background=self.cfg.background)
        self.t["render"] += time.perf_counter() - t0
        self.views[key] = v
        if len(self.views) > self.cache_views:
            self.views.popitem(last=False)
        return v

    def draw(self, rng: np.random.Generator, stats: dict, max_attempts: int = 2000):
        """Draw candidates from ``rng`` until one is valid; return the quartet dict."""
        N = len(self.eligible)
        for _ in range(max_attempts):
            stats["attempts"] = stats.get("attempts", 0) + 1
            r1 = int(self.eligible[rng.integers(N)])
            pool = self.pool[self.grid_index[r1]]
            r2 = int(pool[rng.integers(len(pool))]) if len(pool) else r1
            if r2 == r1:
                stats["same_image"] = stats.get("same_image", 0) + 1
                continue
            common = np.intersect1d(self.knn[r1], self.knn[r2])
            if len(common) == 0:
                stats["no_shared_model"] = stats.get("no_shared_model", 0) + 1
                continue
            m = int(common[rng.integers(len(common))])
            light = None
            if self.cfg.light == "random":  # one light for s1 and s2, drawn from the same rng
                light = random_light(int(rng.integers(2 ** 31)))
            if m in self.bad_models:
                stats["broken_model"] = stats.get("broken_model", 0) + 1
                continue
            try:
                v1 = self._view(m, self.vp[r1], light)
                v2 = self._view(m, self.vp[r2], light)
            except Exception as e:  # a model that cannot be rendered is dropped, with the reason
                self.bad_models[m] = (f"{self.models[m]}: {type(e).__name__}: "
                                      f"{str(e).splitlines()[0][:200] if str(e) else ''}")
                stats["broken_model"] = stats.get("broken_model", 0) + 1
                continue
            t0 = time.perf_counter()
            gt = correspondence_between(v1, v2)
            self.t["gt"] += time.perf_counter() - t0
            fg = max(int(v1.mask.sum()), 1)
            if gt.matchability.sum() / fg < self.cfg.min_matchable:
                stats["low_matchability"] = stats.get("low_matchability", 0) + 1
                continue
            return {"s1": v1.rgb, "s2": v2.rgb, "mask_s1": v1.mask.astype(np.uint8),
                    "mask_s2": v2.mask.astype(np.uint8), "flow_s1s2": gt.flow,
                    "match_s1s2": (gt.matchability > 0.5).astype(np.uint8),
                    "r1_index": r1, "r2_index": r2, "model_index": m,
                    "viewpoint_s1": self.vp[r1].astype(np.float32),
                    "viewpoint_s2": self.vp[r2].astype(np.float32)}
        broken = f"; models that failed to render: {list(self.bad_models.values())}" \
            if self.bad_models else ""
        raise DataError(f"{self.folder}: no valid quartet in {max_attempts} candidates "
                        f"(rejections: {stats}); widen --max-azimuth-gap, raise --k or lower "
                        f"--min-matchable{broken}")

    def make_shard(self, j: int, count: int) -> tuple[dict, dict]:
        rng = np.random.default_rng([int(self.cfg.seed), int(j)])
        stats: dict = {}
        items = [self.draw(rng, stats) for _ in range(count)]
        arrays = {k: np.stack([it[k] for it in items]) for k in items[0]}
        arrays["flow_s1s2"] = arrays["flow_s1s2"].astype(np.float16)
        for k in ("r1_index", "r2_index", "model_index"):
            arrays[k] = arrays[k].astype(np.int64)
        return arrays, stats


def _azd(a, b):
    d = np.abs((a - b) % 360.0)
    return np.minimum(d, 360.0 - d)


_GEN: dict = {}


def quartet_generator(folder: str) -> QuartetGenerator:
    """This process's :class:`QuartetGenerator` of a prepared folder (one per process, reused)."""
    g = _GEN.get((folder, os.getpid()))
    if g is None:
        _GEN.clear()
        g = _GEN[(folder, os.getpid())] = QuartetGenerator(Path(folder))
    return g


def _shard_task(args):
    folder, j, count = args
    t0 = time.perf_counter()
    g = quartet_generator(folder)
    g.t = {"render": 0.0, "gt": 0.0}
    arrays, stats = g.make_shard(j, count)
    t1 = time.perf_counter()
    sha = _save_st(shard_path(Path(folder), j), arrays, {"shard": j, "count": count})
    atomic_write_bytes(shard_hash_path(Path(folder), j), sha.encode())
    t2 = time.perf_counter()
    timing = {"render": g.t["render"], "gt": g.t["gt"], "write": t2 - t1, "total": t2 - t0}
    return j, count, sha, stats, timing


# ---------------------------------------------------------------------------------------------
def _shard_counts(n: int, size: int) -> list[int]:
    return [min(size, n - s) for s in range(0, n, size)]


def _prepare_real(out: Path, real_dirs, cfg: QuartetConfig, log, progress: bool,
                  screener: Screener):
    path = out / REAL_FILE
    if path.exists():
        tensors, meta = _load_st(path)
        log(f"real crops: reusing {path} ({len(tensors['images'])} crops, "
            f"{len(meta.get('excluded', []))} near-duplicates of evaluation images excluded)")
        return tensors, meta
    sets = collect_real(real_dirs, cfg.category)
    images, vps, sources, poses, skipped, excluded = [], [], [], [], [], []
    pending: list[tuple] = []  # (full image, crop, viewpoint, source, pose) awaiting a verdict

    def flush():
        verdicts = screener.check([p[0] for p in pending])
        for (_full, crop, vp, src, pose), dup in zip(pending, verdicts):
            if dup is not None:
                excluded.append({"source": src, **dup.to_dict()})
                continue
            images.append(crop)
            vps.append(vp)
            sources.append(src)
            poses.append(pose)
        pending.clear()

    total = sum(len(ds) for _, ds in sets)
    bar = tqdm(total=total, desc="real crops", unit="img", disable=not progress)
    for d, ds in sets:
        n0, x0 = len(images), len(excluded)
        for i in range(len(ds)):
            try:
                s = ds[i]
            except DataError as e:  # one corrupt photo among thousands: skip it, say which
                log(f"real: skipping {e}")
                skipped.append(str(e))
                bar.update()
                continue
            c = crop_sample(s, cfg.size)
            vp = s.viewpoint
            angles = [vp.azimuth, vp.elevation, vp.theta] if vp is not None else [np.nan] * 3
            pending.append((s.image, c.image, angles, str(Path(s.path).resolve()),
                            s.meta.get("pose", "") or ""))
            if len(pending) >= _SCREEN_CHUNK:
                flush()
            bar.update()
        flush()
        log(f"real: {d}: {len(images) - n0} {cfg.category} crops ({type(ds).__name__}), "
            f"{len(excluded) - x0} excluded as near-duplicates of evaluation images")
    bar.close()
    log(f"hygiene: screened {len(images) + len(excluded)} photos against "
        f"{len(screener.index)} evaluation images; excluded {len(excluded)}"
        + "".join(f"\n  {e['source']} ~ {e['eval_image']} (ncc {e['ncc']:.2f})"
                  for e in excluded[:20])
        + (f"\n  … and {len(excluded) - 20} more (see {path})" if len(excluded) > 20 else ""))
    if not images:
        raise DataError(f"no readable real image in {[str(d) for d in real_dirs]}"
                        + (f" ({len(excluded)} excluded as near-duplicates of evaluation images)"
                           if excluded else ""))
    tensors = {"images": np.stack(images), "viewpoint_annotated": np.asarray(vps, np.float32)}
    meta = {"sources": sources, "poses": poses,
            "folders": [str(Path(d).resolve()) for d in real_dirs],
            "skipped": skipped, "excluded": excluded}
    _save_st(path, tensors, meta)
    return tensors, meta


def _prepare_retrieval(out: Path, real, real_meta, models, cfg: QuartetConfig, workers: int,
                       log, progress: bool, bank_cache: Path | None):
    path = out / RETRIEVAL_FILE
    if path.exists():
        tensors, meta = _load_st(path)
        log(f"retrieval: reusing {path}")
        return tensors, meta
    grid = viewpoint_grid(cfg.azimuth_step, cfg.elevations)
    t0 = time.perf_counter()
    if bank_cache is None:
        bank_cache = cache_dir() / "banks"
    bank = build_bank(models, grid, cache=bank_cache, workers=workers,
                      progress=progress, distance=cfg.distance, render_size=cfg.size, log=log)
    t_bank = time.perf_counter() - t0
    t0 = time.perf_counter()
    desc = hog_descriptors(real["images"], progress=progress)
    t_hog = time.perf_counter() - t0
    ann = real["viewpoint_annotated"].astype(np.float64)
    has = np.isfinite(ann).all(1)
    poses = real_meta["poses"] if cfg.use_pose_tags else None
    est, score = estimate_viewpoints(bank, desc, poses, cfg.k_vp)
    gi = est.copy()
    for i in np.flatnonzero(has):
        gi[i] = nearest_grid_viewpoint(grid, ann[i, 0], ann[i, 1])
    vp = np.zeros((len(desc), 3))
    vp[:, :2] = grid[gi]
    vp[has] = ann[has]
    knn, kd = nearest_models(bank, desc, gi, cfg.k)
    tensors = {"grid": grid, "grid_index": gi, "viewpoint": vp, "knn": knn, "knn_dist": kd,
               "vp_score": score, "annotated": has.astype(np.uint8),
               "pose_tagged": np.array([p in POSE_AZIMUTH for p in real_meta["poses"]], np.uint8)}
    meta = {"models": bank.models, "skipped_models": bank.params.get("skipped", [])}
    _save_st(path, tensors, meta)
    meta = {**meta, "timing": {"bank_s": t_bank, "hog_s": t_hog}}
    log(f"retrieval: {int(has.sum())} annotated viewpoints, {int((~has).sum())} estimated by "
        f"HOG; K = {knn.shape[1]} nearest of {len(bank.models)} models")
    sectors = np.round((vp[:, 0] % 360.0) / 45.0).astype(int) % 8
    counts = np.bincount(sectors, minlength=8)
    log("retrieval: azimuth histogram (45° sectors centred on 0, 45, …, 315): "
        + " ".join(str(int(c)) for c in counts))
    known = int(((tensors["annotated"] > 0) | (tensors["pose_tagged"] > 0)).sum())
    log(f"retrieval: {known} of {len(vp)} crops with an annotated viewpoint or a VOC pose tag"
        + (" (the only ones quartets use: require_pose)" if cfg.require_pose else ""))
    return tensors, meta


def prepare_quartets(real_dirs, cad_dirs, out, num_quartets: int,
                     config: QuartetConfig | None = None, workers: int = 1,
                     shard: str | tuple | None = None, progress: bool = True, log=print,
                     bank_cache=None, eval_data="auto", exclude_like=(), hygiene_cache=None,
                     allow_evaluation_models: bool = False) -> dict:
    """Prepare ``num_quartets`` quartets into ``out`` (resumable; see the module docstring).

    Args:
        real_dirs: folders of real images (see :func:`collect_real`).
        cad_dirs: folders of CAD models (see :func:`collect_models`).
        out: output folder (created).
        num_quartets: total quartets over all shards (0 = only crops + retrieval, for
            :class:`OnTheFlyQuartetDataset`).
        config: :class:`QuartetConfig`.
        workers: worker processes (spawned) rendering shards and the bank.
        shard: ``"i/n"``: generate only the shards ``j`` with ``j % n == i`` (split across
            machines writing to one folder); the manifest is written once every shard exists.
        bank_cache: folder for the render bank (default ``cyclecorr._paths.cache_dir()/banks``,
            shared by every preparation; descriptors are cached per model file, grid and
            parameters, see :func:`cyclecorr.data.retrieval.build_bank`).
        eval_data: data root whose evaluation sets (:data:`cyclecorr.data.hygiene.
            EVALUATION_SETS`) no training photo may duplicate; ``"auto"``: the shared data folder
            (:func:`cyclecorr._paths.shared_data_dir`), ``None``: none.
        exclude_like: further folders of images no training photo may duplicate.
        hygiene_cache: folder for the evaluation index and the verdicts (default
            ``cache_dir()/hygiene``).
        allow_evaluation_models: let the category's evaluation-only CAD models in (see
            :mod:`cyclecorr.data.holdout`; refused with a ``DataError`` otherwise).

    Every real photo is screened (:mod:`cyclecorr.data.hygiene`): a near-duplicate of an
    evaluation image (the same photo resized, cropped, re-encoded, or containing it) is left out
    of the real crops, logged and listed in the crops' metadata (``excluded``); the evaluation
    index's key is part of the plan, so a preparation is never resumed against other evaluation
    images.

    Returns:
        a summary dict (counts, rejections, timing shares, manifest path or missing shards).
    """
    cfg = config or QuartetConfig()
    si, sn = parse_shard(shard) if not isinstance(shard, tuple) else shard
    if num_quartets < 0:
        raise ValueError(f"num_quartets must be ≥ 0, got {num_quartets}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    models = collect_models(cad_dirs, cfg.category)
    log(f"cad: {len(models)} {cfg.category} models in {len(list(cad_dirs))} folder(s)")
    held = check_training_models(models, cfg.category, allow_evaluation_models, log)
    if eval_data == "auto":
        eval_data = shared_data_dir()
    index = load_index(eval_data, exclude_like, cache=hygiene_cache, progress=progress)
    if len(index) == 0:
        log("hygiene: WARNING: no evaluation images known (no data root with PF-WILLOW, FlowWeb "
            "or TSS, no --exclude-like folder): training photos are not screened")
    else:
        log(f"hygiene: {len(index)} evaluation images to keep out of training")
    plan = {"format": FORMAT, "version": VERSION, "config": asdict(cfg),
            "num_quartets": int(num_quartets),
            "real_folders": [str(Path(d).resolve()) for d in real_dirs],
            "cad_folders": [str(Path(d).resolve()) for d in cad_dirs],
            "hygiene": {"index": index.key, "evaluation_images": len(index),
                        "params": HYGIENE_PARAMS}}
    if held:
        plan["evaluation_models_allowed"] = held
    plan = json.loads(json.dumps(plan))  # tuples → lists, as read back from disk
    plan_path = out / PLAN_FILE
    if plan_path.exists():
        old = json.loads(plan_path.read_text())
        # the number of quartets may grow or shrink (shard j's content depends only on the
        # seed and j); every other parameter must match
        old_cmp = {k: v for k, v in old.items() if k not in ("models", "num_quartets")}
        new_cmp = {k: v for k, v in plan.items() if k != "num_quartets"}
        if old_cmp != new_cmp:
            raise DataError(f"{plan_path}: {out} holds a preparation with other parameters "
                            f"({_diff(old_cmp, new_cmp)}); use another --out")
    # leftovers of a killed run: temporary files (older than 10 min: a --shard run on another
    # machine may be writing here), and reused files that no longer match the manifest
    for folder in (out, out / "shards"):
        for p in remove_stale_temporaries(folder, min_age=600):
            log(f"removed {p} (temporary file of an interrupted run)")
    _drop_corrupt_inputs(out, log)
    t_real = time.perf_counter()
    with Screener(index, workers=workers, cache=hygiene_cache) as screener:
        real, real_meta = _prepare_real(out, real_dirs, cfg, log, progress, screener)
    t_real = time.perf_counter() - t_real
    ret, ret_meta = _prepare_retrieval(out, real, real_meta, models, cfg, workers, log, progress,
                                       Path(bank_cache) if bank_cache else None)
    plan["models"] = ret_meta["models"]
    atomic_write_bytes(plan_path, json.dumps(plan, indent=1).encode())
    t_prep = time.perf_counter() - t_start

    counts = _shard_counts(int(num_quartets), cfg.shard_size)
    mine = [j for j in range(len(counts)) if j % sn == si]
    known = _recorded_hashes(out, counts)
    verified: dict[int, str] = {}
    todo = [j for j in mine if not _shard_ok(out, j, known.get(j), verified, log)]
    log(f"quartets: {num_quartets} in {len(counts)} shards of ≤ {cfg.shard_size}; this run: "
        f"{len(mine)} shards ({len(mine) - len(todo)} already complete), {workers} worker(s)")
    stats: dict = {}
    timing = {"render": 0.0, "gt": 0.0, "write": 0.0, "total": 0.0}
    t0 = time.perf_counter()
    bar = tqdm(total=sum(counts[j] for j in todo), desc="quartets", unit="q",
               disable=not progress)
    tasks = [(str(out), j, counts[j]) for j in todo]

    def _collect(res):
        j, c, sha, st, tm = res
        verified[j] = sha
        for k, v in st.items():
            stats[k] = stats.get(k, 0) + v
        for k in timing:
            timing[k] += tm[k]
        bar.update(c)

    if todo:
        if workers <= 1:
            for t in tasks:
                _collect(_shard_task(t))
        else:
            with spawn_pool(min(workers, len(tasks))) as pool:
                for fut in as_completed([pool.submit(_shard_task, t) for t in tasks]):
                    _collect(fut.result())
    bar.close()
    wall = time.perf_counter() - t0
    made = sum(counts[j] for j in todo)
    summary = {"out": str(out), "real_crops": int(len(real["images"])),
               "excluded": len(real_meta.get("excluded", [])),
               "models": len(plan["models"]), "skipped_models": ret_meta.get("skipped_models", []),
               "quartets_total": int(num_quartets), "quartets_made": int(made),
               "shards_made": len(todo), "wall_s": wall, "prep_s": t_prep,
               "real_s": t_real,
               "quartets_per_s": made / wall if wall > 0 and made else 0.0,
               "rejections": stats, "timing": timing, "retrieval_timing": ret_meta.get("timing")}
    missing = [j for j in range(len(counts)) if not shard_path(out, j).exists()]
    if missing:
        summary["missing_shards"] = missing
        log(f"quartets: {len(missing)} shard(s) still missing (other --shard runs); run again "
            f"with --shard or without it to finish, then the manifest is written")
    else:
        man = _write_manifest(out, plan, counts, real, ret, verified)
        summary["manifest"] = str(man)
        log(f"wrote {man}: {num_quartets} quartets in {len(counts)} shards")
    if made:
        log(f"made {made} quartets in {wall:.1f} s ({summary['quartets_per_s']:.2f} quartets/s); "
            f"rejected candidates: {stats}")
    return summary


def _diff(a: dict, b: dict) -> str:
    keys = sorted(set(a) | set(b))
    diffs = []
    for k in keys:
        if a.get(k) != b.get(k):
            if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
                sub = [s for s in set(a[k]) | set(b[k]) if a[k].get(s) != b[k].get(s)]
                diffs.append(f"{k}: {sorted(sub)}")
            else:
                diffs.append(k)
    return ", ".join(diffs)


def _drop_corrupt_inputs(out: Path, log) -> None:
    """Delete the real crops or the retrieval file when the manifest records another SHA-256
    for it (corrupted on disk): the preparation then makes it again."""
    try:
        files = json.loads((out / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    for key in ("real_crops", "retrieval"):
        rec = files.get(key) if isinstance(files, dict) else None
        if not isinstance(rec, dict) or "file" not in rec:
            continue
        p = out / rec["file"]
        if p.is_file() and file_sha256(p) != rec.get("sha256"):
            log(f"{p} is corrupt (its SHA-256 differs from {out / MANIFEST}); making it again")
            p.unlink()


def _recorded_hashes(out: Path, counts: list[int]) -> dict[int, str]:
    """The recorded SHA-256 of each shard ``j``: its ``.sha256`` file, else the manifest's entry
    when the manifest lists it with the same count."""
    known: dict[int, str] = {}
    try:
        man = json.loads((out / MANIFEST).read_text())
        for j, e in enumerate(man.get("shards", [])):
            if j < len(counts) and e.get("count") == counts[j] and e.get("sha256"):
                known[j] = e["sha256"]
    except (OSError, ValueError, AttributeError, TypeError):
        pass  # no manifest (yet), or not one to trust: the .sha256 files decide
    for j in range(len(counts)):
        try:
            known[j] = shard_hash_path(out, j).read_text().strip()
        except OSError:
            pass
    return known


def _shard_ok(out: Path, j: int, recorded: str | None, verified: dict, log) -> bool:
    """Whether shard ``j`` exists and its bytes hash to its ``recorded`` SHA-256 (then it is
    added to ``verified``). A shard without a record (a run killed between writing it and its
    hash) or with another hash (corrupted on disk) is regenerated, and the corrupt one named."""
    p = shard_path(out, j)
    if not p.exists():
        return False
    if recorded is None:
        return False
    sha = file_sha256(p)
    if sha != recorded:
        log(f"quartets: {p} is corrupt (its SHA-256 differs from the one recorded when it was "
            f"written); regenerating it")
        return False
    verified[j] = sha
    return True


def _write_manifest(out: Path, plan: dict, counts, real, ret, hashes: dict | None = None) -> Path:
    shards, first = [], 0
    hashes = hashes or {}
    for j, c in enumerate(counts):
        p = shard_path(out, j)
        shards.append({"file": str(p.relative_to(out)), "count": int(c), "first": first,
                       "sha256": hashes.get(j) or file_sha256(p)})
        first += c
    man = {
        **plan,
        "files": {"real_crops": {"file": REAL_FILE, "sha256": file_sha256(out / REAL_FILE),
                                 "count": int(len(real["images"]))},
                  "retrieval": {"file": RETRIEVAL_FILE,
                                "sha256": file_sha256(out / RETRIEVAL_FILE)}},
        "shards": shards,
        "keys": {"s1": "render of the model at r1's viewpoint, uint8 (n,H,W,3)",
                 "s2": "render of the model at r2's viewpoint, uint8 (n,H,W,3)",
                 "flow_s1s2": "float16 (n,2,H,W), channel 0 = x, pixels, q - p",
                 "match_s1s2": "uint8 (n,H,W) in {0,1}",
                 "mask_s1": "uint8 (n,H,W)", "mask_s2": "uint8 (n,H,W)",
                 "r1_index": "int64 (n,) index into real_crops images",
                 "r2_index": "int64 (n,)", "model_index": "int64 (n,) index into models",
                 "viewpoint_s1": "float32 (n,3) azimuth, elevation, theta (deg)",
                 "viewpoint_s2": "float32 (n,3)"},
    }
    path = out / MANIFEST
    atomic_write_bytes(path, json.dumps(man, indent=1).encode())
    return path


