"""Loading CAD models into one canonical frame.

Canonical frame (the PASCAL3D+ CAD frame, used by the whole project):

- **z up**, the object's **front towards −y** (so a PASCAL3D+ viewpoint with azimuth 0 looks at
  the front), right-handed;
- centred on the axis-aligned bounding-box centre;
- **bounding-box diagonal = 1** (the PASCAL3D+ models already have diagonal 1, so PASCAL3D+
  distances can be used unchanged).

Only *up* and *front* are fixed; the third axis follows from a proper rotation (no mirroring),
so seen from the front (azimuth 0) canonical +x is on the image's right. PASCAL3D+ keypoint
names are kept as given (its car models put ``left_front_wheel`` at x < 0, i.e. on the image's
left in a frontal view).

Every source's axis convention lives in :data:`SOURCE_CONVENTIONS`, the single table of
conventions (``up``/``front`` name the source's axes that become canonical +z / −y):

============  ==========  =========  ============================================================
source        up          front      files
============  ==========  =========  ============================================================
pascal3d      +z          −y         PASCAL3D+ CAD as JSON (``vertices``, OFF-style ``faces``,
                                     named ``keypoints``)
shapenet      +y          +z         ShapeNetCore v2 ``model_normalized.obj`` (+ MTL, textures)
gsnet         −y          +z         ApolloCar3D/gsnet car OBJs (y axis down)
obj           +y          +z         any other Wavefront OBJ (Sweet Home 3D furniture; y up)
flightgear    +y          −x         FlightGear AC3D aircraft (``.ac`` under a ``flightgear`` or
                                     ``fgdata`` folder, e.g. Debian's ``flightgear-data-ai``):
                                     nose towards −x, y up, metres
torcs         +y          +x         TORCS / Speed Dreams AC3D cars (``.acc``, or ``.ac`` under a
                                     ``torcs``/``speed-dreams`` folder): front towards +x, y up
ac3d          +y          +z         any other AC3D file (AC3D's own y-up frame; its front view
                                     looks along −z)
============  ==========  =========  ============================================================

The fronts were checked visually on every model of the shared data (renders at azimuth 0 show
the front of cars, the seat of chairs, the nose of aeroplanes; gsnet cars' side mirrors are in
the front half), and on FlightGear aircraft (737-800, A345, Cub, F-15, Dragonfly: azimuth 0
shows the nose, azimuth 90 the left side with the nose on the image's left) and TORCS cars
(155-DTM, buggy, car1-stock2: azimuth 0 shows the grille and headlights). AC3D files are read
by :mod:`cyclecorr.render.ac3d` (object hierarchy, polygons, materials, textures).
``load_mesh(..., up=..., front=...)`` overrides the table.

A model listed in a **conventions table** (``MODELS.tsv``) in an ancestor folder takes its up
and front axes from there instead (and ``Mesh.kind`` is that folder's name), unless ``source``
is given: see :mod:`cyclecorr.render.frames` (``cad/car/open-sims``, whose up axis differs by
simulator and whose fronts the package's ``render/conventions/open-sims.tsv`` records).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .ac3d import AC3D_SUFFIXES, ac3d_parts, read_ac3d

__all__ = ["Mesh", "load_mesh", "list_meshes", "SOURCE_CONVENTIONS", "detect_source",
           "axes_rotation", "MeshError", "thickness"]


class MeshError(ValueError):
    """A model file is missing, malformed, empty or degenerate (the message names the file)."""


# source -> (up axis, front axis) in the source's coordinates. ShapeNetCore v2's
# model_normalized.obj faces −z: every shared ShapeNet chair has its backrest and 5 of 6
# aeroplanes their fin on the +z side (tests/test_render.py checks it on the shared data).
SOURCE_CONVENTIONS: dict[str, tuple[str, str]] = {
    "pascal3d": ("+z", "-y"),
    "shapenet": ("+y", "-z"),
    "gsnet": ("-y", "+z"),
    "obj": ("+y", "+z"),
    "ac3d": ("+y", "+z"),
    "flightgear": ("+y", "-x"),
    "torcs": ("+y", "+x"),
}

_AXES = {"x": 0, "y": 1, "z": 2}


def _axis_vector(spec: str) -> np.ndarray:
    s = spec.strip().lower()
    sign = -1.0 if s.startswith("-") else 1.0
    s = s.lstrip("+-")
    if s not in _AXES:
        raise ValueError(f"axis must be one of ±x, ±y, ±z, got {spec!r}")
    v = np.zeros(3)
    v[_AXES[s]] = sign
    return v


def axes_rotation(up: str, front: str) -> np.ndarray:
    """Rotation (3×3) taking source coordinates to canonical ones.

    ``up`` (e.g. ``"+y"``) becomes canonical +z and ``front`` (e.g. ``"+z"``) canonical −y;
    the third axis is fixed by det = +1.
    """
    u, f = _axis_vector(up), _axis_vector(front)
    if abs(float(u @ f)) > 0.5:
        raise ValueError(f"up {up!r} and front {front!r} must be different axes")
    # rows: where canonical x, y, z come from. canonical z = up, canonical y = −front,
    # canonical x = y × z (right-handed).
    cz, cy = u, -f
    cx = np.cross(cy, cz)
    return np.stack([cx, cy, cz])


@dataclass(eq=False)
class Mesh:
    """A triangle mesh in the canonical frame (z up, front −y, centred, bbox diagonal 1).

    Attributes:
        vertices: (V, 3) float32 canonical coordinates.
        faces: (F, 3) int64 vertex indices (0-based).
        keypoints: name → (3,) float64 canonical 3D keypoint (PASCAL3D+ models).
        source: the file it was loaded from ('' for in-memory meshes).
        kind: the :data:`SOURCE_CONVENTIONS` entry used ('array' for in-memory meshes).
        to_canonical: (4, 4) transform from file coordinates to canonical coordinates.
        parts: optional list of ``trimesh.Trimesh`` in canonical coordinates carrying the file's
            visuals (materials, UV textures), used for textured rendering.
    """

    vertices: np.ndarray
    faces: np.ndarray
    keypoints: dict = field(default_factory=dict)
    source: str = ""
    kind: str = "array"
    to_canonical: np.ndarray = field(default_factory=lambda: np.eye(4))
    parts: list | None = None

    def __post_init__(self):
        self.vertices = np.ascontiguousarray(self.vertices, dtype=np.float32)
        self.faces = np.ascontiguousarray(self.faces, dtype=np.int64)
        _validate(self.vertices, self.faces, self.source or "<array mesh>")
        self.keypoints = {str(k): np.asarray(v, dtype=np.float64).reshape(3)
                          for k, v in self.keypoints.items()}

    @classmethod
    def from_arrays(cls, vertices, faces, keypoints: dict | None = None,
                    normalize: bool = False) -> Mesh:
        """A mesh from arrays already in the canonical axes; ``normalize`` recentres and scales
        it to bbox diagonal 1 (keypoints follow)."""
        v = np.asarray(vertices, dtype=np.float64)
        kp = dict(keypoints or {})
        T = np.eye(4)
        if normalize:
            T = _normalizer(v, "<array mesh>")
            v = v @ T[:3, :3].T + T[:3, 3]
            kp = {k: T[:3, :3] @ np.asarray(p, float) + T[:3, 3] for k, p in kp.items()}
        return cls(v, np.asarray(faces), kp, "", "array", T)

    @property
    def radius(self) -> float:
        """Largest distance of a vertex from the origin."""
        return float(np.sqrt((self.vertices.astype(np.float64) ** 2).sum(1).max()))

    @property
    def textured(self) -> bool:
        return bool(self.parts) and any(
            getattr(p.visual, "kind", None) == "texture" for p in self.parts)

    def __repr__(self):
        return (f"Mesh({self.kind}, {len(self.vertices)} vertices, {len(self.faces)} faces, "
                f"{len(self.keypoints)} keypoints, source={self.source!r})")


def _validate(v: np.ndarray, f: np.ndarray, name: str) -> None:
    if v.ndim != 2 or v.shape[1] != 3:
        raise MeshError(f"{name}: vertices must have shape (V, 3), got {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3:
        raise MeshError(f"{name}: faces must have shape (F, 3), got {f.shape}")
    if len(v) == 0 or len(f) == 0:
        raise MeshError(f"{name}: empty mesh ({len(v)} vertices, {len(f)} faces)")
    if not np.isfinite(v).all():
        raise MeshError(f"{name}: vertices contain NaN or infinite values")
    if f.min() < 0 or f.max() >= len(v):
        raise MeshError(f"{name}: face indices out of range [0, {len(v) - 1}] "
                        f"(min {f.min()}, max {f.max()})")
    tri = v[f].astype(np.float64)
    area2 = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    if not (area2 > 0).any():
        raise MeshError(f"{name}: degenerate mesh (all {len(f)} faces have zero area)")


def _normalizer(v: np.ndarray, name: str) -> np.ndarray:
    """4×4 similarity: bbox centre → origin, bbox diagonal → 1."""
    lo, hi = v.min(0), v.max(0)
    diag = float(np.linalg.norm(hi - lo))
    if not math.isfinite(diag) or diag <= 0:
        raise MeshError(f"{name}: degenerate mesh (bounding box diagonal {diag})")
    T = np.eye(4)
    T[:3, :3] /= diag
    T[:3, 3] = -(lo + hi) / 2 / diag
    return T


def thickness(vertices: np.ndarray, faces: np.ndarray | None = None) -> float:
    """Extent of a mesh along its thinnest principal axis, over its bounding-box diagonal.

    0 for a single plane (in any orientation); real objects of the shared data measure ≥ 0.07
    (aircraft ≈ 0.14, cars and chairs more), FlightGear banners and light flares ≤ 0.002. Only
    vertices used by ``faces`` count (all when ``faces`` is None); at most 20,000 of them,
    evenly strided, enter the principal axes.
    """
    v = np.asarray(vertices, np.float64)
    if faces is not None and len(faces):
        v = v[np.unique(np.asarray(faces))]
    if len(v) < 3:
        return 0.0
    diag = float(np.linalg.norm(v.max(0) - v.min(0)))
    if not math.isfinite(diag) or diag <= 0:
        return 0.0
    c = v - v.mean(0)
    _, _, vt = np.linalg.svd(c[::max(1, len(c) // 20000)], full_matrices=False)
    proj = c @ vt[-1]
    return float((proj.max() - proj.min()) / diag)


def detect_source(path: str | os.PathLike) -> str:
    """Which :data:`SOURCE_CONVENTIONS` entry a file follows, from its name and folders."""
    p = Path(path)
    if p.suffix.lower() == ".json":
        return "pascal3d"
    parts = [s.lower() for s in p.parts]
    if p.suffix.lower() in AC3D_SUFFIXES:
        if "flightgear" in parts or "fgdata" in parts:
            return "flightgear"
        if p.suffix.lower() == ".acc" or any(s in ("torcs", "speed-dreams", "speed-dreams-2")
                                             for s in parts):
            return "torcs"
        return "ac3d"
    if p.name == "model_normalized.obj" or "shapenet" in parts or "shapenetcore" in parts:
        return "shapenet"
    if "gsnet" in parts or "apollocar3d" in parts:
        return "gsnet"
    return "obj"


def _load_pascal3d_json(path: Path):
    try:
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh)
    except json.JSONDecodeError as e:
        raise MeshError(f"{path}: malformed JSON ({e})") from None
    if not isinstance(d, dict) or "vertices" not in d or "faces" not in d:
        raise MeshError(f"{path}: not a PASCAL3D+ JSON model (needs 'vertices' and 'faces')")
    try:
        v = np.asarray(d["vertices"], dtype=np.float64)
        flat = np.asarray(d["faces"], dtype=np.int64).ravel()
    except (TypeError, ValueError) as e:
        raise MeshError(f"{path}: non-numeric vertices or faces ({e})") from None
    if v.size % 3:
        raise MeshError(f"{path}: 'vertices' length {v.size} is not a multiple of 3")
    v = v.reshape(-1, 3)
    # OFF-style polygons: n, i1..in, n, ...; triangulated as fans
    tris = []
    i = 0
    n_flat = len(flat)
    if n_flat and (flat[0::4] == 3).all() and n_flat % 4 == 0:
        tris = flat.reshape(-1, 4)[:, 1:]
    else:
        out = []
        while i < n_flat:
            n = int(flat[i])
            if n < 3 or i + 1 + n > n_flat:
                raise MeshError(f"{path}: malformed 'faces' list at position {i} (count {n})")
            poly = flat[i + 1:i + 1 + n]
            out.extend((poly[0], poly[k], poly[k + 1]) for k in range(1, n - 1))
            i += 1 + n
        tris = np.asarray(out, dtype=np.int64).reshape(-1, 3)
    kps = {}
    for name, p in (d.get("keypoints") or {}).items():
        try:
            kps[name] = np.array([p["x"], p["y"], p["z"]], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            raise MeshError(f"{path}: keypoint {name!r} must be {{x, y, z}}, got {p!r}") from None
    return v, np.asarray(tris, dtype=np.int64), kps


def _load_trimesh(path: Path):
    import trimesh  # on use: heavy (0.6 s), needed only for formats read through trimesh

    try:
        loaded = trimesh.load(str(path), process=False, maintain_order=True)
    except Exception as e:  # trimesh raises many types on garbage
        raise MeshError(f"{path}: cannot parse mesh file ({type(e).__name__}: {e})") from None
    if isinstance(loaded, trimesh.Scene):
        parts = [g for g in loaded.dump(concatenate=False) if isinstance(g, trimesh.Trimesh)]
    elif isinstance(loaded, trimesh.Trimesh):
        parts = [loaded]
    else:
        parts = []
    parts = [p for p in parts if len(p.faces) > 0]
    if not parts:
        raise MeshError(f"{path}: empty mesh (no triangles found)")
    v = np.concatenate([p.vertices for p in parts]).astype(np.float64)
    offs = np.cumsum([0] + [len(p.vertices) for p in parts[:-1]])
    f = np.concatenate([p.faces + o for p, o in zip(parts, offs)]).astype(np.int64)
    return v, f, parts


def _load_ac3d(path: Path):
    scene = read_ac3d(path)
    if len(scene.faces) == 0:
        sk = {k: v for k, v in scene.skipped.items() if v}
        raise MeshError(f"{path}: empty mesh (no polygons found"
                        + (f"; skipped: {sk}" if sk else "") + ")")
    order, parts = ac3d_parts(scene)
    # only the vertices that faces use (a file may hold vertices of lines or light objects)
    f = scene.faces[order]
    used, inv = np.unique(f, return_inverse=True)
    return scene.vertices[used].astype(np.float64), inv.reshape(-1, 3).astype(np.int64), parts


def load_mesh(path: str | os.PathLike, source: str | None = None, up: str | None = None,
              front: str | None = None, normalize: bool = True,
              min_thickness: float = 0.01) -> Mesh:
    """Load a CAD model into the canonical frame (z up, front −y, centred, bbox diagonal 1).

    Supported: PASCAL3D+ JSON (``.json``, with named 3D keypoints), Wavefront OBJ with MTL and
    textures (ShapeNetCore ``model_normalized.obj``, Sweet Home 3D, gsnet cars), AC3D (``.ac``,
    ``.acc``: FlightGear aircraft, TORCS cars; materials and textures, see
    :mod:`cyclecorr.render.ac3d`) and any other format trimesh reads (OFF, PLY, STL, GLB).
    ``source`` picks the axis convention from :data:`SOURCE_CONVENTIONS` (default:
    :func:`detect_source`); ``up``/``front`` override it.

    ``min_thickness``: a model thinner than this along its thinnest principal axis (a fraction
    of its bounding-box diagonal, :func:`thickness`) is refused: a single plane (a banner, a
    billboard, a light flare) has no area seen edge-on, which breaks the crop of a render and the
    retrieval; 0 accepts flat models.

    The faces' winding does not matter: both renderers draw both sides and light every face
    from the side the camera sees, so an inside-out model renders exactly like its original.

    Raises:
        FileNotFoundError: the file does not exist.
        MeshError (a ValueError): the file is malformed, empty, has NaN vertices, out-of-range
            faces, or is degenerate (zero-area faces only / flat bounding box / a single plane).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh file not found: {path}")
    kind = source or detect_source(path)
    if kind not in SOURCE_CONVENTIONS:
        raise ValueError(f"unknown mesh source {kind!r}; known: {sorted(SOURCE_CONVENTIONS)}")
    cu, cf = SOURCE_CONVENTIONS[kind]
    if source is None:  # a conventions table in an ancestor folder (see frames.py) wins
        kind, cu, cf = _table_frame(path, kind, cu, cf, up, front)
    R = axes_rotation(up or cu, front or cf)
    parts = None
    kps = {}
    if path.suffix.lower() == ".json":
        v, f, kps = _load_pascal3d_json(path)
    elif path.suffix.lower() in AC3D_SUFFIXES:
        v, f, parts = _load_ac3d(path)
    else:
        v, f, parts = _load_trimesh(path)
    _validate(v, f, str(path))
    if min_thickness > 0:
        th = thickness(v, f)
        if th < min_thickness:
            raise MeshError(f"{path}: flat mesh (thickness {th:.2g} of its size, below "
                            f"{min_thickness:g}): a single plane has no area seen edge-on")
    vr = v @ R.T
    T = np.eye(4)
    T[:3, :3] = R
    if normalize:
        N = _normalizer(vr, str(path))
        T = N @ T
    v_can = v @ T[:3, :3].T + T[:3, 3]
    kps = {k: T[:3, :3] @ p + T[:3, 3] for k, p in kps.items()}
    if parts is not None:
        parts = [p.copy() for p in parts]
        for p in parts:
            p.apply_transform(T)
    return Mesh(v_can, f, kps, str(path), kind, T, parts)


def _table_frame(path: Path, kind: str, cu: str, cf: str, up, front):
    """(kind, up, front) from a conventions table listing ``path``, else unchanged."""
    from .frames import model_frame

    try:
        fr = model_frame(path)
    except ValueError as e:
        raise MeshError(str(e)) from None
    if fr is None:
        return kind, cu, cf
    if fr.front is None and front is None:
        raise MeshError(f"{path}: {fr.table} gives its up axis ({fr.up}) but no table decides "
                        f"its front (along {fr.length or '?'}): run scripts/decide_fronts.py or "
                        "pass front=")
    return fr.collection, fr.up, fr.front or front


_MESH_SUFFIXES = {".obj", ".off", ".ply", ".stl", ".glb", ".gltf", *AC3D_SUFFIXES}


def list_meshes(folder: str | os.PathLike) -> list[Path]:
    """Every supported model file under ``folder`` (recursively, sorted).

    Finds OBJ files (including ShapeNetCore ``<synset>/<id>/models/model_normalized.obj``),
    AC3D files (``.ac``, ``.acc``), other trimesh formats, and PASCAL3D+ JSON models (JSON files
    with ``vertices`` and ``faces``; ShapeNet's ``model_normalized.json`` metadata files are
    skipped).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"mesh folder not found: {folder}")
    out = []
    for root, _dirs, files in os.walk(folder):
        for name in files:
            p = Path(root) / name
            suf = p.suffix.lower()
            if suf in _MESH_SUFFIXES:
                out.append(p)
            elif suf == ".json" and name != "model_normalized.json":
                try:
                    with open(p, encoding="utf-8") as fh:
                        head = fh.read(4096)
                except OSError:
                    continue
                if '"vertices"' in head or '"faces"' in head:
                    out.append(p)
    return sorted(out)
