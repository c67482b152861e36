"""Render pairs across instances: two *different* CAD models of one topology, each rendered from
its own viewpoint, with the exact dense correspondence between them.

Models that share a topology (the same vertex count and face list, e.g. the gsnet/ApolloCar3D
cars, where vertex ``i`` is the same point of every car) give ground truth between instances that
no real pair has: :func:`cyclecorr.render.correspondence_across` carries each pixel's surface point
to the same face and barycentric coordinates on the other model. Training can add such pairs to
the cycle as a supervised term (``loss.pair_weight``, ``data.render_pairs``; not in the paper).

Pair ``k`` of shard ``j`` is drawn from a generator seeded with ``(seed, j)`` (a shard's content
never depends on the others, so a killed preparation resumes exactly):

- a topology group with at least two models, chosen with probability proportional to its size;
  two different models ``a``, ``b`` of it;
- viewpoints: ``a`` at azimuth U[0, 360), elevation U(``elevations``); ``b`` at ``a``'s azimuth ±
  U[0, ``max_azimuth_gap``], elevation U(``elevations``); distance ``distance``, θ = 0;
- one :func:`cyclecorr.render.random_light` for both (``light="random"``) or the default light;
  black background; each render cropped to its object's box at ``size × size``;
- kept when at least ``min_matchable`` of ``a``'s object pixels are matchable in ``b``.

On disk: ``<out>/plan.json`` (the parameters and models, written first),
``pairs/pairs-NNNNN.safetensors`` (``src``, ``tgt`` (n, S, S, 3) uint8, ``mask_src``,
``mask_tgt``, ``match`` (n, S, S) uint8, ``flow`` (n, 2, S, S) float16, ``model_src``,
``model_tgt`` int64 into the plan's models, ``viewpoint_src``, ``viewpoint_tgt`` (n, 3)), each
written atomically with its SHA-256 beside it, and ``manifest.json`` once every shard exists.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cyclecorr._io import atomic_write_bytes, file_sha256, read_format_json
from cyclecorr.data.holdout import check_training_models
from cyclecorr.data.io import DataError
from cyclecorr.data.quartets import _load_st, _save_st, _shard_counts, collect_models
from cyclecorr.losses import PAIR_KEYS  # the keys a RenderPairDataset item holds

__all__ = ["PairConfig", "prepare_render_pairs", "RenderPairDataset", "topology_groups",
           "PAIR_KEYS"]

FORMAT = "cyclecorr-render-pairs"
VERSION = 1


@dataclass
class PairConfig:
    """Parameters of a render-pair preparation (all recorded in the plan)."""

    category: str = "car"
    size: int = 128
    seed: int = 0
    max_azimuth_gap: float = 45.0
    elevations: tuple = (0.0, 30.0)
    distance: float = 2.5
    min_matchable: float = 0.2
    light: str = "random"
    shard_size: int = 64

    def __post_init__(self):
        self.elevations = tuple(float(e) for e in self.elevations)
        if self.size < 16:
            raise ValueError(f"size must be ≥ 16, got {self.size}")
        if len(self.elevations) != 2 or self.elevations[0] > self.elevations[1]:
            raise ValueError(f"elevations must be (low, high), got {self.elevations}")
        if not 0 <= self.max_azimuth_gap <= 180:
            raise ValueError(f"max_azimuth_gap must be in [0, 180], got {self.max_azimuth_gap}")
        if not 0 <= self.min_matchable <= 1:
            raise ValueError(f"min_matchable must be in [0, 1], got {self.min_matchable}")
        if self.light not in ("default", "random"):
            raise ValueError(f"light must be 'default' or 'random', got {self.light!r}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be ≥ 1, got {self.shard_size}")


def _topology_key(mesh) -> str:
    h = hashlib.sha1(np.ascontiguousarray(mesh.faces, np.int64).tobytes())
    return f"{len(mesh.vertices)}:{h.hexdigest()}"


def topology_groups(models: list[str], log=None) -> list[list[int]]:
    """Indices of ``models`` grouped by topology (groups of two or more, largest first);
    models that cannot be loaded are left out (named through ``log``)."""
    from cyclecorr.data.retrieval import get_mesh

    groups: dict[str, list[int]] = {}
    for i, m in enumerate(models):
        try:
            key = _topology_key(get_mesh(m))
        except (OSError, ValueError) as e:
            if log:
                log(f"render pairs: skipping {m} ({e})")
            continue
        groups.setdefault(key, []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=len, reverse=True)


def _pairs_path(out: Path, j: int) -> Path:
    return out / "pairs" / f"pairs-{j:05d}.safetensors"


class _PairGenerator:
    def __init__(self, out: Path):
        plan = json.loads((out / "plan.json").read_text())
        self.cfg = PairConfig(**plan["config"])
        self.models = plan["models"]
        self.groups = plan["groups"]
        self.renderer = None

    def _render(self, m: int, vp, light):
        from cyclecorr.data.retrieval import get_mesh
        from cyclecorr.render import Renderer, Viewpoint

        if self.renderer is None:
            self.renderer = Renderer(backend="raster")
        mesh = get_mesh(self.models[m])
        return mesh, self.renderer.render(mesh, Viewpoint(*vp, distance=self.cfg.distance),
                                          self.cfg.size, light=light)

    def draw(self, rng: np.random.Generator, stats: dict, max_attempts: int = 500) -> dict:
        from cyclecorr.render import correspondence_across, random_light

        c = self.cfg
        sizes = np.array([len(g) for g in self.groups], np.float64)
        for _ in range(max_attempts):
            stats["attempts"] = stats.get("attempts", 0) + 1
            g = self.groups[int(rng.choice(len(self.groups), p=sizes / sizes.sum()))]
            a, b = (int(x) for x in rng.choice(g, 2, replace=False))
            az = float(rng.uniform(0, 360))
            vp_a = (az, float(rng.uniform(*c.elevations)), 0.0)
            vp_b = ((az + float(rng.uniform(-c.max_azimuth_gap, c.max_azimuth_gap))) % 360.0,
                    float(rng.uniform(*c.elevations)), 0.0)
            light = random_light(int(rng.integers(2 ** 31))) if c.light == "random" else None
            mesh_a, va = self._render(a, vp_a, light)
            mesh_b, vb = self._render(b, vp_b, light)
            gt = correspondence_across(mesh_a, va, mesh_b, vb)
            if gt.matchability.sum() / max(int(va.mask.sum()), 1) < c.min_matchable:
                stats["low_matchability"] = stats.get("low_matchability", 0) + 1
                continue
            return {"src": va.rgb, "tgt": vb.rgb, "mask_src": va.mask.astype(np.uint8),
                    "mask_tgt": vb.mask.astype(np.uint8), "flow": gt.flow.astype(np.float16),
                    "match": (gt.matchability > 0.5).astype(np.uint8), "model_src": a,
                    "model_tgt": b, "viewpoint_src": np.float32(vp_a),
                    "viewpoint_tgt": np.float32(vp_b)}
        raise DataError(f"no valid render pair in {max_attempts} candidates (rejections: "
                        f"{stats}); lower min_matchable or max_azimuth_gap")

    def make_shard(self, j: int, count: int) -> tuple[dict, dict]:
        rng = np.random.default_rng([int(self.cfg.seed), int(j)])
        stats: dict = {}
        items = [self.draw(rng, stats) for _ in range(count)]
        arrays = {k: np.stack([np.asarray(it[k]) for it in items]) for k in items[0]}
        for k in ("model_src", "model_tgt"):
            arrays[k] = arrays[k].astype(np.int64)
        return arrays, stats


_GEN: dict = {}


def _shard_task(args):
    out, j, count = args
    g = _GEN.get(out)
    if g is None:
        _GEN.clear()
        g = _GEN[out] = _PairGenerator(Path(out))
    arrays, stats = g.make_shard(j, count)
    sha = _save_st(_pairs_path(Path(out), j), arrays, {"shard": j, "count": count})
    atomic_write_bytes(_pairs_path(Path(out), j).with_suffix(".sha256"), sha.encode())
    return j, count, sha, stats


def _shard_done(out: Path, j: int) -> bool:
    p = _pairs_path(out, j)
    h = p.with_suffix(".sha256")
    return p.is_file() and h.is_file() and file_sha256(p) == h.read_text().strip()


def prepare_render_pairs(cad_dirs, out, num_pairs: int, config: PairConfig | None = None,
                         workers: int = 1, progress: bool = True, log=print,
                         allow_evaluation_models: bool = False) -> dict:
    """Write ``num_pairs`` render pairs across instances into ``out`` (see the module doc);
    resumable: run again to finish after a kill (complete shards whose SHA-256 matches their
    record are kept). Returns a summary (counts, groups, rejections, time).

    The category's evaluation-only CAD models (``cyclecorr.data.holdout``) are refused, as by
    ``prepare``, unless ``allow_evaluation_models``."""
    from tqdm import tqdm

    cfg = config or PairConfig()
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be ≥ 1, got {num_pairs}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    models = collect_models(cad_dirs, cfg.category)
    check_training_models(models, cfg.category, allow_evaluation_models, log)
    groups = topology_groups(models, log)
    if not groups:
        raise DataError(f"{[str(d) for d in cad_dirs]}: no two models share a topology (render "
                        "pairs across instances need models with the same vertices and faces, "
                        "such as the gsnet cars)")
    plan = json.loads(json.dumps({"format": FORMAT, "version": VERSION, "config": asdict(cfg),
                                  "models": models, "groups": groups}))
    plan_path = out / "plan.json"
    if plan_path.exists() and json.loads(plan_path.read_text()) != plan:
        raise DataError(f"{plan_path}: {out} holds render pairs with other parameters or models; "
                        "use another --out")
    atomic_write_bytes(plan_path, json.dumps(plan, indent=1).encode())
    log(f"render pairs: {sum(len(g) for g in groups)} models in {len(groups)} topology "
        f"group(s) of {len(models)}")
    counts = _shard_counts(int(num_pairs), cfg.shard_size)
    todo = [j for j in range(len(counts)) if not _shard_done(out, j)]
    stats: dict = {}
    bar = tqdm(total=sum(counts[j] for j in todo), desc="render pairs", unit="pair",
               disable=not progress)
    tasks = [(str(out), j, counts[j]) for j in todo]
    results = []
    if workers <= 1:
        for t in tasks:
            results.append(_shard_task(t))
            bar.update(t[2])
    else:
        from concurrent.futures import as_completed

        from cyclecorr.data.retrieval import spawn_pool

        with spawn_pool(min(workers, len(tasks) or 1)) as pool:
            for fut in as_completed([pool.submit(_shard_task, t) for t in tasks]):
                results.append(fut.result())
                bar.update(results[-1][1])
    bar.close()
    for _, _, _, st in results:
        for k, v in st.items():
            stats[k] = stats.get(k, 0) + v
    shards = [{"file": str(_pairs_path(out, j).relative_to(out)), "count": c,
               "sha256": _pairs_path(out, j).with_suffix(".sha256").read_text().strip()}
              for j, c in enumerate(counts)]
    atomic_write_bytes(out / "manifest.json", json.dumps({**plan, "shards": shards},
                                                         indent=1).encode())
    wall = time.perf_counter() - t0
    log(f"render pairs: {num_pairs} pairs in {len(counts)} shards ({len(todo)} made now) in "
        f"{wall:.1f} s; rejected candidates: {stats}")
    return {"out": str(out), "pairs": int(num_pairs), "made": sum(counts[j] for j in todo),
            "groups": [len(g) for g in groups], "rejections": stats, "wall_s": wall}


class RenderPairDataset(torch.utils.data.Dataset):
    """The pairs of a folder written by :func:`prepare_render_pairs`: item ``i`` is
    ``{"pair_src", "pair_tgt"}`` (3, S, S) float in [0, 1], ``"flow_pair"`` (2, S, S) (src → tgt,
    pixels) and ``"match_pair"`` (1, S, S) in {0, 1} (:data:`PAIR_KEYS`). ``verify``: check
    every shard against the manifest's SHA-256 first."""

    def __init__(self, folder, verify: bool = False):
        self.folder = Path(folder)
        p = self.folder / "manifest.json"
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no render-pair manifest (run `cyclecorr prepare-pairs "
                                    f"--out {self.folder}` first)")
        man = read_format_json(p, FORMAT, "render-pair manifest", DataError)
        self.shards = man["shards"]
        if verify:
            for s in self.shards:
                if file_sha256(self.folder / s["file"]) != s["sha256"]:
                    raise DataError(f"{self.folder / s['file']}: sha256 differs from {p} "
                                    "(corrupt or modified)")
        self.first = np.cumsum([0] + [s["count"] for s in self.shards])
        self._cache: dict = {}

    def __len__(self) -> int:
        return int(self.first[-1])

    def __getstate__(self):  # loaded shards stay per process
        return {**self.__dict__, "_cache": {}}

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"render pair {i} out of range ({len(self)} pairs)")
        j = int(np.searchsorted(self.first, i, side="right") - 1)
        if j not in self._cache:
            self._cache.clear()
            self._cache[j] = _load_st(self.folder / self.shards[j]["file"])[0]
        t, k = self._cache[j], i - int(self.first[j])
        img = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0).permute(2, 0, 1)  # noqa: E731
        return {"pair_src": img(t["src"][k]), "pair_tgt": img(t["tgt"][k]),
                "flow_pair": torch.from_numpy(t["flow"][k].astype(np.float32)),
                "match_pair": torch.from_numpy(t["match"][k].astype(np.float32))[None]}
