"""Benchmark of cyclecorr.render: views/s and ground-truth pairs/s at 128×128, and the parallel
speed-up with 2 worker processes.

Mesh: the PASCAL3D+ ``chair07`` CAD model (57,884 triangles, the ~50k-face case) from the shared
data, or, without shared data, a 51,200-face sphere. Targets on the 2-core dev CPU:
≥ 50 views/s and ≥ 30 ground-truth pairs/s single-process.

    PYOPENGL_PLATFORM=osmesa python bench/render.py [--seconds 5] [--backend raster|gl]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

import numpy as np

from cyclecorr._paths import shared_data_dir
from cyclecorr.render import Mesh, Renderer, Viewpoint, load_mesh, synthetic_correspondence

TARGET_VIEWS = 50.0
TARGET_PAIRS = 30.0


def bench_mesh() -> tuple[Mesh, str]:
    root = shared_data_dir()
    if root is not None and (root / "cad/pascal3d/chair07.json").is_file():
        return load_mesh(root / "cad/pascal3d/chair07.json"), "pascal3d chair07"
    import trimesh

    s = trimesh.creation.uv_sphere(count=[160, 160])
    return Mesh.from_arrays(s.vertices, s.faces, normalize=True), "uv sphere"


def viewpoints(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [Viewpoint(float(rng.uniform(0, 360)), float(rng.uniform(0, 40)),
                      float(rng.uniform(-10, 10)), float(rng.uniform(2.0, 3.5)))
            for _ in range(n)]


def rate(fn, items, seconds: float) -> float:
    fn(items[0])  # warm-up (context, upload, JIT)
    t0 = time.perf_counter()
    n = 0
    while True:
        fn(items[n % len(items)])
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n / dt


_WORK = {}


def _worker_init(backend):
    _WORK["mesh"], _ = bench_mesh()
    _WORK["r"] = Renderer(backend=backend)


def _worker_views(vps):
    r = _WORK["r"]
    for vp in vps:
        r.render(_WORK["mesh"], vp, 128)
    return len(vps)


def parallel_rate(backend: str, workers: int, n: int) -> float:
    vps = viewpoints(n, seed=1)
    chunks = [vps[i::workers * 4] for i in range(workers * 4)]
    with mp.get_context("fork").Pool(workers, initializer=_worker_init,
                                     initargs=(backend,)) as pool:
        pool.map(_worker_views, [vps[:2]] * workers)  # warm-up each worker
        t0 = time.perf_counter()
        done = sum(pool.map(_worker_views, chunks))
        return done / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="time per measurement")
    ap.add_argument("--backend", default="raster", choices=["gl", "raster"],
                    help="backend measured in full (default: raster, the library default)")
    ap.add_argument("--no-gl", action="store_true",
                    help="skip the short secondary measurement of the gl backend")
    ap.add_argument("--no-parallel", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    mesh, name = bench_mesh()
    print(f"mesh: {name}, {len(mesh.faces)} faces; backend {args.backend}; "
          f"PYOPENGL_PLATFORM={os.environ.get('PYOPENGL_PLATFORM')}; cpus {os.cpu_count()}")
    vps = viewpoints(64)
    pairs = list(zip(vps[::2], vps[1::2]))
    if not args.no_parallel:
        # measured first: workers must be forked before this process makes a GL context
        n_par = max(int(args.seconds * (60 if args.backend == "raster" else 15)), 20)
        t0 = time.perf_counter()
        par1 = parallel_rate(args.backend, 1, n_par)
        par2 = parallel_rate(args.backend, 2, n_par)
        print(f"parallel: 1 worker {par1:.1f} views/s, 2 workers {par2:.1f} views/s, "
              f"speed-up {par2 / par1:.2f}x  ({time.perf_counter() - t0:.0f} s)")
    r = Renderer(backend=args.backend)
    v_rgb = rate(lambda vp: r.render(mesh, vp, 128), vps, args.seconds)
    v_geo = rate(lambda vp: r.render(mesh, vp, 128, rgb=False), vps, args.seconds)
    p_rgb = rate(lambda ab: synthetic_correspondence(mesh, ab[0], ab[1], 128, renderer=r),
                 pairs, args.seconds)
    p_geo = rate(lambda ab: synthetic_correspondence(mesh, ab[0], ab[1], 128, rgb=False,
                                                     renderer=r), pairs, args.seconds)
    print(f"views/s (lit RGB + mask + depth + points): {v_rgb:7.1f}   "
          f"target {TARGET_VIEWS:.0f}: ratio {v_rgb / TARGET_VIEWS:.2f}")
    print(f"views/s (geometry only, rgb=False):         {v_geo:7.1f}")
    print(f"GT pairs/s (two lit views + flow):          {p_rgb:7.1f}   "
          f"target {TARGET_PAIRS:.0f}: ratio {p_rgb / TARGET_PAIRS:.2f}")
    print(f"GT pairs/s (geometry only, rgb=False):      {p_geo:7.1f}")
    r_aa = Renderer(backend=args.backend, antialias=2)
    if args.backend == "raster":
        v_aa = rate(lambda vp: r_aa.render(mesh, vp, 128), vps, args.seconds)
        print(f"views/s (raster, antialias=2):              {v_aa:7.1f}")
    if args.backend != "gl" and not args.no_gl:
        try:
            g = Renderer(backend="gl")
            g_v = rate(lambda vp: g.render(mesh, vp, 128), vps, args.seconds / 2)
            g_p = rate(lambda ab: synthetic_correspondence(mesh, ab[0], ab[1], 128, renderer=g),
                       pairs, args.seconds / 2)
            print(f"gl backend (OSMesa/EGL): views/s {g_v:.1f}, GT pairs/s {g_p:.1f}")
        except Exception as e:  # no GL platform here
            print(f"gl backend skipped: {type(e).__name__}: {e}")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")


if __name__ == "__main__":
    main()
