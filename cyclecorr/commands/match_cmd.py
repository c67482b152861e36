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

Everything a user can get wrong is checked before the model loads: the images (read under the
input contract of :mod:`cyclecorr.images`: at least 8 px a side, at most 100 Mpx), the keypoint
file, ``--out`` (a writable folder, or one that can be created), ``--device``. Each pair is written
into a temporary folder beside its final one, with a ``pair.json`` record (its source, target,
model and method), and renamed into place; the page ``DIR/index.html`` is then rebuilt from every
pair folder on disk, under a lock on ``DIR``. So two runs writing into one ``--out`` never mix
their files, and the page lists the pairs of both; a pair folder name that another pair already
holds gets a suffix from the pair's paths (``a-b~1f2e3d4c``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from cyclecorr._io import atomic_write_bytes, folder_lock, pid_alive
from cyclecorr._runtime import PRECISIONS
from cyclecorr.commands._checks import check_device, check_out_dir
from cyclecorr.data.io import read_image, read_pairs_file
from cyclecorr.images import MIN_SIDE

PAIR_RECORD = "pair.json"
PAIR_FORMAT = "cyclecorr-match-pair/1"

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
    parser.add_argument("--refine", default=None, metavar="{siftflow,none,siftflow:L:W[:S]}",
                        help="with --method model: siftflow refines the model's flow by SIFT "
                             "flow searched around it (the model finds the part, SIFT's "
                             "descriptors place each pixel; a fraction of a second per pair on "
                             "a CPU core); none: the model's own flow; "
                             "siftflow:LEVEL:WINDOW[:STOP] sets the pyramid level and "
                             "half-width where the search starts and the level where it "
                             "stops. Default: siftflow for car models, none for the others "
                             "(measured: it helps cars on photos, costs chairs and aeroplanes "
                             "on renders)")
    parser.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=None,
                        help="with --method model: match the target to the source too and "
                             "average the two estimates of each match where they agree "
                             "(twice the time). Default: on for car models, off for the "
                             "others")
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
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: malformed keypoint file, expected 'x y' per line "
                         f"({' '.join(str(e).split())})") from e
    if k.size == 0:
        raise ValueError(f"{path}: no keypoints (expected 'x y' per line)")
    if k.shape[1] != 2:
        raise ValueError(f"{path}: expected 2 numbers (x y) per line, got {k.shape[1]}")
    bad = ~np.isfinite(k).all(axis=1)
    if bad.any():
        raise ValueError(f"{path}: {int(bad.sum())} keypoint(s) are NaN or infinite (first: "
                         f"keypoint {int(np.flatnonzero(bad)[0]) + 1}); give finite x y numbers")
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
    from cyclecorr.matcher import (
        DEFAULT_BIDIRECTIONAL_CATEGORIES,
        DEFAULT_REFINE_BY_CATEGORY,
        format_refine,
        parse_refine,
    )
    from cyclecorr.viz import model_summary, page_flow_scale, write_pair_pictures

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
    if args.flow_scale is not None and not (np.isfinite(args.flow_scale) and args.flow_scale > 0):
        raise ValueError(f"--flow-scale must be > 0 pixels, got {args.flow_scale}")
    if args.input_size is not None and (args.input_size < 16 or args.input_size % 16):
        raise ValueError(f"--input-size must be a positive multiple of 16, got {args.input_size}")
    refine = parse_refine(args.refine)
    if refine is not None and args.method != "model":
        raise ValueError(f"--refine {args.refine} refines a model's flow; not with --method "
                         f"{args.method}")
    if args.bidirectional is not None and args.method != "model":
        raise ValueError(f"--bidirectional runs a model both ways; not with --method "
                         f"{args.method}")
    kps = _read_keypoints(Path(args.keypoints)) if args.keypoints else None
    check_out_dir(out)
    if args.method == "model":
        check_device(args.device)
    # read every image first: a missing, corrupt, too small or too large file fails before any
    # work, named
    images = {}
    for a, b, _ in pairs:
        for p in (a, b):
            if p not in images:
                images[p] = read_image(p, min_side=MIN_SIDE)
    if kps is not None:
        h, w = images[pairs[0][0]].shape[:2]
        if ((kps < -0.5) | (kps > np.array([w - 0.5, h - 0.5]))).any():
            raise ValueError(f"{args.keypoints}: keypoints outside the {w}×{h} source image")
    model = args.model
    if args.method == "model" and model == "shipped":
        model = str(shipped_model_path(args.category))
    summary = model_summary(model, method=args.method)
    if args.refine is None and args.method == "model":  # the default: by the model's category
        refine = parse_refine(DEFAULT_REFINE_BY_CATEGORY.get(summary["category"]))
    refine_spec = format_refine(refine)
    spec = args.method if refine is None else f"model+{refine_spec}"
    bidirectional = bool(args.bidirectional)
    if args.bidirectional is None and args.method == "model":  # the default: by category
        bidirectional = summary["category"] in DEFAULT_BIDIRECTIONAL_CATEGORIES
    if bidirectional:
        spec += "+bidir"
    method = make_method(spec, model=model, device=args.device, net_size=args.input_size,
                         precision=args.precision)
    notes = []  # what the page says about how the model was run
    if refine is not None:
        notes.append("Its flow is refined by SIFT flow searched around it (from pyramid level {}, "
                     "±{} there, down to level {}: the model finds the part, SIFT's descriptors "
                     "place the pixel); the matchability is the model's.".format(*refine))
    if bidirectional:
        notes.append("The target is matched to the source too, and the two estimates of each "
                      "match are averaged where they agree.")
    if notes:
        summary["note"] = " ".join(filter(None, [summary.get("note"), *notes]))
    print(f"cyclecorr match: {len(pairs)} pair(s) with {method.name}; writing to {out}")
    scale = args.flow_scale or page_flow_scale([images[a].shape[:2] for a, _, _ in pairs])
    settings = {"input_size": args.input_size, "precision": args.precision,
                "refine": refine_spec, "bidirectional": bidirectional}
    done = []
    for a, b, name in tqdm(pairs, desc="match", unit="pair", disable=len(pairs) < 2):
        res = dense_match(method, images[a], images[b])
        tmp = out / f".tmp.{os.getpid()}.{uuid.uuid4().hex[:8]}.{name}"
        try:
            e = write_pair_pictures(tmp, images[a], images[b], res["flow"], res["matchability"],
                                    keypoints_a=kps, points=args.points, max_flow=scale,
                                    title=f"{a.name} → {b.name}")
            e["stats"].update(source=str(a), target=str(b))
            e.pop("dir")
            record = {"format": PAIR_FORMAT, "source": str(a.resolve()),
                      "target": str(b.resolve()), "written": time.time(), "entry": e,
                      "model": summary, "method": method.describe(), "settings": settings}
            atomic_write_bytes(tmp / PAIR_RECORD,
                               json.dumps(record, indent=1, default=str).encode())
            with folder_lock(out):
                done.append(_move_into_place(out, tmp, name, record))
                page = write_match_page(out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    print(f"cyclecorr match: wrote {len(done)} pair folder(s) ({', '.join(done)}) and {page}")
    print(f"  open it in a browser: file://{page.resolve()}")
    return 0


def _pair_key(record: dict) -> tuple:
    return record.get("source"), record.get("target")


def _read_record(folder: Path) -> dict | None:
    try:
        r = json.loads((folder / PAIR_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return r if isinstance(r, dict) and r.get("format") == PAIR_FORMAT else None


def _move_into_place(out: Path, tmp: Path, name: str, record: dict) -> str:
    """Rename the finished pair folder ``tmp`` to ``out/name`` (caller holds the folder lock):
    a folder of the same pair is replaced; a folder holding another pair (or anything else)
    keeps its name, and this pair takes ``name~<hash of its paths>``. Returns the name used.
    Leftovers of killed runs (their temporary folders) are removed on the way."""
    for p in out.iterdir():  # temporary folders of processes that no longer run
        parts = p.name.split(".")
        if (p.name.startswith((".tmp.", ".old.")) and len(parts) > 3 and parts[2].isdigit()
                and not pid_alive(int(parts[2]))):
            shutil.rmtree(p, ignore_errors=True)
    digest = hashlib.sha256(json.dumps(_pair_key(record)).encode()).hexdigest()[:8]
    for candidate in (name, f"{name}~{digest}", f"{name}~{digest}-{uuid.uuid4().hex[:6]}"):
        final = out / candidate
        if not final.exists():
            os.rename(tmp, final)
            return candidate
        old = _read_record(final) if final.is_dir() else None
        if old is not None and _pair_key(old) == _pair_key(record):
            trash = out / f".old.{os.getpid()}.{uuid.uuid4().hex[:8]}"
            os.rename(final, trash)
            os.rename(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
            return candidate
    raise FileExistsError(f"{out}: no free folder name for pair {name}")  # pragma: no cover


def write_match_page(out: Path) -> Path:
    """Rebuild ``out/index.html`` from the pair folders on disk (those holding a ``pair.json``),
    in the order they were written; call it holding :func:`cyclecorr._io.folder_lock` on
    ``out``."""
    from cyclecorr.viz import write_html_page

    records = []
    for d in sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")):
        r = _read_record(d)
        if r is not None:
            records.append((float(r.get("written", 0)), d.name, r))
    records.sort(key=lambda t: (t[0], t[1]))
    entries = []
    models = {json.dumps(r.get("model"), sort_keys=True, default=str) for _, _, r in records}
    settings = {json.dumps(r.get("settings"), sort_keys=True) for _, _, r in records}
    methods = []
    for _, name, r in records:
        e = dict(r["entry"], dir=str(out / name))
        if len(models) > 1:
            e["model"] = r.get("model")
        entries.append(e)
        if r.get("method") not in methods:
            methods.append(r.get("method"))
    header = f"{len(entries)} pair(s) matched by cyclecorr match"
    if len(settings) == 1 and records:
        st = records[0][2].get("settings") or {}
        if st.get("input_size"):
            header += f" at {st['input_size']}×{st['input_size']}"
        if st.get("precision", "float32") != "float32":
            header += f" in {st['precision']}"
    model = records[0][2].get("model") if len(models) == 1 and records else None
    raw = {"method": methods[0]} if len(methods) == 1 else {"methods": methods}
    return write_html_page(out / "index.html", entries, title="cyclecorr match",
                           header=header + ".", model=model, raw=raw)
