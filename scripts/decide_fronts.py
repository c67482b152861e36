"""Decide which way each model of a CAD collection faces, and write the package's front table.

    .venv/bin/python scripts/decide_fronts.py [--collection cad/car/open-sims]
        [--references cad/car/gsnet] [--validate] [--montage DIR] [--dry-run]

The collection's ``MODELS.tsv`` gives each model's up axis and length axis but not which way
along the length axis its front points. Each model is loaded with its front guessed at
``+length`` and a HOG vote (:mod:`cyclecorr.data.front_vote`) against the reference cars
(``cad/car/gsnet``: 79 cars whose front is certain) keeps or turns it around. The result goes to
``cyclecorr/render/conventions/<collection>.tsv`` (read by ``load_mesh``, see
:mod:`cyclecorr.render.frames`): ``model_dir, up, front, how, vote_front, votes, margin,
distance_gap``. Rows marked ``manual`` in an existing table (fronts fixed by hand after looking
at renders) keep their front; the vote's columns are refreshed.

``--validate`` measures the vote where the truth is known: every gsnet car turned around at
random (seed 0) and voted on against the other 78 (leave-one-out), and the Sweet Home 3D and
PASCAL3D+ cars turned around at random against all 79. ``--montage DIR`` writes PNG sheets of
every model of the collection as ``load_mesh`` now loads it, textured, at azimuth 0 (front) and
90 (left side, front on the image's left), elevation 10°, for a visual check.

Paths are relative to the shared data folder (``$CYCLECORR_DATA`` or ``../shared/data``).
Rendered descriptors are cached in ``$CYCLECORR_CACHE/front_vote`` (one file per model file,
axes and grid).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from cyclecorr._paths import cache_dir, shared_data_dir  # noqa: E402
from cyclecorr.data.front_vote import (  # noqa: E402
    VOTE_VIEWS,
    flip_views,
    front_vote,
    turn_around,
    view_descriptors,
)
from cyclecorr.data.io import atomic_write_bytes  # noqa: E402
from cyclecorr.render import Renderer, list_meshes, load_mesh  # noqa: E402
from cyclecorr.render.frames import (  # noqa: E402
    COLLECTION_TABLE,
    PACKAGE_TABLES,
    _parse_collection,
    read_front_table,
)

VERSION = 1
COLUMNS = ["model_dir", "up", "front", "how", "vote_front", "votes", "margin", "distance_gap"]


def _cache_file(path: Path, up: str, front: str, turned: bool) -> Path:
    st = path.stat()
    key = json.dumps([str(path.resolve()), st.st_size, int(st.st_mtime), up, front, turned,
                      VOTE_VIEWS.tolist(), VERSION])
    return cache_dir() / "front_vote" / (hashlib.sha256(key.encode()).hexdigest()[:20] + ".npy")


def descriptors(path: Path, renderer, up: str | None = None, front: str | None = None,
                source: str | None = None, turned: bool = False) -> np.ndarray:
    """(V, D) vote descriptors of a model loaded with the given axes (cached)."""
    f = _cache_file(path, f"{source}:{up}", front or "", turned)
    if f.exists():
        return np.load(f)
    mesh = load_mesh(path, source=source, up=up, front=front)
    if turned:
        mesh = turn_around(mesh)
    d = view_descriptors(mesh, VOTE_VIEWS, renderer=renderer).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, d)
    atomic_write_bytes(f, buf.getvalue())
    return d


def reference_descriptors(folder: Path, renderer) -> tuple[list[Path], np.ndarray]:
    paths = list_meshes(folder)
    return paths, np.stack([descriptors(p, renderer) for p in paths])


def _fmt(v: float) -> str:
    return f"{v:.3f}"


def decide(root: Path, collection: str, refs: np.ndarray, renderer, out: Path,
           dry_run: bool) -> list[dict]:
    coll = root / collection
    rows = _parse_collection(coll / COLLECTION_TABLE)
    if not rows:
        raise SystemExit(f"{coll / COLLECTION_TABLE}: not a conventions table")
    old = read_front_table(out) if out.exists() else {}
    result = []
    for md, r in sorted(rows.items()):
        meshes = [p for p in list_meshes(coll / md) if p.parent == coll / md]
        if len(meshes) != 1:
            raise SystemExit(f"{coll / md}: expected one model file, found {len(meshes)}")
        guess = "+" + r["length"]
        # source="obj" only so that no table is consulted: up and front are given
        d = descriptors(meshes[0], renderer, up=r["up"], front=guess, source="obj")
        vote = front_vote(d, refs)
        vote_front = ("-" if vote.flip else "+") + r["length"]
        prev = old.get(md)
        manual = prev is not None and prev.get("how") == "manual" and prev["up"] == r["up"]
        front = prev["front"] if manual else vote_front
        row = {"model_dir": md, "up": r["up"], "front": front,
               "how": "manual" if manual else "vote", "vote_front": vote_front,
               "votes": f"{max(vote.keep_votes, vote.flip_votes)}-"
                        f"{min(vote.keep_votes, vote.flip_votes)}",
               "margin": _fmt(vote.margin), "distance_gap": _fmt(vote.distance_gap)}
        result.append(row)
        print(f"{md:28s} up {r['up']} front {front} ({row['how']}; vote {vote_front} "
              f"{row['votes']}, margin {row['margin']}, gap {row['distance_gap']})", flush=True)
    n_vote = sum(r["how"] == "vote" for r in result)
    n_manual = len(result) - n_vote
    disagree = sum(r["front"] != r["vote_front"] for r in result)
    header = [
        f"# Front of each model of the '{Path(collection).name}' collection "
        f"(its {COLLECTION_TABLE} gives up and length axes only).",
        "# Written by scripts/decide_fronts.py: a HOG vote over 24 views (azimuth every 30 deg, "
        "elevations 10/25) against the gsnet reference cars",
        "# (cyclecorr.data.front_vote); 'manual' rows were fixed by hand after looking at renders "
        "at azimuth 0 and 90 (the script keeps them).",
        "# up/front: file axes that become canonical +z / -y. votes: winner-loser views; margin: "
        "(winner-loser)/views; distance_gap: mean HOG distance gap.",
        f"# {len(result)} models: {n_vote} decided by vote, {n_manual} by hand "
        f"({disagree} of them against the vote).",
    ]
    text = "\n".join(header + ["\t".join(COLUMNS)]
                     + ["\t".join(r[c] for c in COLUMNS) for r in result]) + "\n"
    print(f"{len(result)} models: {n_vote} by vote, {n_manual} by hand ({disagree} against the "
          "vote)")
    if not dry_run:
        atomic_write_bytes(out, text.encode())
        print(f"wrote {out}")
    return result


def validate(root: Path, ref_paths: list[Path], refs: np.ndarray, renderer, seed: int = 0) -> dict:
    """Accuracy of the vote on models whose front is known, each turned around at random."""
    rng = np.random.default_rng(seed)
    fl = flip_views(VOTE_VIEWS)
    report = {}
    # gsnet, leave-one-out: a turned model's renders are its renders at azimuth + 180
    flips = rng.random(len(ref_paths)) < 0.5
    ok, margins = [], []
    for i in range(len(ref_paths)):
        d = refs[i][fl] if flips[i] else refs[i]
        v = front_vote(d, refs, exclude=i)
        ok.append(v.flip == flips[i])
        margins.append(v.margin if v.flip == flips[i] else -v.margin)
    report["gsnet (leave-one-out)"] = (ok, margins, [p.stem for p in ref_paths])
    others = {"sweethome3d": sorted((root / "cad/car/sweethome3d").glob("*/*.obj")),
              "pascal3d": sorted((root / "cad/pascal3d").glob("car*.json"))}
    for name, paths in others.items():
        flips = rng.random(len(paths)) < 0.5
        ok, margins = [], []
        for p, f in zip(paths, flips):
            d = descriptors(p, renderer, turned=bool(f))
            v = front_vote(d, refs)
            ok.append(v.flip == f)
            margins.append(v.margin if v.flip == f else -v.margin)
        report[name] = (ok, margins, [p.parent.name if p.suffix == ".obj" else p.stem
                                      for p in paths])
    total = 0
    n_ok = 0
    for name, (ok, margins, names) in report.items():
        wrong = [n for n, o in zip(names, ok) if not o]
        total += len(ok)
        n_ok += sum(ok)
        print(f"validate {name}: {sum(ok)}/{len(ok)} correct ({100 * np.mean(ok):.1f}%), "
              f"signed margin min {min(margins):.3f} median {np.median(margins):.3f}"
              + (f"; wrong: {wrong}" if wrong else ""))
    print(f"validate all: {n_ok}/{total} correct ({100 * n_ok / total:.1f}%)")
    return report


def montage(root: Path, collection: str, out_dir: Path, renderer, per_sheet: int = 24) -> None:
    """PNG sheets: each model at azimuth 0 and 90 (elevation 10), labelled with its folder."""
    from PIL import Image, ImageDraw

    from cyclecorr.render import Viewpoint

    coll = root / collection
    paths = list_meshes(coll)
    out_dir.mkdir(parents=True, exist_ok=True)
    s, cols = 128, 4
    for sheet in range(0, len(paths), per_sheet):
        chunk = paths[sheet:sheet + per_sheet]
        rows = (len(chunk) + cols - 1) // cols
        img = Image.new("RGB", (cols * 2 * s, rows * (s + 14)), (255, 255, 255))
        draw = ImageDraw.Draw(img)
        for i, p in enumerate(chunk):
            mesh = load_mesh(p)
            x, y = (i % cols) * 2 * s, (i // cols) * (s + 14)
            for j, az in enumerate((0.0, 90.0)):
                r = renderer.render(mesh, Viewpoint(az, 10.0, 0.0, 2.5), s,
                                    background=(90, 110, 140))
                img.paste(Image.fromarray(r.rgb), (x + j * s, y + 14))
            draw.text((x + 2, y + 1), p.parent.relative_to(coll).as_posix(), fill=(0, 0, 0))
        f = out_dir / f"{Path(collection).name}-{sheet // per_sheet:02d}.png"
        img.save(f)
        print(f"wrote {f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="shared data folder")
    ap.add_argument("--collection", default="cad/car/open-sims")
    ap.add_argument("--references", default="cad/car/gsnet")
    ap.add_argument("--out", type=Path, default=None,
                    help="front table (default cyclecorr/render/conventions/<collection>.tsv)")
    ap.add_argument("--validate", action="store_true")
    ap.add_argument("--montage", type=Path, default=None, metavar="DIR")
    ap.add_argument("--dry-run", action="store_true", help="print the decisions, write nothing")
    a = ap.parse_args(argv)
    root = a.data or shared_data_dir()
    if root is None or not (root / a.collection).is_dir():
        raise SystemExit(f"collection not found: {root}/{a.collection} (set CYCLECORR_DATA)")
    out = a.out or PACKAGE_TABLES / f"{Path(a.collection).name}.tsv"
    renderer = Renderer(cache_size=4)
    t0 = time.perf_counter()
    ref_paths, refs = reference_descriptors(root / a.references, renderer)
    print(f"references: {len(ref_paths)} models × {len(VOTE_VIEWS)} views "
          f"({time.perf_counter() - t0:.0f} s)")
    if a.validate:
        validate(root, ref_paths, refs, renderer)
    decide(root, a.collection, refs, renderer, out, a.dry_run)
    if a.montage is not None:
        montage(root, a.collection, a.montage, renderer)
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
