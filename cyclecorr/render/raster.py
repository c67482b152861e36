"""A z-buffer triangle rasteriser in numba (no OpenGL needed), with Lambert shading and UV
textures computed in numpy.

``rasterize(xs, ys, zinv, faces, H, W)`` samples every pixel centre ``(px, py)`` (integers)
inside each projected triangle (edges included) and keeps the face with the largest
``1/z`` (nearest). ``1/z`` is interpolated linearly in screen space, which is exact for a
perspective projection, so the depth of a pixel is the exact ray–triangle intersection.
"""
from __future__ import annotations

import numpy as np

try:
    import numba

    _njit = numba.njit(cache=True, nogil=True)
except ImportError:  # pragma: no cover - numba is a dependency; this keeps import working
    numba = None

    def _njit(f):
        return f

__all__ = ["rasterize", "MeshShading", "shade", "face_colors", "surface", "to_camera",
           "visibility_buffer"]


@_njit
def _raster_kernel(xs, ys, zinv, faces, H, W, fid, zbuf):
    F = faces.shape[0]
    for f in range(F):
        i0 = faces[f, 0]
        i1 = faces[f, 1]
        i2 = faces[f, 2]
        x0 = xs[i0]
        y0 = ys[i0]
        x1 = xs[i1]
        y1 = ys[i1]
        x2 = xs[i2]
        y2 = ys[i2]
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        if area == 0.0 or not np.isfinite(area):
            continue
        xmin = min(x0, min(x1, x2))
        xmax = max(x0, max(x1, x2))
        ymin = min(y0, min(y1, y2))
        ymax = max(y0, max(y1, y2))
        cx0 = max(int(np.ceil(xmin)), 0)
        cx1 = min(int(np.floor(xmax)), W - 1)
        cy0 = max(int(np.ceil(ymin)), 0)
        cy1 = min(int(np.floor(ymax)), H - 1)
        if cx0 > cx1 or cy0 > cy1:
            continue
        inv = 1.0 / area
        # barycentrics are affine in the pixel position: w = A·px + B·py + C
        a0 = (y1 - y2) * inv
        b0 = (x2 - x1) * inv
        c0 = (x1 * y2 - x2 * y1) * inv
        a1 = (y2 - y0) * inv
        b1 = (x0 - x2) * inv
        c1 = (x2 * y0 - x0 * y2) * inv
        z2 = zinv[i2]
        dz0 = zinv[i0] - z2
        dz1 = zinv[i1] - z2
        eps = -1e-9
        for py in range(cy0, cy1 + 1):
            w0 = a0 * cx0 + b0 * py + c0
            w1 = a1 * cx0 + b1 * py + c1
            for px in range(cx0, cx1 + 1):
                if w0 >= eps and w1 >= eps and 1.0 - w0 - w1 >= eps:
                    z = z2 + dz0 * w0 + dz1 * w1
                    if z > zbuf[py, px]:
                        zbuf[py, px] = z
                        fid[py, px] = f
                w0 += a0
                w1 += a1


def rasterize(xs: np.ndarray, ys: np.ndarray, zinv: np.ndarray, faces: np.ndarray, H: int,
              W: int) -> tuple[np.ndarray, np.ndarray]:
    """Z-buffer rasterisation of projected vertices.

    Args:
        xs, ys: (V,) float64 pixel coordinates (pixel centres at integers).
        zinv: (V,) float64 inverse camera depth 1/z (> 0 for points in front).
        faces: (F, 3) int64.
        H, W: output size.

    Returns:
        ``(face_id (H, W) int32, -1 on background; zinv (H, W) float64, 0 on background)``.
    """
    fid = np.full((H, W), -1, np.int32)
    zbuf = np.zeros((H, W), np.float64)
    _raster_kernel(np.ascontiguousarray(xs, np.float64), np.ascontiguousarray(ys, np.float64),
                   np.ascontiguousarray(zinv, np.float64), np.ascontiguousarray(faces, np.int64),
                   int(H), int(W), fid, zbuf)
    return fid, zbuf


class MeshShading:
    """Per-face appearance of a mesh: albedo colours, optional UVs + texture images, normals.

    Built from ``mesh.parts`` (trimesh visuals: UV textures, face/vertex colours, material
    colours), whose faces are, in order, ``mesh.faces``; a mesh without parts is light grey.
    """

    DEFAULT = np.array([0.7, 0.7, 0.72])

    def __init__(self, mesh):
        v = mesh.vertices.astype(np.float64)
        f = mesh.faces
        n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
        ln = np.linalg.norm(n, axis=1, keepdims=True)
        self.normals = n / np.where(ln > 0, ln, 1.0)
        F = len(f)
        self.albedo = np.tile(self.DEFAULT, (F, 1))
        self.tex_id = np.full(F, -1, np.int32)
        self.uv = np.zeros((F, 3, 2), np.float64)
        self.textures: list[np.ndarray] = []
        parts = mesh.parts or []
        if parts and sum(len(p.faces) for p in parts) == F:
            off = 0
            for p in parts:
                nf = len(p.faces)
                self._from_part(p, slice(off, off + nf))
                off += nf

    def _from_part(self, p, sl):
        vis = getattr(p, "visual", None)
        kind = getattr(vis, "kind", None)
        if kind == "texture":
            mat = getattr(vis, "material", None)
            img = None
            for attr in ("image", "baseColorTexture"):
                img = getattr(mat, attr, None) if mat is not None else None
                if img is not None:
                    break
            col = None
            for attr in ("main_color", "diffuse", "baseColorFactor"):
                c = getattr(mat, attr, None) if mat is not None else None
                if c is not None:
                    col = np.asarray(c, np.float64).ravel()[:3]
                    col = col / 255.0 if col.max() > 1.0 else col
                    break
            if col is not None:
                self.albedo[sl] = col
            uv = getattr(vis, "uv", None)
            if img is not None and uv is not None and len(uv) == len(p.vertices):
                # texels are drawn opaque: a texture's alpha blends it over the material's
                # diffuse colour (VDrift body textures are transparent where the paint shows)
                rgba = np.asarray(img.convert("RGBA"), np.float32) / 255.0
                base = col if col is not None else self.DEFAULT
                a = rgba[..., 3:]
                arr = (rgba[..., :3] * a + base.astype(np.float32) * (1.0 - a)).astype(np.float32)
                self.textures.append(arr)
                self.tex_id[sl] = len(self.textures) - 1
                self.uv[sl] = np.asarray(uv, np.float64)[p.faces]
        elif kind in ("face", "vertex"):
            fc = np.asarray(vis.face_colors, np.float64)[:, :3] / 255.0
            if len(fc) == sl.stop - sl.start:
                self.albedo[sl] = fc


def shade(shading: MeshShading, fid: np.ndarray, points: np.ndarray, cam_center: np.ndarray,
          light_dir_world: np.ndarray, intensity: float, ambient: float, color,
          vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Lambert shading of foreground pixels: ``albedo · (ambient + intensity/π · max(0, n·l))
    · colour``, with the face normal turned towards the camera. Returns (N, 3) in [0, 1] for the
    pixels where ``fid >= 0`` (row-major order)."""
    m = fid >= 0
    f = fid[m]
    X = points[m].astype(np.float64)
    n = shading.normals[f]
    flip = ((cam_center - X) * n).sum(1) < 0
    n[flip] *= -1
    lam = np.clip(n @ light_dir_world, 0.0, None)
    albedo = shading.albedo[f].copy()
    tex = shading.tex_id[f]
    has = tex >= 0
    if has.any():
        fh = f[has]
        tri = vertices[faces[fh]].astype(np.float64)
        Xh = X[has]
        # barycentrics of the exact surface point in its triangle
        e0, e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], Xh - tri[:, 0]
        d00 = (e0 * e0).sum(1)
        d01 = (e0 * e1).sum(1)
        d11 = (e1 * e1).sum(1)
        d20 = (e2 * e0).sum(1)
        d21 = (e2 * e1).sum(1)
        den = d00 * d11 - d01 * d01
        den = np.where(den != 0, den, 1.0)
        b1 = (d11 * d20 - d01 * d21) / den
        b2 = (d00 * d21 - d01 * d20) / den
        b0 = 1.0 - b1 - b2
        uv = shading.uv[fh]
        u = b0 * uv[:, 0, 0] + b1 * uv[:, 1, 0] + b2 * uv[:, 2, 0]
        v = b0 * uv[:, 0, 1] + b1 * uv[:, 1, 1] + b2 * uv[:, 2, 1]
        col = np.empty((len(fh), 3))
        th = tex[has]
        for t in np.unique(th):
            sel = th == t
            img = shading.textures[t]
            Ht, Wt = img.shape[:2]
            xi = np.floor(np.mod(u[sel], 1.0) * Wt).astype(np.int64) % Wt
            yi = np.floor((1.0 - np.mod(v[sel], 1.0)) * Ht).astype(np.int64) % Ht
            col[sel] = img[yi, xi, :3]
        albedo[has] = col
    light = ambient + intensity / np.pi * lam
    out = albedo * light[:, None] * np.asarray(color, np.float64)[None]
    return np.clip(out, 0.0, 1.0)


@_njit
def _surface_kernel(fid, zbuf, K, R, C, normals, albedo, ldir, ambient, intensity, lcol,
                    want_rgb, depth, points, rgb):
    """Per-pixel depth, canonical surface point and Lambert colour (no textures)."""
    H, W = fid.shape
    fx, cx, fy, cy = K[0, 0], K[0, 2], K[1, 1], K[1, 2]
    for y in range(H):
        for x in range(W):
            f = fid[y, x]
            if f < 0:
                continue
            z = 1.0 / zbuf[y, x]
            depth[y, x] = z
            xc = (x - cx) / fx * z
            yc = (y - cy) / fy * z
            # X = R^T X_cam + C
            for k in range(3):
                points[y, x, k] = R[0, k] * xc + R[1, k] * yc + R[2, k] * z + C[k]
            if want_rgb:
                n0, n1, n2 = normals[f, 0], normals[f, 1], normals[f, 2]
                # turn the normal towards the camera
                s = (C[0] - points[y, x, 0]) * n0 + (C[1] - points[y, x, 1]) * n1 + \
                    (C[2] - points[y, x, 2]) * n2
                if s < 0:
                    n0, n1, n2 = -n0, -n1, -n2
                lam = n0 * ldir[0] + n1 * ldir[1] + n2 * ldir[2]
                if lam < 0:
                    lam = 0.0
                lv = ambient + intensity / np.pi * lam
                for k in range(3):
                    v = albedo[f, k] * lv * lcol[k]
                    rgb[y, x, k] = min(max(v, 0.0), 1.0) * 255.0


def surface(fid, zbuf, K, R, C, shading, light_dir_world, intensity, ambient, color, bg,
            want_rgb):
    """Depth (H, W), canonical points (H, W, 3, NaN on background) and RGB float (H, W, 3)
    in 0…255 over ``bg`` for a rasterised view; textured faces get flat albedo here (see
    :func:`shade`)."""
    H, W = fid.shape
    depth = np.zeros((H, W), np.float64)
    points = np.full((H, W, 3), np.nan, np.float64)
    rgb = np.array(bg, np.float64, copy=True)
    normals = shading.normals if want_rgb else np.zeros((1, 3))
    albedo = shading.albedo if want_rgb else np.zeros((1, 3))
    _surface_kernel(fid, zbuf, np.ascontiguousarray(K, np.float64),
                    np.ascontiguousarray(R, np.float64), np.ascontiguousarray(C, np.float64),
                    np.ascontiguousarray(normals, np.float64),
                    np.ascontiguousarray(albedo, np.float64),
                    np.ascontiguousarray(light_dir_world, np.float64), float(ambient),
                    float(intensity), np.asarray(color, np.float64), bool(want_rgb), depth,
                    points, rgb)
    return depth, points, rgb


@_njit
def _visibility_kernel(P, R, C, K, D, rel_tol, px_tol, abs_tol, xy, z_out, vis):
    Hs, Ws = D.shape
    for i in range(P.shape[0]):
        X0 = P[i, 0] - C[0]
        X1 = P[i, 1] - C[1]
        X2 = P[i, 2] - C[2]
        xc = R[0, 0] * X0 + R[0, 1] * X1 + R[0, 2] * X2
        yc = R[1, 0] * X0 + R[1, 1] * X1 + R[1, 2] * X2
        z = R[2, 0] * X0 + R[2, 1] * X1 + R[2, 2] * X2
        z_out[i] = z
        if not (z > 0):
            xy[i, 0] = np.nan
            xy[i, 1] = np.nan
            continue
        x = K[0, 0] * xc / z + K[0, 2]
        y = K[1, 1] * yc / z + K[1, 2]
        xy[i, 0] = x
        xy[i, 1] = y
        if not (x > -1.0 and x < Ws and y > -1.0 and y < Hs):
            continue
        tol = abs_tol + rel_tol * z + px_tol * z / K[0, 0]
        x0 = int(np.floor(x))
        y0 = int(np.floor(y))
        for dy in range(2):
            yi = y0 + dy
            if yi < 0 or yi >= Hs:
                continue
            for dx in range(2):
                xi = x0 + dx
                if xi < 0 or xi >= Ws:
                    continue
                d = D[yi, xi]
                if d > 0 and abs(d - z) <= tol:
                    vis[i] = True


def visibility_buffer(points, R, C, K, depth_buffer, rel_tol, px_tol, abs_tol):
    """Project canonical points (N, 3) into a depth buffer with intrinsics K and depth-test them
    against its 2×2 nearest pixels; returns ``(xy (N, 2) buffer pixels, z (N,), visible (N,))``."""
    P = np.ascontiguousarray(points, np.float64).reshape(-1, 3)
    xy = np.empty((len(P), 2), np.float64)
    z = np.empty(len(P), np.float64)
    vis = np.zeros(len(P), np.bool_)
    _visibility_kernel(P, np.ascontiguousarray(R, np.float64),
                       np.ascontiguousarray(C, np.float64), np.ascontiguousarray(K, np.float64),
                       np.ascontiguousarray(depth_buffer, np.float32), float(rel_tol),
                       float(px_tol), float(abs_tol), xy, z, vis)
    return xy, z, vis


@_njit
def _project_kernel(V, R, C, out_cam):
    zmin = np.inf
    for i in range(V.shape[0]):
        X0 = V[i, 0] - C[0]
        X1 = V[i, 1] - C[1]
        X2 = V[i, 2] - C[2]
        for k in range(3):
            out_cam[i, k] = R[k, 0] * X0 + R[k, 1] * X1 + R[k, 2] * X2
        if out_cam[i, 2] < zmin:
            zmin = out_cam[i, 2]
    return zmin


def to_camera(vertices, R, C):
    """Camera coordinates (V, 3) float64 of canonical vertices, and the smallest depth."""
    out = np.empty((len(vertices), 3), np.float64)
    zmin = _project_kernel(np.ascontiguousarray(vertices), np.ascontiguousarray(R, np.float64),
                           np.ascontiguousarray(C, np.float64), out)
    return out, zmin


def face_colors(shading: MeshShading, vertices: np.ndarray, faces: np.ndarray,
                cam_center: np.ndarray, light_dir_world: np.ndarray, intensity: float,
                ambient: float, color) -> np.ndarray:
    """Flat Lambert colour of every face, (F, 3) in 0…255:
    ``albedo · (ambient + intensity/π · max(0, n·l)) · colour`` with the face normal turned
    towards the camera (the sign of ``n·(C − v0)`` is constant over a planar face)."""
    v0 = vertices[faces[:, 0]].astype(np.float64)
    n = shading.normals
    facing = ((cam_center - v0) * n).sum(1)
    lam = n @ light_dir_world
    lam = np.where(facing < 0, -lam, lam)
    lv = ambient + intensity / np.pi * np.clip(lam, 0.0, None)
    out = shading.albedo * lv[:, None] * np.asarray(color, np.float64)[None]
    return np.clip(out, 0.0, 1.0) * 255.0
