"""Reading AC3D models (``.ac``, and the ``.acc`` variant of TORCS / Speed Dreams).

An AC3D file is text: a header ``AC3Db`` (or ``AC3Dc`` …), a palette of ``MATERIAL`` lines
(or multi-line ``MAT … ENDMAT`` blocks), then one ``OBJECT`` tree. Each object may carry
``name``, ``data`` (a byte count followed by that many characters, skipped), ``texture``,
``texrep`` / ``texoff`` (texture-coordinate scale and offset), ``rot`` (3×3 rotation, row-major)
and ``loc`` (translation), ``numvert`` vertices, ``numsurf`` surfaces and ``kids`` (the number of
child objects that follow). What is read:

- **transforms**: a vertex ``v`` of an object lands at ``T_parent(R·v + loc)`` where ``T_parent``
  is the parent's transform (so ``rot``/``loc`` are relative to the parent; the result is in the
  file's top-level frame);
- **surfaces**: ``SURF flags`` with the type in the low 4 bits: 0 = polygon (triangulated, see
  :func:`triangulate_polygon`), 4 = triangle strip (the ``.acc`` variant), 1 = closed line,
  2 = line (lines are skipped and counted: they have no area; so are other types); ``mat i``
  picks the palette entry, ``refs n`` is followed by ``n`` lines ``index u v`` (extra
  texture-coordinate pairs of multi-texture ``.acc`` files are ignored);
- **kids**: a file that ends before all announced kids is read up to its end (counted in
  ``skipped["missing_kids"]``), as other AC3D readers do;
- **materials**: the ``rgb`` colour of a surface's material becomes its face colour; a surface
  of a fully transparent material (``trans`` ≥ 0.99) is skipped and counted;
- **textures**: ``texture "file"`` of an object, looked up beside the file, in its parent folder,
  in ``Textures/`` and ``Textures/default/`` of both (and the same around the target of a
  symbolic link), then any ``Textures/*/`` (FlightGear keeps
  liveries there), also with the other usual extensions (``.png``, ``.rgb``, ``.rgba``, ``.sgi``,
  ``.jpg``, ``.bmp``); a texture that cannot be found or read leaves the material colour (it is
  recorded in :attr:`AC3DScene.missing_textures`). Texture coordinates are
  ``texoff + texrep · (u, v)``, with v up (OpenGL convention, as trimesh's).

Malformed numbers, indices out of range and truncated files raise
:class:`cyclecorr.render.mesh.MeshError` naming the file and the line.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["AC3DScene", "read_ac3d", "triangulate_polygon", "ac3d_parts", "AC3D_SUFFIXES"]

#: file suffixes read as AC3D
AC3D_SUFFIXES = (".ac", ".acc")

_TOKEN = re.compile(r'"[^"]*"|\S+')
_TEX_EXTS = (".png", ".rgb", ".rgba", ".sgi", ".jpg", ".jpeg", ".bmp")
_DEFAULT_RGB = (0.8, 0.8, 0.8)


def _error(path, msg):
    from .mesh import MeshError  # here, not at the top: mesh imports this module

    return MeshError(f"{path}: {msg}")


@dataclass
class AC3DScene:
    """The triangles of an AC3D file, in the file's top-level frame.

    Attributes:
        vertices: (V, 3) float64, every object's vertices after its (and its parents')
            ``rot``/``loc``.
        faces: (F, 3) int64 triangles (a polygon's triangles keep its winding).
        uv: (F, 3, 2) float64 texture coordinates of each corner (0 where untextured).
        colors: (F, 3) float64 material colour in [0, 1] of each triangle.
        texture: (F,) int64 index into ``textures`` (−1: untextured).
        textures: resolved texture files (``Path``) that were found and read.
        images: the texture images (PIL, RGB), parallel to ``textures``.
        missing_textures: texture names given in the file but not found or unreadable.
        objects: names of the objects with geometry.
        skipped: counts of what was not turned into triangles: ``lines`` (closed lines and
            lines), ``transparent`` (surfaces of fully transparent materials), ``short``
            (polygons with fewer than 3 references), ``unknown_type`` (other surface types),
            ``missing_kids`` (objects announced by ``kids`` but absent at the end of the file).
    """

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    colors: np.ndarray
    texture: np.ndarray
    textures: list = field(default_factory=list)
    images: list = field(default_factory=list)
    missing_textures: list = field(default_factory=list)
    objects: list = field(default_factory=list)
    skipped: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- triangulation
def triangulate_polygon(points: np.ndarray) -> np.ndarray:
    """Triangulate one planar (or nearly planar) polygon by ear clipping.

    Args:
        points: (n, 3) corners in order (either winding; convex or concave, n ≥ 3).

    Returns:
        (n − 2, 3) int64 indices into ``points`` (fewer when repeated corners are dropped); each
        triangle keeps the polygon's winding. The polygon is projected onto the plane of its
        Newell normal; a polygon without area (all corners collinear) is cut as a fan, and so is
        what remains when no ear can be found (a self-intersecting outline).
    """
    P = np.asarray(points, np.float64).reshape(-1, 3)
    n = len(P)
    if n < 3:
        return np.zeros((0, 3), np.int64)
    if n == 3:
        return np.array([[0, 1, 2]], np.int64)
    # drop a corner equal to the one before it (cyclically)
    keep = np.flatnonzero(~(P == np.roll(P, 1, axis=0)).all(1))
    if len(keep) < 3:
        return np.zeros((0, 3), np.int64)
    Q = P[keep]
    C = Q - Q.mean(0)
    # Newell normal: Σ c_i × c_(i+1); its direction follows the winding, its length is 2·area
    normal = np.cross(C, np.roll(C, -1, axis=0)).sum(0)
    scale = float(np.abs(C).max())
    if not np.isfinite(normal).all() or np.linalg.norm(normal) <= 1e-12 * max(scale, 1e-30) ** 2:
        return np.array([[keep[0], keep[k], keep[k + 1]] for k in range(1, len(keep) - 1)],
                        np.int64)
    k = int(np.argmax(np.abs(normal)))
    a, b = (k + 1) % 3, (k + 2) % 3
    if normal[k] < 0:
        a, b = b, a  # the projected outline is counter-clockwise
    xy = C[:, [a, b]]
    eps = 1e-12 * max(scale, 1e-30) ** 2
    if len(Q) == 4:  # most polygons: a convex quad is two triangles
        e = np.roll(xy, -1, axis=0) - xy
        turn = e[:, 0] * np.roll(e, -1, axis=0)[:, 1] - e[:, 1] * np.roll(e, -1, axis=0)[:, 0]
        if (turn > eps).all():
            return keep[np.array([[0, 1, 2], [0, 2, 3]])]
    idx = list(range(len(Q)))
    tris = []

    def cross(o, p, q):
        return (p[0] - o[0]) * (q[1] - o[1]) - (p[1] - o[1]) * (q[0] - o[0])

    while len(idx) > 3:
        m = len(idx)
        R = xy[idx]
        found = False
        for j in range(m):
            ip, ic, iq = idx[j - 1], idx[j], idx[(j + 1) % m]
            p, c, q = xy[ip], xy[ic], xy[iq]
            if cross(p, c, q) <= eps:
                continue  # reflex or flat corner
            # another remaining corner inside (or on) the candidate triangle blocks the ear;
            # corners coincident with the triangle's own do not
            others = np.ones(m, bool)
            others[[(j - 1) % m, j, (j + 1) % m]] = False
            S = R[others]
            S = S[~((S == p).all(1) | (S == c).all(1) | (S == q).all(1))]
            if len(S):
                d1 = (c[0] - p[0]) * (S[:, 1] - p[1]) - (c[1] - p[1]) * (S[:, 0] - p[0])
                d2 = (q[0] - c[0]) * (S[:, 1] - c[1]) - (q[1] - c[1]) * (S[:, 0] - c[0])
                d3 = (p[0] - q[0]) * (S[:, 1] - q[1]) - (p[1] - q[1]) * (S[:, 0] - q[0])
                if ((d1 >= -eps) & (d2 >= -eps) & (d3 >= -eps)).any():
                    continue
            tris.append((ip, ic, iq))
            del idx[j]
            found = True
            break
        if not found:
            # no ear (self-intersecting or degenerate remainder): cut the rest as a fan
            tris += [(idx[0], idx[t], idx[t + 1]) for t in range(1, len(idx) - 1)]
            idx = []
            break
    if len(idx) == 3:
        tris.append(tuple(idx))
    out = np.array(tris, np.int64).reshape(-1, 3)
    return np.asarray(keep, np.int64)[out]


def _strip(n: int) -> np.ndarray:
    """Triangles of a triangle strip of ``n`` references, every other one turned so that all
    keep the first one's winding: (0, 1, 2), (2, 1, 3), (2, 3, 4), …"""
    k = np.arange(max(n - 2, 0))
    t = np.stack([k, k + 1, k + 2], 1)
    odd = k % 2 == 1
    t[odd] = t[odd][:, [1, 0, 2]]
    return t.astype(np.int64)


# ----------------------------------------------------------------------------- parsing
class _Reader:
    def __init__(self, text: str, path):
        self.text = text
        self.pos = 0
        self.line_no = 0
        self.path = path

    def line(self) -> str | None:
        """The next non-empty line (stripped), or None at the end."""
        while self.pos < len(self.text):
            end = self.text.find("\n", self.pos)
            if end < 0:
                end = len(self.text)
            s = self.text[self.pos:end]
            self.pos = end + 1
            self.line_no += 1
            s = s.strip()
            if s:
                return s
        return None

    def skip_chars(self, n: int) -> None:
        """Skip ``n`` characters (a ``data`` block) and the line break after them."""
        chunk = self.text[self.pos:self.pos + n]
        self.line_no += chunk.count("\n")
        self.pos += n
        if self.text.startswith("\r\n", self.pos):
            self.pos += 2
            self.line_no += 1
        elif self.text.startswith("\n", self.pos):
            self.pos += 1
            self.line_no += 1

    def fail(self, msg: str):
        return _error(self.path, f"line {self.line_no}: {msg}")

    def floats(self, toks, n: int, what: str) -> list[float]:
        try:
            vals = [float(t) for t in toks[:n]]
        except ValueError:
            raise self.fail(f"{what}: expected {n} numbers, got {' '.join(toks)!r}") from None
        if len(vals) < n:
            raise self.fail(f"{what}: expected {n} numbers, got {' '.join(toks)!r}")
        return vals

    def integer(self, tok: str | None, what: str) -> int:
        try:
            if tok is None:
                raise ValueError
            t = tok.strip()
            return int(t, 16) if t.lower().startswith("0x") else int(t)
        except ValueError:
            raise self.fail(f"{what}: expected an integer, got {tok!r}") from None


def _unquote(s: str) -> str:
    return s[1:-1] if len(s) >= 2 and s[0] == s[-1] == '"' else s


def _material(toks: list[str], reader: _Reader) -> tuple[tuple, float]:
    rgb, trans = _DEFAULT_RGB, 0.0
    for i, t in enumerate(toks):
        if t == "rgb":
            rgb = tuple(reader.floats(toks[i + 1:i + 4], 3, "MATERIAL rgb"))
        elif t == "trans":
            trans = reader.floats(toks[i + 1:i + 2], 1, "MATERIAL trans")[0]
    return rgb, trans


def _find_texture(ac_path: Path, name: str) -> Path | None:
    name = name.replace("\\", "/")
    base = os.path.basename(name)
    stem = os.path.splitext(base)[0]
    folders = []
    for d in dict.fromkeys((ac_path.parent, ac_path.resolve().parent)):  # a link, its target
        folders += [d, d.parent]
    cands = []
    for f in folders:
        cands += [f / name, f / base, f / "Textures" / base, f / "Textures" / "default" / base,
                  f / "textures" / base]
    for f in folders:
        for sub in (f / "Textures", f / "textures"):
            if sub.is_dir():
                cands += [x / base for x in sorted(sub.iterdir()) if x.is_dir()]
    for c in cands:
        if c.is_file():
            return c
    for c in cands:  # the same name with another image extension
        for ext in _TEX_EXTS:
            alt = c.with_name(stem + ext)
            if alt.is_file():
                return alt
    return None


def read_ac3d(path: str | os.PathLike, load_textures: bool = True) -> AC3DScene:
    """Parse an AC3D file into triangles with colours and texture coordinates (module doc).

    Raises:
        FileNotFoundError: no such file.
        MeshError: not an AC3D file, or malformed (the message names the file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh file not found: {path}")
    with open(path, "rb") as fh:
        raw = fh.read()
    text = raw.decode("latin-1")
    r = _Reader(text, path)
    head = r.line()
    if head is None or not head.startswith("AC3D"):
        raise _error(path, f"not an AC3D file (first line {head!r}, expected 'AC3D…')")
    materials: list[tuple[tuple, float]] = []
    verts: list[np.ndarray] = []
    # accepted surfaces, triangulated at the end (quads in one batch): global vertex indices,
    # texture coordinates, colour, texture, type
    polys: list[tuple[np.ndarray, np.ndarray, tuple, int, int]] = []
    tex_index: dict[str, int] = {}
    textures: list[Path] = []
    images: list = []
    missing: list[str] = []
    objects: list[str] = []
    skipped = {"lines": 0, "transparent": 0, "short": 0, "unknown_type": 0,
               "missing_kids": 0}
    n_vert = [0]

    def texture_id(name: str) -> int:
        if name in tex_index:
            return tex_index[name]
        tid = -1
        if load_textures:
            p = _find_texture(path, name)
            if p is not None:
                try:
                    with Image.open(p) as im:
                        img = im.convert("RGB")
                    textures.append(p)
                    images.append(img)
                    tid = len(textures) - 1
                except Exception:  # unreadable image: keep the material colour
                    tid = -1
            if tid < 0:
                missing.append(name)
        tex_index[name] = tid
        return tid

    def read_object(first: str, parent: np.ndarray) -> None:
        T = np.eye(4)
        name = first.split(None, 1)[1] if len(first.split()) > 1 else ""
        tex, has_tex = -1, False
        rep = np.ones(2)
        off = np.zeros(2)
        local_v = None
        base = None
        while True:
            s = r.line()
            if s is None:
                raise r.fail("unexpected end of file inside an OBJECT (missing 'kids')")
            toks = _TOKEN.findall(s)
            key = toks[0]
            if key == "name":
                name = _unquote(" ".join(toks[1:]))
            elif key == "data":
                r.skip_chars(r.integer(toks[1] if len(toks) > 1 else None, "data"))
            elif key == "texture":
                if len(toks) > 1 and not has_tex:  # the first (base) one of multi-texture files
                    tex, has_tex = texture_id(_unquote(toks[1])), True
            elif key == "texrep":
                rep = np.array(r.floats(toks[1:], 2, "texrep"))
            elif key == "texoff":
                off = np.array(r.floats(toks[1:], 2, "texoff"))
            elif key == "rot":
                T[:3, :3] = np.array(r.floats(toks[1:], 9, "rot")).reshape(3, 3)
            elif key == "loc":
                T[:3, 3] = r.floats(toks[1:], 3, "loc")
            elif key == "numvert":
                nv = r.integer(toks[1] if len(toks) > 1 else None, "numvert")
                v = np.empty((nv, 3))
                for i in range(nv):
                    line = r.line()
                    if line is None:
                        raise r.fail(f"unexpected end of file in vertex {i} of {nv}")
                    v[i] = r.floats(line.split(), 3, "vertex")
                local_v = v
                M = parent @ T
                vw = v @ M[:3, :3].T + M[:3, 3]
                base = n_vert[0]
                verts.append(vw)
                n_vert[0] += nv
            elif key == "numsurf":
                ns = r.integer(toks[1] if len(toks) > 1 else None, "numsurf")
                nv = 0 if local_v is None else len(local_v)
                if ns and local_v is None:
                    raise r.fail("surfaces before 'numvert'")
                added = False
                for _ in range(ns):
                    added |= read_surface(nv, base, tex, rep, off)
                if added:
                    objects.append(_unquote(name))
            elif key == "kids":
                nk = r.integer(toks[1] if len(toks) > 1 else None, "kids")
                M = parent @ T
                for _ in range(nk):
                    s2 = r.line()
                    if s2 is None:  # fewer kids than announced (some exporters): keep them
                        skipped["missing_kids"] += 1
                        return
                    if not s2.startswith("OBJECT"):
                        raise r.fail(f"expected OBJECT, got {s2[:40]!r}")
                    read_object(s2, M)
                return
            # other tokens (crease, url, subdiv, hidden, locked, folded, shader …) are ignored

    def read_surface(nv, base, tex, rep, off) -> bool:
        s = r.line()
        if s is None or not s.startswith("SURF"):
            raise r.fail(f"expected SURF, got {s!r}")
        flags = r.integer(s.split()[1] if len(s.split()) > 1 else None, "SURF flags")
        mat = -1
        while True:
            s = r.line()
            if s is None:
                raise r.fail("unexpected end of file inside a SURF")
            toks = s.split()
            if toks[0] == "mat":
                mat = r.integer(toks[1] if len(toks) > 1 else None, "mat")
            elif toks[0] == "refs":
                nref = r.integer(toks[1] if len(toks) > 1 else None, "refs")
                break
            else:
                continue  # unknown per-surface token
        idx = np.empty(nref, np.int64)
        uv = np.zeros((nref, 2))
        for k in range(nref):
            line = r.line()
            if line is None:
                raise r.fail(f"unexpected end of file in reference {k} of {nref}")
            toks = line.split()
            idx[k] = r.integer(toks[0], "vertex reference")
            if len(toks) >= 3:
                uv[k] = r.floats(toks[1:3], 2, "texture coordinates")
        if nref and (idx.min() < 0 or idx.max() >= nv):
            raise r.fail(f"vertex reference out of range [0, {nv - 1}] "
                         f"(min {idx.min()}, max {idx.max()})")
        kind = flags & 0xF
        if kind in (1, 2):
            skipped["lines"] += 1
            return False
        if kind not in (0, 4):
            skipped["unknown_type"] += 1
            return False
        if nref < 3:
            skipped["short"] += 1
            return False
        if 0 <= mat < len(materials):
            rgb, trans = materials[mat]
        elif mat >= len(materials) and materials:
            raise r.fail(f"material {mat} out of range (palette of {len(materials)})")
        else:
            rgb, trans = _DEFAULT_RGB, 0.0
        if trans >= 0.99:
            skipped["transparent"] += 1
            return False
        polys.append((base + idx, off + rep * uv, rgb, tex, kind))
        return True

    while True:
        s = r.line()
        if s is None:
            break
        toks = _TOKEN.findall(s)
        if toks[0] == "MATERIAL":
            materials.append(_material(toks[2:], r))
        elif toks[0] == "MAT":  # multi-line material block
            rgb, trans = _DEFAULT_RGB, 0.0
            while True:
                s2 = r.line()
                if s2 is None:
                    raise r.fail("unexpected end of file inside MAT")
                if s2.startswith("ENDMAT"):
                    break
                t2 = s2.split()
                m_rgb, m_trans = _material(t2, r)
                if t2[0] == "rgb":
                    rgb = m_rgb
                if t2[0] == "trans":
                    trans = m_trans
            materials.append((rgb, trans))
        elif toks[0] == "OBJECT":
            read_object(s, np.eye(4))
        # anything else at top level is ignored
    V = np.concatenate(verts) if verts else np.zeros((0, 3))
    tris = _triangulate_all(V, polys)
    F = [p[0][t] for p, t in zip(polys, tris)]
    UV = [p[1][t] for p, t in zip(polys, tris)]
    counts = np.array([len(t) for t in tris], np.int64)
    return AC3DScene(
        vertices=V, faces=np.concatenate(F).reshape(-1, 3) if F else np.zeros((0, 3), np.int64),
        uv=np.concatenate(UV).reshape(-1, 3, 2) if UV else np.zeros((0, 3, 2)),
        colors=np.clip(np.repeat(np.array([p[2] for p in polys], np.float64).reshape(-1, 3),
                                 counts, axis=0), 0.0, 1.0),
        texture=np.repeat(np.array([p[3] for p in polys], np.int64), counts),
        textures=textures, images=images, missing_textures=missing, objects=objects,
        skipped=skipped)


_TRI = np.array([[0, 1, 2]], np.int64)
_QUAD = np.array([[0, 1, 2], [0, 2, 3]], np.int64)


def _triangulate_all(V: np.ndarray, polys: list) -> list[np.ndarray]:
    """Triangles (local corner indices) of every accepted surface: strips by
    :func:`_strip`, triangles as they are, convex quads (all tested at once: every corner turns
    the same way about the quad's Newell normal, no repeated corner) as two triangles, every
    other polygon by :func:`triangulate_polygon`."""
    out: list = [None] * len(polys)
    n = np.array([len(p[0]) for p in polys], np.int64)
    kind = np.array([p[4] for p in polys], np.int64)
    quads = np.flatnonzero((kind == 0) & (n == 4))
    if len(quads):
        X = V[np.stack([polys[j][0] for j in quads])]  # (Q, 4, 3)
        C = X - X.mean(1, keepdims=True)
        N = np.cross(C, np.roll(C, -1, axis=1)).sum(1)
        e = np.roll(X, -1, axis=1) - X
        turn = (np.cross(e, np.roll(e, -1, axis=1)) * N[:, None, :]).sum(2)
        scale = np.abs(C).max((1, 2))
        ok = ((turn > 1e-12 * scale[:, None] ** 4).all(1)
              & ~(X == np.roll(X, 1, axis=1)).all(2).any(1))
        for j in quads[ok]:
            out[j] = _QUAD
    for j, p in enumerate(polys):
        if out[j] is not None:
            continue
        if kind[j] == 4:
            out[j] = _strip(n[j])
        elif n[j] == 3:
            out[j] = _TRI
        else:
            out[j] = triangulate_polygon(V[p[0]])
    return out


def ac3d_parts(scene: AC3DScene) -> tuple[np.ndarray, list]:
    """Group a scene's triangles into ``trimesh.Trimesh`` parts for rendering.

    Returns ``(order, parts)``: ``order`` (F,) is the permutation of ``scene.faces`` that the
    parts follow (the mesh's faces must be ``scene.faces[order]``), ``parts`` are one part per
    texture (``TextureVisuals``: corner texture coordinates, the image, the material colour of
    the first face as its diffuse colour) and one part of the untextured triangles with their
    material colours as face colours. Every part has one vertex per triangle corner.
    """
    import trimesh  # on use: heavy (0.6 s), kept out of the command line's start-up

    V, F = scene.vertices, scene.faces
    parts, order = [], []
    for t in sorted(set(scene.texture.tolist())):
        sel = np.flatnonzero(scene.texture == t)
        if len(sel) == 0:
            continue
        corners = V[F[sel]].reshape(-1, 3)
        tri = np.arange(3 * len(sel), dtype=np.int64).reshape(-1, 3)
        if t >= 0:
            col = np.append(np.rint(scene.colors[sel[0]] * 255), 255).astype(np.uint8)
            mat = trimesh.visual.material.SimpleMaterial(image=scene.images[t], diffuse=col)
            vis = trimesh.visual.TextureVisuals(uv=scene.uv[sel].reshape(-1, 2), material=mat)
        else:
            fc = np.concatenate([np.rint(scene.colors[sel] * 255),
                                 np.full((len(sel), 1), 255)], 1).astype(np.uint8)
            vis = trimesh.visual.ColorVisuals(face_colors=fc)
        parts.append(trimesh.Trimesh(corners, tri, visual=vis, process=False))
        order.append(sel)
    return (np.concatenate(order) if order else np.zeros(0, np.int64)), parts
