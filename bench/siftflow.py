"""Benchmark of cyclecorr.siftflow: seconds per 128×128 and 256×256 pair, 1 process and 2 workers.

Run from the repository root: ``.venv/bin/python bench/siftflow.py [--pairs N]``. Uses real TSS
images from the shared data where present (random crops), otherwise smooth random textures. Prints
the measured wall-clock seconds per pair (and the CPU seconds, which depend less on other jobs
on a shared machine) and the ratio to the target (≤ 1 s per 128×128 pair, single process).
The numba kernels are compiled (or loaded from cache) before timing.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def _images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    from PIL import Image
    from scipy import ndimage

    from cyclecorr._paths import shared_data_dir

    rs = np.random.RandomState(seed)
    root = shared_data_dir()
    files = sorted((root / "real" / "tss").glob("*/*/image*.png")) if root else []
    out = []
    for i in range(n):
        if files:
            im = Image.open(files[i % len(files)]).convert("RGB")
            s = size * 1.3 / min(im.size)
            im = im.resize((max(size, round(im.size[0] * s)), max(size, round(im.size[1] * s))))
            arr = np.asarray(im)
            y = rs.randint(0, arr.shape[0] - size + 1)
            x = rs.randint(0, arr.shape[1] - size + 1)
            out.append(np.ascontiguousarray(arr[y:y + size, x:x + size]))
        else:
            t = ndimage.gaussian_filter(rs.rand(size, size, 3), (2, 2, 0))
            out.append((255 * (t - t.min()) / (t.max() - t.min())).astype(np.uint8))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=10, help="pairs per measurement (default 10)")
    args = ap.parse_args()
    from cyclecorr.siftflow import compute_sift_flow_batch, sift_flow

    warm = _images(2, 32)
    sift_flow(warm[0], warm[1])  # compile / load the numba kernels
    print(f"CPU cores visible: {os.cpu_count()}, load average before: "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} (other jobs slow these numbers down)")
    results = {}
    for size in (128, 256):
        imgs = _images(2 * args.pairs, size, seed=size)
        pairs = [(imgs[2 * i], imgs[2 * i + 1]) for i in range(args.pairs)]
        t0, c0 = time.perf_counter(), time.process_time()
        for a, b in pairs:
            sift_flow(a, b)
        single = (time.perf_counter() - t0) / len(pairs)
        cpu = (time.process_time() - c0) / len(pairs)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            compute_sift_flow_batch(pairs, tmp, workers=2, size=None, progress=False)
            two = (time.perf_counter() - t0) / len(pairs)
        results[size] = (single, two)
        print(f"{size}x{size}: single process {single:.3f} s/pair (CPU time {cpu:.3f} s/pair), "
              f"2 workers {two:.3f} s/pair (throughput ×{single / two:.2f})")
    single128 = results[128][0]
    print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"target ≤ 1 s per 128x128 pair (single process): measured {single128:.3f} s, "
          f"ratio {single128 / 1.0:.2f} of the budget -> {'OK' if single128 <= 1.0 else 'MISSED'}")


if __name__ == "__main__":
    main()
