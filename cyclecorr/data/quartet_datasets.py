"""The torch datasets that read quartets (and real pairs) from a folder that
:func:`cyclecorr.data.quartets.prepare_quartets` wrote (``cyclecorr prepare``; layout in
:mod:`cyclecorr.data.quartet_files`).

- :class:`QuartetDataset`: the prepared quartets, ``ds[i]`` → a dict of tensors;
- :class:`OnTheFlyQuartetDataset`: quartets rendered on access from a folder's real crops and
  retrieval (a preparation with ``--quartets 0``), same keys;
- :class:`PairDataset`: random pairs of real crops (stage 1).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from torch.utils.data import Dataset

from cyclecorr.data.io import DataError
from cyclecorr.data.quartet_files import (
    MANIFEST,
    PLAN_FILE,
    REAL_FILE,
    RETRIEVAL_FILE,
    read_manifest,
    verify_quartets,
)
from cyclecorr.data.quartets import collect_real, quartet_generator
from cyclecorr.data.samples import crop_sample

__all__ = ["QuartetDataset", "OnTheFlyQuartetDataset", "PairDataset"]


def _to_img(a: np.ndarray):
    """H×W×3 uint8 → (3, H, W) float32 tensor in [0, 1] (numpy arithmetic: no torch intra-op
    threads, which are very slow on a busy CPU for tensors this small)."""
    out = np.empty((3,) + a.shape[:2], np.float32)
    np.multiply(np.moveaxis(np.asarray(a), 2, 0), np.float32(1.0 / 255.0), out=out)
    return torch.from_numpy(out)


def _f32(a, add_channel: bool = False):
    out = np.array(a, dtype=np.float32)
    return torch.from_numpy(out[None] if add_channel else out)


def _quartet_tensors(q: dict, r1: np.ndarray, r2: np.ndarray) -> dict:
    return {
        "s1": _to_img(q["s1"]), "s2": _to_img(q["s2"]), "r1": _to_img(r1), "r2": _to_img(r2),
        "flow_s1s2": _f32(q["flow_s1s2"]),
        "match_s1s2": _f32(q["match_s1s2"], True),
        "mask_s1": _f32(q["mask_s1"], True),
        "mask_s2": _f32(q["mask_s2"], True),
        "viewpoint_s1": _f32(q["viewpoint_s1"]),
        "viewpoint_s2": _f32(q["viewpoint_s2"]),
    }


class QuartetDataset(Dataset):
    """Read back a prepared folder: ``ds[i]`` → dict of tensors.

    Keys: ``s1``, ``s2``, ``r1``, ``r2`` (3×H×W float in [0, 1]); ``flow_s1s2`` (2×H×W float32,
    channel 0 = x, pixels, ``q − p``); ``match_s1s2``, ``mask_s1``, ``mask_s2`` (1×H×W float32 in
    {0, 1}); ``viewpoint_s1``, ``viewpoint_s2`` (3,) float32 (azimuth, elevation, theta in
    degrees); plus ``index``, ``r1_index``, ``r2_index``, ``model_index`` (ints). Files are read
    through memory maps opened lazily in each process (safe with DataLoader workers).

    Args:
        folder: a folder written by :func:`prepare_quartets`.
        verify: check every file's sha256 against the manifest first.
    """

    def __init__(self, folder, verify: bool = False):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        if verify:
            verify_quartets(self.folder)
        self.shards = self.manifest["shards"]
        self.starts = np.array([s["first"] for s in self.shards] + [self.manifest["num_quartets"]])
        self.models = self.manifest["models"]
        self._handles: dict = {}
        self._pid = None

    def __len__(self) -> int:
        return int(self.manifest["num_quartets"])

    def __getstate__(self):  # open files are per process (DataLoader workers, spawn)
        d = dict(self.__dict__)
        d["_handles"], d["_pid"] = {}, None
        return d

    def _open(self, rel: str):
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        h = self._handles.get(rel)
        if h is None:
            p = self.folder / rel
            if not p.exists():
                raise DataError(f"{p}: listed in {self.folder / MANIFEST} but missing")
            try:
                h = self._handles[rel] = safe_open(str(p), framework="np")
            except Exception as e:
                raise DataError(f"{p}: unreadable shard ({e})") from e
        return h

    def raw(self, i: int) -> dict:
        """Quartet ``i`` as stored (numpy, uint8/float16) plus the real crops r1, r2."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"quartet index {i} out of range for {n}")
        i = i % n
        j = int(np.searchsorted(self.starts, i, side="right") - 1)
        local = i - int(self.starts[j])
        h = self._open(self.shards[j]["file"])
        q = {k: h.get_slice(k)[local:local + 1][0] for k in h.keys()}
        real = self._open(self.manifest["files"]["real_crops"]["file"])
        q["r1"] = real.get_slice("images")[int(q["r1_index"]):int(q["r1_index"]) + 1][0]
        q["r2"] = real.get_slice("images")[int(q["r2_index"]):int(q["r2_index"]) + 1][0]
        return q

    def __getitem__(self, i: int) -> dict:
        q = self.raw(i)
        out = _quartet_tensors(q, q["r1"], q["r2"])
        out.update(index=int(i), r1_index=int(q["r1_index"]), r2_index=int(q["r2_index"]),
                   model_index=int(q["model_index"]))
        return out


class OnTheFlyQuartetDataset(Dataset):
    """Quartets rendered in ``__getitem__`` from a prepared folder's real crops and retrieval
    (``cyclecorr prepare --quartets 0`` is enough): same keys as :class:`QuartetDataset`.

    Quartet ``i`` is drawn from a generator seeded with ``(seed, 2**31 + i)`` under the same
    validity rule, so it is reproducible. The GL context is created lazily in each process
    (DataLoader workers render with their own); prefer ``multiprocessing_context="spawn"``
    if the parent process has rendered.
    """

    def __init__(self, folder, length: int = 10000, seed: int = 0):
        self.folder = Path(folder)
        for f in (PLAN_FILE, REAL_FILE, RETRIEVAL_FILE):
            if not (self.folder / f).exists():
                raise FileNotFoundError(f"{self.folder / f}: missing (run `cyclecorr prepare "
                                        f"--out {self.folder} --quartets 0` first)")
        self.length = int(length)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.length:
            raise IndexError(f"quartet index {i} out of range for {self.length}")
        g = quartet_generator(str(self.folder))
        rng = np.random.default_rng([self.seed, 2 ** 31 + int(i)])
        q = g.draw(rng, {})
        out = _quartet_tensors(q, g.images[q["r1_index"]], g.images[q["r2_index"]])
        out.update(index=int(i), r1_index=int(q["r1_index"]), r2_index=int(q["r2_index"]),
                   model_index=int(q["model_index"]))
        return out


class PairDataset(Dataset):
    """Random pairs of real crops for stage 1 (SIFT-flow imitation): ``{"src", "tgt"}``, each
    3×H×W float in [0, 1], plus ``src_index``/``tgt_index``.

    Args:
        source: a prepared folder (uses its ``real_crops.safetensors``), or a list of real-image
            folders (cropped on first access, see :func:`collect_real`).
        length: number of pairs (default: the number of crops).
        seed: pair ``i`` uses a generator seeded with ``(seed, i)`` (two distinct crops).
        size, category: crop size and category when ``source`` is a list of folders.
    """

    def __init__(self, source, length: int | None = None, seed: int = 0, size: int = 128,
                 category: str = "car"):
        self.seed = int(seed)
        self.size = int(size)
        self._images = None
        self._items = None
        if isinstance(source, (str, os.PathLike)) and (Path(source) / REAL_FILE).exists():
            self._path = Path(source) / REAL_FILE
            with safe_open(str(self._path), framework="np") as f:
                n = f.get_slice("images").get_shape()[0]
        else:
            dirs = [source] if isinstance(source, (str, os.PathLike)) else list(source)
            self._path = None
            self._items = [(ds, i) for _, ds in collect_real(dirs, category)
                           for i in range(len(ds))]
            n = len(self._items)
        if n < 2:
            raise DataError(f"{source}: PairDataset needs at least 2 real images, found {n}")
        self.n = n
        self.length = int(length) if length is not None else n

    def __len__(self) -> int:
        return self.length

    def crop(self, k: int) -> np.ndarray:
        """The ``k``-th real crop (H×W×3 uint8)."""
        if self._path is not None:
            if self._images is None:
                with safe_open(str(self._path), framework="np") as f:
                    self._images = f.get_tensor("images")
            return self._images[k]
        ds, i = self._items[k]
        return crop_sample(ds[i], self.size).image

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.length:
            raise IndexError(f"pair index {i} out of range for {self.length}")
        rng = np.random.default_rng([self.seed, int(i)])
        a = int(rng.integers(self.n))
        b = int(rng.integers(self.n - 1))
        b = b + 1 if b >= a else b
        return {"src": _to_img(self.crop(a)), "tgt": _to_img(self.crop(b)),
                "src_index": a, "tgt_index": b}
