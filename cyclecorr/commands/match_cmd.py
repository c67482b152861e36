"""``cyclecorr match``: dense correspondence between two images (or a folder of pairs), written as
pictures (flow colours, target warped onto the source, matchability heat map, transferred
keypoints or a sparse set of confident points) plus the raw flow, and one HTML page
``DIR/index.html`` that explains them and has an interactive viewer (point at the source, see
the match in the target).

    cyclecorr match SRC TGT --out DIR [--model PATH|shipped] [--category car]
                                      [--method model|siftflow|zero]
                                      [--keypoints FILE] [--points N]
    cyclecorr match FOLDER --out DIR   # FOLDER/pairs.txt ("src tgt" per line, paths relative to
                                       # FOLDER), else every sub-folder holding exactly two images
                                       # (sorted names: first → second, e.g. TSS image1/image2)
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cyclecorr._runtime import PRECISIONS
from cyclecorr.data.io import read_image, read_pairs_file

_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="PATH",
                        help="SRC TGT (two images), or one FOLDER of pairs")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--model", default="shipped",
                        help="model file (.safetensors) or 'shipped' (default: the car model "
                             "shipped in the package, or the --category one)")
    parser.add_argument("--category", default="car",
                        help="which shipped model 'shipped' means (default car; `cyclecorr "
                             "models` lists them)")
    parser.add_argument("--method", default="model", choices=("model", "siftflow", "zero"),
                        help="what computes the correspondence (default: the model)")
    parser.add_argument("--keypoints", default=None,
                        help="text file of source keypoints, one 'x y' per line (0-based pixels); "
                             "single-pair mode only; default: --points picked by the page")
    parser.add_argument("--points", type=int, default=12,
                        help="how many confident, well-textured source points the transfer "
                             "picture joins to their matches (default 12)")
    parser.add_argument("--flow-scale", type=float, default=None, metavar="PX",
                        help="flow length drawn at full colour, in pixels, the same for every "
                             "pair of the page (default: a round number near a fifth of the "
                             "largest image side)")
    parser.add_argument("--device", default="auto",
                        help="where the network runs: auto (default: cuda when available, else "
                             "cpu), cpu, cuda, …")
    parser.add_argument("--precision", default="float32", choices=PRECISIONS,
                        help="network precision (default float32; bf16: autocast, faster on CPUs "
                             "with bf16 units)")
    parser.add_argument("--input-size", type=int, default=None,
                        help="run the network at S×S (a multiple of 16; default: its training "
                             "size, 128). Larger suits whole photos in which the object is small")


def _read_keypoints(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"keypoint file not found: {path}")
    try:
        k = np.loadtxt(path, dtype=np.float64, ndmin=2, comments="#", delimiter=None)
    except ValueError as e:
        raise ValueError(f"{path}: malformed keypoint file, expected 'x y' per line ({e})") from e
    if k.shape[1] != 2 or not np.isfinite(k).all():
        raise ValueError(f"{path}: expected 2 finite numbers (x y) per line, got shape {k.shape}")
    return k


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in _IMAGE_EXT


def find_pairs(folder: Path) -> list[tuple[Path, Path, str]]:
    """Pairs of a folder: ``pairs.txt`` lines "src tgt" (relative to the folder), else sub-folders
    holding exactly two images (sorted: first → second). Returns ``(src, tgt, name)``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    lst = folder / "pairs.txt"
    pairs = []
    if lst.is_file():
        return [(a, b, f"{a.stem}-{b.stem}") for a, b in read_pairs_file(lst)]
    for sub in sorted(p for p in folder.rglob("*") if p.is_dir()):
        imgs = sorted(p for p in sub.iterdir() if _is_image(p))
        imgs = [p for p in imgs if not p.stem.lower().startswith(("mask", "flow"))]
        if len(imgs) == 2:
            pairs.append((imgs[0], imgs[1], sub.relative_to(folder).as_posix().replace("/", "_")))
    if not pairs:
        raise ValueError(f"{folder}: no pairs found (give a pairs.txt with 'src tgt' lines, or "
                         f"sub-folders holding exactly two images)")
    return pairs


def run(args) -> int:
    # on use: these load torch; `cyclecorr --help` imports every command module
    from tqdm import tqdm

    from cyclecorr.checkpoint import shipped_model_path
    from cyclecorr.evaluate.methods import dense_match, make_method
    from cyclecorr.viz import model_summary, page_flow_scale, write_html_page, write_pair_pictures

    out = Path(args.out)
    ins = [Path(p) for p in args.inputs]
    if len(ins) == 2:
        for p in ins:
            if not p.exists():
                raise FileNotFoundError(f"image not found: {p}")
        pairs = [(ins[0], ins[1], f"{ins[0].stem}-{ins[1].stem}")]
    elif len(ins) == 1:
        if not ins[0].exists():
            raise FileNotFoundError(f"folder not found: {ins[0]}")
        if not ins[0].is_dir():
            raise ValueError(f"{ins[0]}: one PATH must be a folder of pairs (or give SRC TGT)")
        pairs = find_pairs(ins[0])
        if args.keypoints:
            raise ValueError("--keypoints works with a single pair (SRC TGT) only")
    else:
        raise ValueError(f"give SRC TGT or one FOLDER, got {len(ins)} paths")
    if args.points < 1:
        raise ValueError(f"--points must be ≥ 1, got {args.points}")
    if args.flow_scale is not None and not args.flow_scale > 0:
        raise ValueError(f"--flow-scale must be > 0 pixels, got {args.flow_scale}")
    kps = _read_keypoints(Path(args.keypoints)) if args.keypoints else None
    # read every image first: a missing or corrupt file fails before any work
    images = {}
    for a, b, _ in pairs:
        for p in (a, b):
            if p not in images:
                images[p] = read_image(p)
    if kps is not None:
        h, w = images[pairs[0][0]].shape[:2]
        if ((kps < -0.5) | (kps > np.array([w - 0.5, h - 0.5]))).any():
            raise ValueError(f"{args.keypoints}: keypoints outside the {w}×{h} source image")
    model = args.model
    if args.method == "model" and model == "shipped":
        model = str(shipped_model_path(args.category))
    method = make_method(args.method, model=model, device=args.device,
                         net_size=args.input_size, precision=args.precision)
    print(f"cyclecorr match: {len(pairs)} pair(s) with {method.name}; writing to {out}")
    scale = args.flow_scale or page_flow_scale([images[a].shape[:2] for a, _, _ in pairs])
    entries = []
    used = set()
    for a, b, name in tqdm(pairs, desc="match", unit="pair", disable=len(pairs) < 2):
        while name in used:
            name += "_"
        used.add(name)
        res = dense_match(method, images[a], images[b])
        e = write_pair_pictures(out / name, images[a], images[b], res["flow"], res["matchability"],
                                keypoints_a=kps, points=args.points, max_flow=scale,
                                title=f"{a.name} → {b.name}")
        e["stats"].update(source=str(a), target=str(b))
        entries.append(e)
    model = model_summary(args.model, method=args.method)
    header = (f"{len(entries)} pair(s) matched by cyclecorr match"
              + (f" at {args.input_size}×{args.input_size}" if args.input_size else "")
              + (f" in {args.precision}" if args.precision != "float32" else "") + ".")
    page = write_html_page(out / "index.html", entries, title="cyclecorr match", header=header,
                           model=model, raw={"method": method.describe()})
    print(f"cyclecorr match: wrote {len(entries)} pair folder(s) and {page}")
    print(f"  open it in a browser: file://{page.resolve()}")
    return 0
