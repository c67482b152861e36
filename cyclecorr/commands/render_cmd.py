"""``cyclecorr render``: render CAD models and synthetic ground-truth pairs to PNG.

For every model (a file, or every supported model under a folder) it writes, into
``--out/<model-stem>/``:

- ``view_NN.png`` (lit RGB, cropped to the object's box, SIZE×SIZE) and ``view_NN_mask.png``;
- with ``--pairs``: ``pair_NN.npz`` (``flow`` (2,H,W) flow_ab in pixels, channel 0 = x;
  ``matchability`` (H,W)) between views 2k and 2k+1, and ``pair_NN_check.png`` (a | b warped into
  a by the flow where matchable | b) to check the ground truth by eye;
- ``views.json``: the viewpoints, crop boxes and, for models with 3D keypoints, their projections
  (x, y 0-based in the crop) and visibility.

Finished models (``views.json`` present) are skipped, so re-running resumes; files are written
atomically.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from cyclecorr._io import atomic_path, atomic_write_bytes
from cyclecorr.commands._checks import check_out_dir
from cyclecorr.render import (
    Renderer,
    Viewpoint,
    correspondence_between,
    list_meshes,
    load_mesh,
    project_keypoints,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``render`` options to ``parser``."""
    parser.description = (
        "Render CAD models (OBJ/MTL, ShapeNet, gsnet, PASCAL3D+ JSON) from random or given "
        "PASCAL3D+ viewpoints; optionally the exact synthetic flow between pairs of views.")
    parser.add_argument("models", type=Path, help="a model file or a folder searched recursively")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--views", type=int, default=4, help="views per model (default 4)")
    parser.add_argument("--viewpoint", type=float, nargs=3, action="append",
                        metavar=("AZ", "EL", "THETA"),
                        help="a fixed viewpoint in degrees (repeatable; replaces random ones)")
    parser.add_argument("--distance", type=float, default=2.5,
                        help="camera distance in bbox diagonals (default 2.5)")
    parser.add_argument("--size", type=int, default=128, help="output side (default 128)")
    parser.add_argument("--margin", type=float, default=0.0,
                        help="enlarge the object box by this fraction (0.1 = ×1.1)")
    parser.add_argument("--pairs", action="store_true",
                        help="also write the ground-truth flow between views 2k and 2k+1")
    parser.add_argument("--backend", choices=["raster", "gl"], default=None,
                        help="renderer backend (default raster)")
    parser.add_argument("--antialias", type=int, default=1,
                        help="raster RGB supersampling factor (default 1 = off)")
    parser.add_argument("--max-models", type=int, default=0, help="stop after N models (0 = all)")
    parser.add_argument("--seed", type=int, default=0, help="random viewpoints' seed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _save_png(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def _check_image(gt) -> np.ndarray:
    """a | b warped into a's frame (nearest, matchable pixels only) | b."""
    a, b = gt.view_a.rgb, gt.view_b.rgb
    H, W = gt.matchability.shape
    ys, xs = np.mgrid[0:H, 0:W]
    qx = np.clip(np.rint(xs + gt.flow[0]).astype(int), 0, b.shape[1] - 1)
    qy = np.clip(np.rint(ys + gt.flow[1]).astype(int), 0, b.shape[0] - 1)
    warped = np.where(gt.matchability[..., None] > 0, b[qy, qx], 0).astype(np.uint8)
    return np.concatenate([a, warped, b], axis=1)


def run(args: argparse.Namespace) -> int:
    """Run the command; returns the exit status."""
    if args.views < 1 or args.size < 8:
        raise ValueError(f"--views must be ≥ 1 and --size ≥ 8, got {args.views}, {args.size}")
    if args.antialias < 1 or args.max_models < 0 or not args.distance > 0:
        raise ValueError(f"--antialias must be ≥ 1, --max-models ≥ 0 and --distance > 0, got "
                         f"{args.antialias}, {args.max_models}, {args.distance}")
    if not args.models.exists():
        raise FileNotFoundError(f"model file or folder not found: {args.models}")
    check_out_dir(args.out)
    files = [args.models] if args.models.is_file() else list_meshes(args.models)
    if args.max_models:
        files = files[:args.max_models]
    if not files:
        raise FileNotFoundError(f"no supported model files under {args.models}")
    args.out.mkdir(parents=True, exist_ok=True)
    renderer = Renderer(backend=args.backend, antialias=args.antialias)
    rng = np.random.default_rng(args.seed)
    n_views = len(args.viewpoint) if args.viewpoint else args.views
    print(f"rendering {len(files)} model(s), {n_views} view(s) each at {args.size}×{args.size}"
          f" ({renderer.backend} backend) into {args.out}", file=sys.stderr)
    it = files
    if not args.no_progress:
        it = tqdm(files, desc="render", unit="model")
    done = skipped = 0
    failures: list[str] = []
    used: set[str] = set()
    for path in it:
        stem = Path(path).stem if Path(path).stem != "model_normalized" else Path(path).parent.name
        if stem in used:
            stem = f"{stem}-{len(used)}"
        used.add(stem)
        folder = args.out / stem
        if (folder / "views.json").is_file():
            skipped += 1
            continue
        if args.viewpoint:
            vps = [Viewpoint(a, e, t, args.distance) for a, e, t in args.viewpoint]
        else:
            vps = [Viewpoint(float(rng.uniform(0, 360)), float(rng.uniform(0, 40)),
                             float(rng.uniform(-10, 10)), args.distance)
                   for _ in range(args.views)]
        try:
            _render_model(path, folder, vps, args, renderer, load_mesh, project_keypoints,
                          correspondence_between)
        except Exception as e:  # one broken model must not stop a folder of hundreds
            msg = str(e).splitlines()[0][:300] if str(e) else ""
            print(f"skipping {path}: {type(e).__name__}: {msg}", file=sys.stderr)
            failures.append(str(path))
            continue
        done += 1
    print(f"done: {done} rendered, {skipped} already there, {len(failures)} unreadable or "
          f"unrenderable; output in {args.out}", file=sys.stderr)
    if failures:
        print(f"skipped {len(failures)} model(s): " + ", ".join(failures), file=sys.stderr)
    return 0 if done + skipped > 0 else 2


def _render_model(path, folder: Path, vps, args, renderer, load_mesh, project_keypoints,
                  correspondence_between) -> None:
    """Load one model and write its views (and pairs) into ``folder``; ``views.json`` last."""
    mesh = load_mesh(path)
    folder.mkdir(parents=True, exist_ok=True)
    views, meta = [], []
    for k, vp in enumerate(vps):
        v = renderer.render(mesh, vp, args.size, margin=args.margin)
        views.append(v)
        _save_png(folder / f"view_{k:02d}.png", v.rgb)
        _save_png(folder / f"view_{k:02d}_mask.png", (v.mask * 255).astype(np.uint8))
        entry = {"file": f"view_{k:02d}.png", "azimuth": vp.azimuth,
                 "elevation": vp.elevation, "theta": vp.theta, "distance": vp.distance,
                 "crop_box_in_image": [v.crop.x0, v.crop.y0, v.crop.x1, v.crop.y1]}
        if mesh.keypoints:
            kp = project_keypoints(mesh, view=v)
            entry["keypoints"] = {n: {"x": float(x), "y": float(y), "visible": bool(vis)}
                                  for n, (x, y), vis in zip(kp.names, kp.xy, kp.visible)}
        meta.append(entry)
    if args.pairs:
        for k in range(len(views) // 2):
            gt = correspondence_between(views[2 * k], views[2 * k + 1])
            with atomic_path(folder / f"pair_{k:02d}.npz") as tmp:
                np.savez_compressed(tmp, flow=gt.flow, matchability=gt.matchability)
            _save_png(folder / f"pair_{k:02d}_check.png", _check_image(gt))
    atomic_write_bytes(folder / "views.json", json.dumps(
        {"model": str(path), "kind": mesh.kind, "views": meta}, indent=1).encode())
