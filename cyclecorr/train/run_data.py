"""A run's data: its training and validation quartets at the network's size, the stage-1 pairs
drawn from them, and the hash that names the data in every checkpoint (:func:`manifest_sha256`).

``data.quartets`` is a folder written by ``cyclecorr prepare`` (read by
:class:`cyclecorr.data.QuartetDataset`) or ``"synthetic"`` (:class:`cyclecorr.train.data.
SyntheticQuartets`); a fixed, seed-determined subset is held out for validation.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.distributed
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from cyclecorr._io import file_sha256
from cyclecorr.data.quartet_datasets import QuartetDataset
from cyclecorr.train.config import TrainConfig
from cyclecorr.train.data import SiftPairs, SyntheticQuartets, sample_stage1_pairs
from cyclecorr.train.process import DistInfo

__all__ = ["build_quartets", "build_stage1_pairs", "manifest_sha256", "ResizedQuartets",
           "RenderPairs", "PhotoPairs"]


def manifest_sha256(cfg: TrainConfig, dataset=None) -> str:
    """A hash identifying the training data (recorded in every checkpoint).

    Prefers the dataset's own ``manifest_sha256`` attribute; then a quartet folder's
    ``manifest.json``; in-memory quartets (a list) are hashed by content; synthetic data by the
    generator's parameters; any other folder by its file names and sizes.
    """
    for obj in (dataset, getattr(dataset, "dataset", None)):
        m = getattr(obj, "manifest_sha256", None)
        if m:
            return m() if callable(m) else str(m)
    for obj in (dataset, getattr(dataset, "dataset", None)):
        folder = getattr(obj, "folder", None)
        if folder is not None and (Path(folder) / "manifest.json").is_file():
            return file_sha256(Path(folder) / "manifest.json")
    if isinstance(dataset, (list, tuple)):  # in-memory quartets: hash their contents
        h = hashlib.sha256()
        for item in dataset:
            for k in sorted(item):
                v = item[k]
                h.update(k.encode())
                h.update(v.numpy().tobytes() if isinstance(v, torch.Tensor) else repr(v).encode())
        return h.hexdigest()
    if cfg.data.quartets == "synthetic":
        ident = json.dumps({"synthetic": cfg.data.synthetic_size + cfg.data.val_count,
                            "size": cfg.network().image_size, "seed": cfg.seed})
        return hashlib.sha256(ident.encode()).hexdigest()
    folder = Path(cfg.data.quartets)
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(f"{p.relative_to(folder)}:{p.stat().st_size}\n".encode())
    return h.hexdigest()


class ResizedQuartets(Dataset):
    """Resamples 128×128 quartets to the network's size (images: area; flows: scaled and
    resampled with the pixel-area convention; matchability: bilinear, threshold 0.5)."""

    def __init__(self, base, size: int):
        self.base, self.size = base, size

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        item = self.base[i]
        out = {}
        for k, v in item.items():
            if not isinstance(v, torch.Tensor) or v.dim() != 3 or v.shape[-1] == self.size:
                out[k] = v
                continue
            s = self.size / v.shape[-1]
            x = v.float()[None]
            if k.startswith("flow"):
                out[k] = F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                                       align_corners=False)[0] * s
            elif k.startswith("match"):
                out[k] = (F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                                        align_corners=False)[0] > 0.5).float()
            else:
                out[k] = F.interpolate(x, size=(self.size, self.size), mode="area")[0]
        return out


def build_quartets(cfg: TrainConfig) -> tuple[Dataset, Dataset, str]:
    """``(train_set, val_set, manifest_sha256)`` of quartet dicts at the network's size.

    The validation set is a fixed, seed-determined subset held out from training. A prepared
    folder's files are checked against the SHA-256 in its manifest first (``DataError`` naming a
    corrupt file).
    """
    S = cfg.network().image_size
    d = cfg.data
    if d.quartets == "synthetic":
        full = SyntheticQuartets(d.synthetic_size + d.val_count, size=S, seed=cfg.seed)
        n_val = d.val_count
        val = Subset(full, list(range(n_val)))
        trainset = Subset(full, list(range(n_val, len(full))))
        return trainset, val, manifest_sha256(cfg, full)
    folder = Path(d.quartets)
    if not folder.exists():
        raise FileNotFoundError(f"quartet folder not found: {folder} (write it with "
                                "`cyclecorr prepare`, or set data.quartets=synthetic)")
    # every file's SHA-256 against the manifest before training reads it: a corrupt shard is
    # named here instead of surfacing as a NaN loss (about 1 s per GB of quartets)
    full = QuartetDataset(folder, verify=True)
    n = len(full)
    if n < 2:
        raise ValueError(f"{folder}: {n} quartet(s); training needs at least 2")
    n_val = min(d.val_count, max(1, int(round(n * d.val_fraction))))
    g = torch.Generator().manual_seed(cfg.seed + 7919)
    perm = torch.randperm(n, generator=g).tolist()
    val_idx, train_idx = sorted(perm[:n_val]), sorted(perm[n_val:])
    ds = full if S == 128 else ResizedQuartets(full, S)
    return Subset(ds, train_idx), Subset(ds, val_idx), manifest_sha256(cfg, full)


class RenderPairs(Dataset):
    """Stage-1 pairs from renders with their ground truth (``data.stage1_targets="ground_truth"``):
    (s1, s2, flow_s1s2, valid = match_s1s2)."""

    def __init__(self, quartets):
        self.q = quartets

    def __len__(self):
        return len(self.q)

    def __getitem__(self, i):
        q = self.q[i]
        return {"src": q["s1"], "tgt": q["s2"], "flow": q["flow_s1s2"], "valid": q["match_s1s2"]}


class PhotoPairs(Dataset):
    """Stage-1 pairs of each training photo with itself (``data.stage1_targets="self_warp"``):
    item ``2i`` is quartet i's ``r1``, item ``2i + 1`` its ``r2``, as ``(src, tgt, flow = 0,
    valid = 1)``; the stage's augmentation re-frames and bends the two sides, the flow following
    exactly (:class:`cyclecorr.train.data.AugmentedDataset` with ``bend=True``)."""

    def __init__(self, quartets):
        self.q = quartets

    def __len__(self):
        return 2 * len(self.q)

    def __getitem__(self, i):
        img = self.q[i // 2]["r2" if i % 2 else "r1"]
        img = torch.as_tensor(img)
        return {"src": img, "tgt": img, "flow": torch.zeros_like(img[:2], dtype=torch.float32),
                "valid": torch.ones_like(img[:1], dtype=torch.float32)}


def build_stage1_pairs(cfg: TrainConfig, quartets, run_dir: Path, dist: DistInfo) -> Dataset:
    """The stage-1 training pairs (SIFT flow targets cached under the run or
    ``data.sift_cache``)."""
    if cfg.data.stage1_targets == "ground_truth":
        return RenderPairs(quartets)
    if cfg.data.stage1_targets == "self_warp":
        return PhotoPairs(quartets)
    pairs = sample_stage1_pairs(len(quartets), cfg.data.stage1_pairs, cfg.seed,
                                cfg.data.stage1_pair_source)
    cache = Path(cfg.data.sift_cache) if cfg.data.sift_cache else run_dir / "siftflow"
    if dist.world > 1:
        if dist.main:  # rank 0 computes, the others wait and then read the cache
            SiftPairs(quartets, pairs, cache, cfg.data.sift_workers, cfg.logging.progress)
        torch.distributed.barrier()
    return SiftPairs(quartets, pairs, cache, cfg.data.sift_workers,
                     cfg.logging.progress and dist.main)
