"""Benchmark of `cyclecorr prepare`: quartets/s with 1 and 2 workers, and where the time goes.

    PYOPENGL_PLATFORM=osmesa .venv/bin/python bench/prepare.py [--quartets 96] [--workers 1 2]

Uses the shared data (real/voc2007/car, cad/car/gsnet + cad/pascal3d cars). Prints:
- preparation stages (once): real-crop I/O + crop, render bank (render vs HOG per view), HOG of
  the real crops;
- retrieval accuracy: leave-one-model-out viewpoint recovery on renders at random off-grid
  viewpoints (azimuth within one grid step), and agreement of the unconstrained estimate with
  the VOC pose tags of the real crops;
- per worker count: quartets/s (wall clock, spawn start-up included), and the share of worker
  time spent rendering, computing the ground truth, and writing shards (I/O).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    from cyclecorr._paths import shared_data_dir
    from cyclecorr.data.quartet_files import PLAN_FILE, REAL_FILE, RETRIEVAL_FILE
    from cyclecorr.data.quartets import QuartetConfig, collect_models, prepare_quartets
    from cyclecorr.data.retrieval import get_mesh, hog_descriptor, render_bank_views, viewpoint_grid

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quartets", type=int, default=1024)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--real-limit", type=int, default=0,
                    help="use only the first N real crops (0: all)")
    ap.add_argument("--bank-cache", default=None,
                    help="render-bank cache (default: the user cache; built once, ~2 min)")
    args = ap.parse_args()

    data = shared_data_dir()
    if data is None:
        print("SKIP: shared data not found (set CYCLECORR_DATA)")
        return 0
    real = [str(data / "real" / "voc2007" / "car")]
    cad = [str(data / "cad" / "car" / "gsnet"), str(data / "cad" / "pascal3d")]
    work = Path(args.out or tempfile.mkdtemp(prefix="cyclecorr-bench-"))
    if args.real_limit > 0:  # the first N crops of the folder, linked into the work folder
        sub = work / "real"
        sub.mkdir(parents=True, exist_ok=True)
        for p in sorted(Path(real[0]).glob("*.jpg"))[:args.real_limit]:
            if not (sub / p.name).exists():
                (sub / p.name).symlink_to(p)
        real = [str(sub)]
    cfg = QuartetConfig(shard_size=args.shard_size)
    quiet = dict(progress=False, log=lambda *_: None, bank_cache=args.bank_cache)

    # -- per-view costs of the bank: render vs HOG ----------------------------------------
    models = collect_models(cad, cfg.category)
    grid = viewpoint_grid(cfg.azimuth_step, cfg.elevations)
    get_mesh(models[0])
    render_bank_views(get_mesh(models[0]), grid[:2])  # GL start-up
    t0 = time.perf_counter()
    rgbs = []
    for m in models[:3]:
        rgbs += render_bank_views(get_mesh(m), grid)
    t_r = (time.perf_counter() - t0) / len(rgbs)
    t0 = time.perf_counter()
    for im in rgbs:
        hog_descriptor(im)
    t_h = (time.perf_counter() - t0) / len(rgbs)
    print(f"bank view: render {1e3 * t_r:.1f} ms, HOG {1e3 * t_h:.1f} ms "
          f"(render {100 * t_r / (t_r + t_h):.0f}%, HOG {100 * t_h / (t_r + t_h):.0f}%); "
          f"full bank = {len(models)} models × {len(grid)} views")

    # -- preparation stages (real crops, bank, retrieval) -----------------------------------
    base = work / "base"
    t0 = time.perf_counter()
    s = prepare_quartets(real, cad, base, 0, cfg, workers=max(args.workers), **quiet)
    t_prep = time.perf_counter() - t0
    rt = s.get("retrieval_timing") or {}
    print(f"preparation: {s['real_crops']} real crops ({s['excluded']} excluded as near-duplicates "
          f"of evaluation images; reading, screening and cropping {s['real_s']:.1f} s), "
          f"{s['models']} models, {t_prep:.1f} s total "
          f"(bank {rt.get('bank_s', 0):.1f} s [0 if cached], HOG of real crops "
          f"{rt.get('hog_s', 0):.1f} s, rest = real-image I/O + crop)")

    # -- retrieval accuracy -------------------------------------------------------------------
    import numpy as np

    from cyclecorr.data.quartets import _load_st
    from cyclecorr.data.retrieval import (
        POSE_AZIMUTH,
        RenderBank,
        azimuth_distance,
        build_bank,
        estimate_viewpoints,
        hog_descriptors,
    )
    from cyclecorr.render import Viewpoint, render_view

    bank_dir = args.bank_cache
    if bank_dir is None:
        from cyclecorr._paths import cache_dir
        bank_dir = cache_dir() / "banks"
    bank = build_bank(models, grid, cache=bank_dir, progress=False)
    rng = np.random.default_rng(0)
    errs = []
    for m in rng.choice(len(bank.models), size=min(20, len(bank.models)), replace=False):
        keep = [i for i in range(len(bank.models)) if i != m]
        sub = RenderBank([bank.models[i] for i in keep], bank.viewpoints, bank.descriptors[keep])
        vps = [(rng.uniform(0, 360), rng.uniform(0, 30)) for _ in range(3)]
        imgs = [render_view(get_mesh(bank.models[m]), Viewpoint(a, e), size=128).rgb
                for a, e in vps]
        idx, _ = estimate_viewpoints(sub, hog_descriptors(imgs))
        errs += list(azimuth_distance(grid[idx, 0], [a for a, _ in vps]))
    errs = np.array(errs)
    print(f"viewpoint retrieval (held-out model, off-grid viewpoint, {len(errs)} queries): "
          f"{100 * (errs <= cfg.azimuth_step).mean():.0f}% within {cfg.azimuth_step:g}° "
          f"(one grid step), {100 * (errs <= 2 * cfg.azimuth_step).mean():.0f}% within "
          f"{2 * cfg.azimuth_step:g}°, median error {np.median(errs):.1f}°")
    real_t, real_meta = _load_st(base / REAL_FILE)
    poses = np.array(real_meta["poses"])
    sel = np.flatnonzero(np.isin(poses, list(POSE_AZIMUTH)))
    if len(sel):
        idx, _ = estimate_viewpoints(bank, hog_descriptors(real_t["images"][sel]))
        az = grid[idx, 0]
        agree = {p: (azimuth_distance(az[poses[sel] == p], c) <= hw).mean()
                 for p, (c, hw) in POSE_AZIMUTH.items() if (poses[sel] == p).any()}
        print(f"VOC pose tags vs unconstrained HOG azimuth ({len(sel)} tagged crops): " +
              ", ".join(f"{p} {100 * v:.0f}%" for p, v in agree.items()))

    # -- quartets with 1 and 2 workers --------------------------------------------------------
    rates = {}
    for w in args.workers:
        out = work / f"w{w}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for f in (PLAN_FILE, REAL_FILE, RETRIEVAL_FILE):
            shutil.copy(base / f, out / f)
        # a fresh process per worker count: both runs pay the same start-up (imports, GL, meshes)
        code = ("import json, sys; "
                "from cyclecorr.data.quartets import QuartetConfig, prepare_quartets;"
                f"s = prepare_quartets({real!r}, {cad!r}, {str(out)!r}, {args.quartets}, "
                f"QuartetConfig(shard_size={args.shard_size}), workers={w}, progress=False, "
                f"log=lambda *_: None, bank_cache={args.bank_cache!r});"
                "print('RESULT' + json.dumps(s))")
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent.parent)
        wall = time.perf_counter() - t0
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
        if proc.returncode or not line:
            print(f"workers={w}: FAILED\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
            continue
        s = json.loads(line[0][len("RESULT"):])
        rates[w] = args.quartets / wall
        t = s["timing"]
        other = max(t["total"] - t["render"] - t["gt"] - t["write"], 0.0)
        steady = args.quartets / (t["total"] / w)
        print(f"workers={w}: {args.quartets} quartets in {wall:.1f} s = {rates[w]:.2f} quartets/s "
              f"(process start included; {steady:.1f}/s from worker busy time); worker time: "
              f"render {100 * t['render'] / t['total']:.0f}%, ground truth "
              f"{100 * t['gt'] / t['total']:.0f}%, shard I/O {100 * t['write'] / t['total']:.0f}%, "
              f"other {100 * other / t['total']:.0f}%; rejections {s['rejections']}")
    if 1 in rates and 2 in rates:
        print(f"speed-up 2 vs 1 workers: {rates[2] / rates[1]:.2f}× "
              f"(load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
