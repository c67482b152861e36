"""Batch SIFT flow for stage-1 targets: cached on disk, resumable, parallel, with a progress bar.

Each pair is written to ``out_dir/<key>.npz`` (written to a temporary file, then ``os.replace``d, so
an interrupted run never leaves a half-written result); a pair whose file already exists is skipped,
so re-running the same call resumes. ``<key>`` is a hash of the pair's identity (the two absolute
paths, or the bytes of in-memory arrays), the resize ``size`` and the :class:`SiftFlowParams`, so a
change of any of them computes a new file instead of reusing a stale one. ``out_dir/index.json``
lists every pair of the call (``a``, ``b``, ``key``, ``file``), written atomically at the end.

Each ``.npz`` holds ``flow`` ``(2, H, W)`` float32 (flow_ab, cyclecorr's conventions), ``cost``
``(H, W)`` float32, ``energy`` (float64, per BP iteration, coarsest level first), ``shape_a`` and
``shape_b`` (the images' sizes as given, before any resize), ``size`` (−1 where none) and ``params``
(JSON). Read it back with :func:`load_sift_flow`.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from cyclecorr._io import atomic_path, atomic_write_bytes
from cyclecorr._runtime import exit_with_parent
from cyclecorr.data.io import read_image as load_image  # one image reader for the package
from cyclecorr.siftflow.core import SiftFlowParams, SiftFlowResult, sift_flow

__all__ = ["compute_sift_flow_batch", "load_sift_flow", "pair_key", "load_image",
           "sift_flow_tensors"]

ImageLike = str | os.PathLike | np.ndarray | Callable[[], np.ndarray]


def _materialise(item: ImageLike, size: int | None, what: str) -> tuple[np.ndarray, tuple]:
    if isinstance(item, (str, os.PathLike)):
        img = load_image(item)
    elif callable(item):
        img = np.asarray(item())
    else:
        img = np.asarray(item)
    if img.ndim < 2 or img.size == 0:
        raise ValueError(f"{what}: not an image (shape {img.shape})")
    shape = tuple(int(s) for s in img.shape[:2])
    if size is not None and shape != (size, size):
        if img.dtype != np.uint8:
            if not np.all(np.isfinite(img)):
                raise ValueError(f"{what}: image contains NaN or infinite values")
            img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
        img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
    return img, shape


def _identity(item: ImageLike, index: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return str(Path(item).resolve())
    if callable(item):
        name = getattr(item, "__qualname__", type(item).__name__)
        return f"callable:{name}:{index}"
    arr = np.ascontiguousarray(np.asarray(item))
    return "array:" + hashlib.sha1(arr.tobytes() + str(arr.shape).encode()).hexdigest()


def pair_key(a: ImageLike, b: ImageLike, size: int | None = 128,
             params: SiftFlowParams | None = None, index: int = 0) -> str:
    """Cache key of a pair: sha1 of both identities, ``size`` and the parameters (20 hex digits).

    Paths are identified by their absolute path, arrays by their bytes, callables by their
    qualified name and ``index`` (their position in the list: keep the list order stable).
    """
    params = params or SiftFlowParams()
    ident = json.dumps([_identity(a, index), _identity(b, index), size, params.to_dict()],
                       sort_keys=True, default=str)
    return hashlib.sha1(ident.encode()).hexdigest()[:20]


def _save_atomic(path: Path, **arrays) -> None:
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def load_sift_flow(path) -> SiftFlowResult:
    """Load one cached pair written by :func:`compute_sift_flow_batch` (raises naming the file)."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            flow = z["flow"].astype(np.float32)
            cost = z["cost"].astype(np.float32)
            energy = z["energy"].tolist() if "energy" in z else []
    except FileNotFoundError:
        raise
    except Exception as e:  # zipfile.BadZipFile, KeyError, ValueError …
        raise ValueError(f"malformed SIFT flow file {p}: {e}") from e
    if flow.ndim != 3 or flow.shape[0] != 2 or cost.shape != flow.shape[1:]:
        raise ValueError(f"malformed SIFT flow file {p}: flow {flow.shape}, cost {cost.shape}")
    return SiftFlowResult(flow=flow, cost=cost, energy=energy)


# The pair list is handed to worker processes by inheritance (fork) or by pickling (spawn).
_JOBS: list = []


def _work(job) -> str:
    a, b, out_path, size, params, index = job
    return _compute_one(a, b, Path(out_path), size, params, index)


def _work_index(i: int) -> str:
    return _work(_JOBS[i])


def _compute_one(a, b, out_path: Path, size, params, index) -> str:
    if out_path.exists():
        return str(out_path)
    img_a, shape_a = _materialise(a, size, f"pair {index} image a ({_identity(a, index)})")
    img_b, shape_b = _materialise(b, size, f"pair {index} image b ({_identity(b, index)})")
    try:
        res = sift_flow(img_a, img_b, params)
    except ValueError as e:
        raise ValueError(f"pair {index} ({_identity(a, index)}, {_identity(b, index)}): {e}") \
            from e
    _save_atomic(out_path, flow=res.flow, cost=res.cost,
                 energy=np.asarray(res.energy, np.float64),
                 shape_a=np.asarray(shape_a), shape_b=np.asarray(shape_b),
                 size=np.asarray(-1 if size is None else size),
                 params=np.asarray(json.dumps(params.to_dict())))
    return str(out_path)


def compute_sift_flow_batch(pairs: Sequence[tuple[ImageLike, ImageLike]], out_dir,
                            workers: int = 2, size: int | None = 128,
                            params: SiftFlowParams | None = None, progress: bool = True,
                            ) -> list[Path]:
    """Compute SIFT flow for many pairs, one cached ``.npz`` per pair (module docstring).

    - ``pairs``: ``(a, b)`` items; each of a, b is an image path, a numpy image (``H×W×3`` uint8 or
      float in [0, 1]) or a zero-argument callable returning one.
    - ``out_dir``: output folder (created); finished pairs already there are skipped (resume).
    - ``workers``: processes (1 = in this process). With several workers on Linux the pair list
      is inherited by forked workers (callables and arrays need not be picklable); elsewhere
      (spawn) they must be picklable.
    - ``size``: both images are resized to ``size×size`` first (bilinear); ``None`` keeps them.
    - ``params``: :class:`SiftFlowParams` (published defaults).

    Returns the output paths in the order of ``pairs``. A bad pair (missing or corrupt image, NaN)
    raises an error naming it; the pairs finished before stay cached.
    """
    params = params or SiftFlowParams()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if workers < 1:
        raise ValueError(f"workers must be ≥ 1, got {workers}")
    if size is not None and size < 8:
        raise ValueError(f"size must be ≥ 8 or None, got {size}")
    jobs, paths, index = [], [], []
    for i, pair in enumerate(pairs):
        if len(pair) != 2:
            raise ValueError(f"pair {i}: expected (a, b), got {len(pair)} items")
        a, b = pair
        key = pair_key(a, b, size, params, index=i)
        p = out / f"{key}.npz"
        paths.append(p)
        index.append({"index": i, "a": _identity(a, i), "b": _identity(b, i), "key": key,
                      "file": p.name})
        if not p.exists():
            jobs.append((a, b, str(p), size, params, i))
    bar = tqdm(total=len(paths), initial=len(paths) - len(jobs), desc="SIFT flow",
               unit="pair", disable=not progress)
    try:
        if workers == 1 or len(jobs) <= 1:
            for job in jobs:
                _work(job)
                bar.update(1)
        else:
            global _JOBS
            use_fork = sys.platform.startswith("linux")
            ctx = mp.get_context("fork" if use_fork else "spawn")
            n = min(workers, len(jobs))
            if use_fork:  # compile / load the numba kernels once, forked workers inherit them
                _warm = np.random.RandomState(0).randint(0, 255, (16, 16, 3)).astype(np.uint8)
                sift_flow(_warm, _warm[::-1].copy(), params)
                _JOBS = jobs
                try:
                    with ctx.Pool(n, initializer=_default_signals,
                                 initargs=(os.getpid(),)) as pool:
                        for _ in pool.imap_unordered(_work_index, range(len(jobs))):
                            bar.update(1)
                finally:
                    _JOBS = []
            else:
                with ctx.Pool(n, initializer=_default_signals,
                                 initargs=(os.getpid(),)) as pool:
                    for _ in pool.imap_unordered(_work, jobs):
                        bar.update(1)
    finally:
        bar.close()
    _write_index(out / "index.json", index, size, params)
    return paths


def _default_signals(parent_pid: int | None = None) -> None:
    """Pool initializer: restore the default SIGTERM/SIGINT handlers in forked workers, and end
    the worker when ``parent_pid`` dies (:func:`cyclecorr._runtime.exit_with_parent`).

    A caller (the training loop) may have installed a graceful-stop handler for SIGTERM; a forked
    worker inherits it, swallows the pool's terminate() and the parent's join() then waits forever.
    """
    if parent_pid is not None:
        exit_with_parent(parent_pid)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _write_index(path: Path, entries, size, params) -> None:
    data = {"size": size, "params": params.to_dict(), "pairs": entries}
    atomic_write_bytes(path, json.dumps(data, indent=1).encode())


def sift_flow_tensors(images_a, images_b, params: SiftFlowParams | None = None, init_flow=None,
                      init_level: int = 2, init_window: int = 4, stop_level: int = 0,
                      threads: int | None = None):
    """SIFT flow for a batch of network-format images: ``(B, 3, H, W)`` float in [0, 1] → flows.

    Returns ``(flow_ab, cost)``: torch tensors ``(B, 2, H, W)`` and ``(B, H, W)`` float32 on the
    inputs' device (numpy inputs give numpy outputs). Computed pair by pair in this process; use
    :func:`compute_sift_flow_batch` for cached, parallel computation of many pairs.
    ``init_flow`` ``(B, 2, H, W)`` (e.g. a network's flow) makes it a guided SIFT flow searched
    around that flow (``init_level``, ``init_window``, ``stop_level``:
    :func:`~cyclecorr.siftflow.sift_flow`). ``threads``: pairs computed at once in threads of
    this process (default: PyTorch's thread count; the belief propagation's kernels release the
    GIL); the result does not depend on it.
    """
    is_torch = hasattr(images_a, "detach")
    a = images_a.detach().cpu().numpy() if is_torch else np.asarray(images_a)
    b = images_b.detach().cpu().numpy() if hasattr(images_b, "detach") else np.asarray(images_b)
    if a.ndim != 4 or a.shape != b.shape or a.shape[1] not in (1, 3):
        raise ValueError(f"expected two (B, 3, H, W) batches of equal shape, got {a.shape} and "
                         f"{b.shape}")
    if init_flow is not None:
        init_flow = (init_flow.detach().float().cpu().numpy() if hasattr(init_flow, "detach")
                     else np.asarray(init_flow))
        if init_flow.shape != (a.shape[0], 2, *a.shape[2:]):
            raise ValueError(f"init_flow must have shape {(a.shape[0], 2, *a.shape[2:])}, got "
                             f"{init_flow.shape}")
    threads = torch.get_num_threads() if threads is None else int(threads)
    if threads < 1:
        raise ValueError(f"threads must be ≥ 1, got {threads}")

    def one(i):
        return sift_flow(np.moveaxis(a[i], 0, 2), np.moveaxis(b[i], 0, 2), params,
                         init_flow=None if init_flow is None else init_flow[i],
                         init_level=init_level, init_window=init_window, stop_level=stop_level)

    n = a.shape[0]
    if threads == 1 or n < 2:
        results = [one(i) for i in range(n)]
    else:
        with ThreadPoolExecutor(min(threads, n)) as pool:
            results = list(pool.map(one, range(n)))
    flow = np.stack([r.flow for r in results])
    cost = np.stack([r.cost for r in results])
    if is_torch:
        dev = images_a.device
        return torch.from_numpy(flow).to(dev), torch.from_numpy(cost).to(dev)
    return flow, cost
