"""Per-model axis conventions from a table in an ancestor folder of the model.

Some collections mix models whose axes differ from one model to the next (e.g.
``cad/car/open-sims``: z up for some simulators, y up for others). Such a collection describes
them in a **conventions table**, ``MODELS.tsv``, in one of the model's ancestor folders:

- ``model_dir``: the model's folder relative to the table's folder (``vdrift/350Z``);
- ``up_axis``: the file axis that points up (``x``/``y``/``z``, optionally signed; ``z`` = ``+z``);
- ``length_axis``: the horizontal axis along the object's length (unsigned);
- ``front_axis`` (optional): the signed axis the object's front points to (``-y``).

A model that such a table lists is loaded with ``up`` → canonical +z and ``front`` → canonical
−y (see :mod:`cyclecorr.render.mesh`). Where the collection's table does not give the front,
it comes from the package's own table ``cyclecorr/render/conventions/<collection>.tsv``
(``<collection>`` = the name of the folder holding ``MODELS.tsv``; columns ``model_dir``, ``up``,
``front``, …), written by ``scripts/decide_fronts.py`` (a HOG vote against reference cars,
corrected by hand where a render showed the vote wrong). The nearest ancestor table that lists
the model's folder wins; a model no table lists keeps its source's convention.

``conventions/open-sims.tsv``: 71 models, all decided by the vote; renders of every one at
azimuth 0 and 90 after loading show its front and its left side (front on the image's left),
so none needed a hand fix. The vote on models whose front is known, each turned around at
random: 79/79 gsnet cars (leave-one-out), 13/13 Sweet Home 3D cars, 5/5 PASCAL3D+ cars.
"""
from __future__ import annotations

import csv
import os
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ModelFrame", "model_frame", "frame_key", "read_front_table", "COLLECTION_TABLE",
           "PACKAGE_TABLES"]

#: name of a collection's conventions table (in an ancestor folder of its models)
COLLECTION_TABLE = "MODELS.tsv"
#: folder of the package's own front tables (``<collection>.tsv``)
PACKAGE_TABLES = Path(__file__).resolve().parent / "conventions"

_AXES = ("x", "y", "z")


class FrameTableError(ValueError):
    """A conventions table is malformed or contradicts another (the message names the file)."""


@dataclass(frozen=True)
class ModelFrame:
    """Axes of one model as its collection's tables give them.

    Attributes:
        up: signed file axis that becomes canonical +z (``"+z"``).
        front: signed file axis that becomes canonical −y, or None where no table decides it.
        length: unsigned file axis along the object's length (``"x"``).
        collection: the name of the folder holding the conventions table (``"open-sims"``).
        model_dir: the model's folder relative to that folder (``"vdrift/350Z"``).
        table: the conventions table (``MODELS.tsv``).
        front_from: where ``front`` comes from (the table's path, or '' when undecided).
        how: how the front was decided (``"vote"``, ``"manual"``, ``"table"``; '' if undecided).
    """

    up: str
    front: str | None
    length: str
    collection: str
    model_dir: str
    table: Path
    front_from: str = ""
    how: str = ""


def _signed(spec: str, where: str) -> str:
    s = (spec or "").strip().lower()
    sign = "-" if s.startswith("-") else "+"
    s = s.lstrip("+-")
    if s not in _AXES:
        raise FrameTableError(f"{where}: axis must be x, y or z (optionally signed), got {spec!r}")
    return sign + s


def _read_tsv(path: Path) -> tuple[list[str], list[dict]]:
    """Rows of a tab-separated table with a header line; lines starting with '#' are comments."""
    with open(path, newline="", encoding="utf-8") as fh:
        lines = [ln for ln in fh if ln.strip() and not ln.startswith("#")]
    reader = csv.DictReader(lines, delimiter="\t")
    return list(reader.fieldnames or []), list(reader)


_CACHE: dict = {}
_LOCK = threading.Lock()


def _cached(path: Path, parse):
    st = path.stat()
    key = (str(path), parse.__name__)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0] == (st.st_mtime_ns, st.st_size):
            return hit[1]
    val = parse(path)
    with _LOCK:
        _CACHE[key] = ((st.st_mtime_ns, st.st_size), val)
    return val


def _parse_collection(path: Path) -> dict[str, dict] | None:
    """``MODELS.tsv`` → {model_dir: {up, length, front}}; None when it is not a conventions
    table (no ``model_dir``/``up_axis`` columns)."""
    cols, rows = _read_tsv(path)
    if "model_dir" not in cols or "up_axis" not in cols:
        return None
    out = {}
    for ln, r in enumerate(rows, start=2):
        where = f"{path}:{ln}"
        md = (r.get("model_dir") or "").strip().strip("/")
        if not md:
            raise FrameTableError(f"{where}: empty model_dir")
        up = _signed(r["up_axis"], where)
        length = (r.get("length_axis") or "").strip().lower().lstrip("+-")
        if length and length not in _AXES:
            raise FrameTableError(f"{where}: length_axis must be x, y or z, got {length!r}")
        if length and length == up[1]:
            raise FrameTableError(f"{where}: length_axis {length!r} is the up axis")
        front = (r.get("front_axis") or "").strip()
        front = _signed(front, where) if front else None
        if front is not None and front[1] == up[1]:
            raise FrameTableError(f"{where}: front_axis {front!r} is the up axis")
        if front is not None and length and front[1] != length:
            raise FrameTableError(f"{where}: front_axis {front!r} is not along the length "
                                  f"axis {length!r}")
        out[md] = {"up": up, "length": length, "front": front}
    return out


def read_front_table(path: str | os.PathLike) -> dict[str, dict]:
    """A front table (``cyclecorr/render/conventions/<collection>.tsv``) → {model_dir: row}
    with ``up`` and ``front`` signed axes and the other columns as strings."""
    path = Path(path)
    cols, rows = _read_tsv(path)
    missing = [c for c in ("model_dir", "up", "front") if c not in cols]
    if missing:
        raise FrameTableError(f"{path}: missing column(s) {missing} (have {cols})")
    out = {}
    for ln, r in enumerate(rows, start=2):
        where = f"{path}:{ln}"
        md = (r["model_dir"] or "").strip().strip("/")
        row = {k: (v or "").strip() for k, v in r.items() if k}
        row["up"] = _signed(r["up"], where)
        row["front"] = _signed(r["front"], where)
        out[md] = row
    return out


def _package_front(collection: str, model_dir: str, up: str, length: str, table: Path):
    f = PACKAGE_TABLES / f"{collection}.tsv"
    if not f.is_file():
        return None, "", ""
    row = _cached(f, read_front_table).get(model_dir)
    if row is None:
        return None, "", ""
    if row["up"] != up:
        raise FrameTableError(f"{f}: {model_dir} has up {row['up']}, but {table} says "
                              f"{up}; rerun scripts/decide_fronts.py")
    if length and row["front"][1] != length:
        raise FrameTableError(f"{f}: {model_dir} has front {row['front']}, not along the "
                              f"length axis {length!r} of {table}")
    return row["front"], str(f), row.get("how", "")


def model_frame(path: str | os.PathLike) -> ModelFrame | None:
    """The axes a conventions table in an ancestor folder of ``path`` gives the model, or None.

    Walks up from the model's folder; the first ``MODELS.tsv`` with a row for the model's folder
    (relative to the table's folder) decides. Raises :class:`FrameTableError` (a ValueError) for
    a malformed table.
    """
    p = Path(path).resolve()
    for anc in p.parents:
        t = anc / COLLECTION_TABLE
        if not t.is_file():
            continue
        rows = _cached(t, _parse_collection)
        if not rows:
            continue
        md = p.parent.relative_to(anc).as_posix()
        r = rows.get(md)
        if r is None:
            continue
        front, src, how = r["front"], str(t), "table"
        if front is None:
            front, src, how = _package_front(anc.name, md, r["up"], r["length"], t)
        return ModelFrame(r["up"], front, r["length"], anc.name, md, t, src, how)
    return None


def frame_key(path: str | os.PathLike) -> str | None:
    """A short string naming the axes a conventions table gives ``path`` (None when no table
    lists it): a cache key of anything rendered from the model changes with its frame."""
    try:
        f = model_frame(path)
    except (OSError, ValueError):
        return None
    if f is None:
        return None
    return f"{f.collection}/{f.model_dir}:up{f.up}:front{f.front}"
