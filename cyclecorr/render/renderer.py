"""Rendering a mesh from a viewpoint: RGB, mask, depth and per-pixel 3D surface point.

Two backends (see :class:`Renderer`): ``raster`` (default: numba z-buffer drawn directly into
the cropped frame, exact geometry, no OpenGL) and ``gl`` (pyrender/OpenGL). How a ``gl`` view is
made:

1. The mesh is drawn once, by OpenGL through pyrender (headless: ``PYOPENGL_PLATFORM=osmesa``
   on CPU — the default set here when the variable is unset — or ``egl`` on GPU machines), into a
   fixed square *viewport* (default 256×256; resizing an OSMesa context is slow). The intrinsics
   are chosen per view so that the projected model fills ``fill`` of the viewport: the camera
   still is the viewpoint's pinhole camera, only focal length and principal point differ from
   the PASCAL3D+ photo, and both vanish after cropping.
2. The object's box is the extent of the rendered mask (optionally enlarged by ``margin``);
   everything is resampled into ``size×size`` with :class:`CropTransform` (aspect ratio not kept,
   exactly as real photos are cropped to their box).
3. Depth (camera z) comes from the depth buffer; the surface point of a cropped pixel is the
   depth unprojected along that pixel's exact ray: ``X_cam = z · K⁻¹ (x, y, 1)``,
   ``X = Rᵀ X_cam + C`` (canonical frame). Depth is interpolated bilinearly in 1/z where the four
   neighbours lie on one surface, else taken from the nearest pixel.

The GL context is created lazily, on the first render: create :class:`Renderer` objects (or
nothing) in the parent, fork or spawn workers, and each worker makes its own context. A process
forked *after* its parent created a context refuses to render with a clear error (OSMesa and
EGL state does not survive a fork and can deadlock); use the ``spawn`` start method there.
"""
from __future__ import annotations

import math
import os
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from .camera import CropTransform, Viewpoint, _sample
from .mesh import Mesh

__all__ = ["Renderer", "RenderResult", "Light", "render_view", "default_renderer",
           "random_light"]


@dataclass(frozen=True)
class Light:
    """Lighting of a render.

    Args:
        direction: vector from the object towards the light, in the camera frame (x right,
            y down, z forward): the default (−0.4, −1, −1) lights from the upper left, in front.
        intensity: directional light intensity (pyrender units).
        ambient: ambient light level in [0, 1].
        color: light colour (r, g, b) in [0, 1].
    """

    direction: tuple[float, float, float] = (-0.4, -1.0, -1.0)
    intensity: float = 3.0
    ambient: float = 0.35
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)


def random_light(rng: np.random.Generator | int | None = None) -> Light:
    """A random light for training variety: direction in the front hemisphere, intensity
    1.5–5, ambient 0.15–0.5, slightly tinted colour."""
    rng = np.random.default_rng(rng)
    d = rng.normal(size=3)
    d[2] = -abs(d[2]) - 0.3  # towards the camera side
    return Light(tuple(float(x) for x in d), float(rng.uniform(1.5, 5.0)),
                 float(rng.uniform(0.15, 0.5)), tuple(float(x) for x in rng.uniform(0.85, 1.0, 3)))


@dataclass
class RenderResult:
    """One rendered view, in the cropped ``size×size`` frame.

    Attributes:
        rgb: (H, W, 3) uint8 lit colour composited over the background.
        mask: (H, W) bool object mask.
        depth: (H, W) float32 camera-frame z of the surface (0 on background).
        points: (H, W, 3) float32 canonical-frame surface point (NaN on background).
        crop: transform from the full image of ``viewpoint`` (pixels of the camera
            ``viewpoint.intrinsics()``, the PASCAL3D+ photo frame) to the cropped frame.
        viewpoint: the viewpoint rendered.
        K: (3, 3) intrinsics of the cropped frame: ``x = K[0,0]·X/Z + K[0,2]``,
            ``y = K[1,1]·Y/Z + K[1,2]`` (``K[0,0] ≠ K[1,1]`` when the box is not square).
        R, C: world→camera rotation (3, 3) and camera centre (3,): ``X_cam = R (X − C)``.
        depth_buffer, K_buffer: the depth image the view was rendered into (0 on background)
            and its intrinsics, used for visibility tests (the GL viewport, or the crop itself).
    """

    rgb: np.ndarray
    mask: np.ndarray
    depth: np.ndarray
    points: np.ndarray
    crop: CropTransform
    viewpoint: Viewpoint
    K: np.ndarray
    R: np.ndarray
    C: np.ndarray
    depth_buffer: np.ndarray = field(repr=False)
    K_buffer: np.ndarray = field(repr=False)

    def _proj(self, points, K):
        pc = (np.asarray(points, np.float64).reshape(-1, 3) - self.C) @ self.R.T
        z = pc[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            x = K[0, 0] * pc[:, 0] / z + K[0, 2]
            y = K[1, 1] * pc[:, 1] / z + K[1, 2]
        return np.stack([x, y], 1), z

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Canonical points (N, 3) → (cropped-frame xy (N, 2), camera z (N,))."""
        return self._proj(points, self.K)

    def project_buffer(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Canonical points (N, 3) → (``depth_buffer`` pixel xy (N, 2), camera z (N,))."""
        return self._proj(points, self.K_buffer)


def crop_intrinsics(crop: CropTransform, K_img: np.ndarray) -> np.ndarray:
    """Intrinsics of the cropped frame given the full image's ``K_img`` (zero skew):
    ``fx' = fx·sx``, ``cx' = (cx − x0)·sx − 0.5`` and likewise for y."""
    sx, sy = crop.scale
    return np.array([[K_img[0, 0] * sx, 0.0, (K_img[0, 2] - crop.x0) * sx - 0.5],
                     [0.0, K_img[1, 1] * sy, (K_img[1, 2] - crop.y0) * sy - 0.5],
                     [0.0, 0.0, 1.0]])


def _ensure_gl_platform():
    """Headless default: PyOpenGL reads ``PYOPENGL_PLATFORM`` once, when OpenGL is first
    imported, so it is set (to ``osmesa``, unless already set or a display exists) before that."""
    if "PYOPENGL_PLATFORM" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["PYOPENGL_PLATFORM"] = "osmesa"


_ensure_gl_platform()

# the process that created a GL context (a forked child of it must not create another)
_GL_PID: int | None = None


class Renderer:
    """Reusable renderer: per-mesh caches, and (``gl`` backend) one lazily created GL context.

    Backends:
        ``raster`` (default; ``$CYCLECORR_RENDER_BACKEND`` overrides): the numba z-buffer
            rasteriser of :mod:`cyclecorr.render.raster`, drawing straight into the cropped
            frame. Depth and surface points are exact at every pixel centre (perspective-correct
            1/z), the box is the exact extent of the projected model, shading is Lambert +
            ambient with UV textures (nearest texel). No OpenGL, no context, fork-safe.
        ``gl``: OpenGL through pyrender (OSMesa headless on CPU, EGL on GPU machines via
            ``PYOPENGL_PLATFORM``), PBR shading, drawn into a fixed square viewport and resampled
            into the crop (see the module docstring).

    Args:
        viewport: side of the square GL framebuffer in pixels (``gl`` only).
        fill: fraction of the viewport the projected model (plus margin) spans (``gl`` only).
        cache_size: how many meshes stay cached (GL buffers / shading tables).
        backend: ``"raster"`` or ``"gl"``.
        antialias: ``raster`` only: the RGB image is drawn at ``antialias``× the resolution and
            box-filtered down (1 = off); mask, depth and points are always exact pixel-centre
            samples at the output resolution.

    One instance per process; module-level functions use :func:`default_renderer`. The
    ``raster`` backend is fork-safe. With ``gl``, construct before forking but render only in
    the workers: nothing touches OpenGL until the first render, and a process forked after its
    parent made a context refuses to render with a clear error (use ``spawn`` there).
    """

    def __init__(self, viewport: int = 256, fill: float = 0.92, cache_size: int = 8,
                 backend: str | None = None, antialias: int = 1):
        if viewport < 16:
            raise ValueError(f"viewport must be ≥ 16 pixels, got {viewport}")
        if not 0.1 <= fill <= 1.0:
            raise ValueError(f"fill must be in [0.1, 1], got {fill}")
        backend = backend or os.environ.get("CYCLECORR_RENDER_BACKEND", "raster")
        if backend not in ("gl", "raster"):
            raise ValueError(f"backend must be 'gl' or 'raster', got {backend!r}")
        self.backend = backend
        if int(antialias) < 1:
            raise ValueError(f"antialias must be an integer ≥ 1, got {antialias}")
        self.antialias = int(antialias)
        self.viewport = int(viewport)
        self.fill = float(fill)
        self.cache_size = int(cache_size)
        self._pid = None
        self._gl = None
        self._scene = None
        self._meshes: OrderedDict = OrderedDict()
        self._shading: OrderedDict = OrderedDict()

    # -- GL state ---------------------------------------------------------------------------
    def _context(self):
        global _GL_PID
        if self._gl is None or self._pid != os.getpid():
            if _GL_PID is not None and _GL_PID != os.getpid():
                raise RuntimeError(
                    f"process {os.getpid()} was forked from process {_GL_PID}, which had already "
                    "created an OpenGL context; GL state does not survive a fork (OSMesa/EGL "
                    "can deadlock). Render only in the workers (create Renderer objects, but "
                    "do not render, before forking) or use the 'spawn' start method.")
            _ensure_gl_platform()
            import pyrender  # on use: needs an OpenGL library, absent where only raster runs

            self._gl = pyrender.OffscreenRenderer(self.viewport, self.viewport)
            _GL_PID = os.getpid()
            self._pid = os.getpid()
            self._scene = pyrender.Scene(bg_color=(0.0, 0.0, 0.0, 0.0),
                                         ambient_light=(0.35, 0.35, 0.35))
            self._cam_node = None
            self._light_node = self._scene.add(
                pyrender.DirectionalLight(color=np.ones(3), intensity=3.0))
            self._meshes = OrderedDict()
        return self._gl

    def close(self):
        """Release the GL context (a later render creates a new one)."""
        if self._gl is not None and self._pid == os.getpid():
            try:
                self._gl.delete()
            except Exception:
                pass
        self._gl = None
        self._scene = None
        self._meshes = OrderedDict()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _mesh_node(self, mesh: Mesh):
        import pyrender  # on use: OpenGL, see __init__
        import trimesh  # on use: heavy (0.6 s), only for the GL backend's meshes

        key = id(mesh)
        entry = self._meshes.get(key)
        if entry is not None and entry[0]() is mesh:
            self._meshes.move_to_end(key)
            node = entry[1]
        else:
            if entry is not None:
                self._scene.remove_node(entry[1])
                del self._meshes[key]
            if mesh.parts:
                parts = []
                for p in mesh.parts:
                    q = p.copy()
                    q.faces = np.concatenate([p.faces, p.faces[:, ::-1]])
                    if getattr(q.visual, "kind", None) == "face" :
                        q.visual.face_colors = np.concatenate([p.visual.face_colors] * 2)
                    parts.append(q)
                pm = pyrender.Mesh.from_trimesh(parts, smooth=False)
                for prim in pm.primitives:
                    prim.material.doubleSided = False
            else:
                # both windings + back-face culling: every visible triangle faces the camera,
                # so its flat normal is lit correctly whatever the file's winding
                faces2 = np.concatenate([mesh.faces, mesh.faces[:, ::-1]])
                tm = trimesh.Trimesh(mesh.vertices, faces2, process=False)
                mat = pyrender.MetallicRoughnessMaterial(
                    baseColorFactor=(0.7, 0.7, 0.72, 1.0), metallicFactor=0.0,
                    roughnessFactor=0.75, doubleSided=False)
                pm = pyrender.Mesh.from_trimesh(tm, material=mat, smooth=False)
            node = self._scene.add(pm)
            self._meshes[key] = (weakref.ref(mesh), node)
            while len(self._meshes) > self.cache_size:
                _, (_, old) = self._meshes.popitem(last=False)
                self._scene.remove_node(old)
        for _, (_, n) in self._meshes.items():
            n.mesh.is_visible = n is node
        return node

    # -- camera framing ---------------------------------------------------------------------
    def frame(self, mesh: Mesh, viewpoint: Viewpoint, margin: float = 0.0):
        """Viewport intrinsics framing the mesh: returns ``(K, R, C, znear, zfar)``."""
        R = viewpoint.rotation
        C = viewpoint.center
        pc = (mesh.vertices.astype(np.float64) - C) @ R.T
        z = pc[:, 2]
        if z.min() <= 1e-6 * max(1.0, float(viewpoint.distance)):
            raise ValueError(
                f"viewpoint {viewpoint} puts the camera inside or behind the model "
                f"{mesh.source or '<array mesh>'} (nearest vertex depth {z.min():.4g}); "
                "increase the distance")
        u = pc[:, 0] / z
        v = pc[:, 1] / z
        span = max(u.max() - u.min(), v.max() - v.min(), 1e-12)
        V = self.viewport
        f = self.fill * V / ((1.0 + max(margin, 0.0)) * span)
        cx = (V - 1) / 2 - f * (u.max() + u.min()) / 2
        cy = (V - 1) / 2 - f * (v.max() + v.min()) / 2
        K = np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
        znear = max(z.min() * 0.95, 1e-4)
        zfar = z.max() * 1.05 + 1e-4
        return K, R, C, znear, zfar

    def render_depth_rgb(self, mesh: Mesh, K, R, C, znear, zfar, light: Light | None = None,
                         rgb: bool = True):
        """Raw viewport render: ``(color (V,V,3) uint8 or None, depth (V,V) float32)``."""
        import pyrender  # on use: OpenGL, see __init__

        gl = self._context()
        self._mesh_node(mesh)
        cam = pyrender.IntrinsicsCamera(fx=K[0, 0], fy=K[1, 1], cx=K[0, 2] + 0.5,
                                        cy=K[1, 2] + 0.5, znear=znear, zfar=zfar)
        pose = np.eye(4)
        pose[:3, :3] = R.T @ np.diag([1.0, -1.0, -1.0])
        pose[:3, 3] = C
        if self._cam_node is not None:
            self._scene.remove_node(self._cam_node)
        self._cam_node = self._scene.add(cam, pose=pose)
        light = light or Light()
        d = np.asarray(light.direction, np.float64)
        n = np.linalg.norm(d)
        if not np.isfinite(n) or n == 0:
            raise ValueError(f"light direction must be a non-zero finite vector, got {d}")
        zc = R.T @ (d / n)  # node z axis (light travels along −z)
        helper = np.array([0.0, 0.0, 1.0]) if abs(zc[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
        xc = np.cross(helper, zc)
        xc /= np.linalg.norm(xc)
        yc = np.cross(zc, xc)
        lpose = np.eye(4)
        lpose[:3, :3] = np.stack([xc, yc, zc], 1)
        self._scene.set_pose(self._light_node, lpose)
        self._light_node.light.intensity = float(light.intensity)
        self._light_node.light.color = np.asarray(light.color, np.float64)
        self._scene.ambient_light = np.full(3, float(light.ambient))
        flags = pyrender.RenderFlags.NONE
        if rgb:
            color, depth = gl.render(self._scene, flags=flags)
        else:
            depth = gl.render(self._scene, flags=flags | pyrender.RenderFlags.DEPTH_ONLY)
            color = None
        return color, np.asarray(depth, np.float32)

    # -- public -----------------------------------------------------------------------------
    def render(self, mesh: Mesh, viewpoint: Viewpoint, size: int = 128,
               light: Light | None = None, background=(0, 0, 0), margin: float = 0.0,
               rgb: bool = True) -> RenderResult:
        """Render ``mesh`` from ``viewpoint``, cropped to the object's box, resized to size×size.

        Args:
            mesh: a :class:`Mesh` (canonical frame).
            viewpoint: the camera.
            size: output side (int) or ``(width, height)``.
            light: lighting; ``None`` = :class:`Light` defaults.
            background: (r, g, b) uint8 colour, or an H×W×3 uint8 image resized to the crop.
            margin: enlarge the object box by this fraction (0.1 = ×1.1 like the VOC crops).
            rgb: ``False`` skips shading (rgb is then all background) — faster for ground truth.

        Returns:
            :class:`RenderResult` with rgb, mask, depth, points and the crop transform.

        The box is the rendered mask's extent in the GL viewport (``gl`` backend) or the exact
        extent of the projected model (``raster`` backend), enlarged by ``margin``.
        """
        if not isinstance(mesh, Mesh):
            raise TypeError(f"render expects a cyclecorr.render.Mesh, got {type(mesh).__name__}")
        W, H = (size, size) if np.isscalar(size) else (int(size[0]), int(size[1]))
        if W < 1 or H < 1:
            raise ValueError(f"size must be positive, got {size}")
        if not (math.isfinite(margin) and margin > -0.5):
            raise ValueError(f"margin must be a finite number > -0.5, got {margin}")
        light = light or Light()
        if self.backend == "raster":
            return self._render_raster(mesh, viewpoint, W, H, light, background, margin, rgb)
        K, R, C, zn, zf = self.frame(mesh, viewpoint, margin)
        color, depth = self.render_depth_rgb(mesh, K, R, C, zn, zf, light, rgb)
        fg = depth > 0
        if not fg.any():
            raise RuntimeError(f"the model {mesh.source or '<array mesh>'} is not visible "
                               f"from {viewpoint}")
        ys, xs = np.nonzero(fg)
        crop_v = CropTransform.from_pixel_box(xs.min(), ys.min(), xs.max(), ys.max(), W, H,
                                              scale=1.0 + margin)
        return self._finish(viewpoint, crop_v, K, R, C, color, depth, background, rgb)

    def _finish(self, viewpoint, crop_v, Kv, R, C, color, depth, background, rgb):
        W, H = crop_v.width, crop_v.height
        gx, gy = crop_v.source_grid()
        d_crop = _sample_depth(depth, gx, gy)
        mask = d_crop > 0
        # points along the exact ray of each output pixel
        xc = (gx - Kv[0, 2]) / Kv[0, 0]
        yc = (gy - Kv[1, 2]) / Kv[1, 1]
        pc = np.stack([xc * d_crop, yc * d_crop, d_crop], -1)
        pts = pc @ R + C  # (R^T X_cam)^T = X_cam^T R
        pts = pts.astype(np.float32)
        pts[~mask] = np.nan
        bg = _background(background, H, W)
        if rgb and color is not None:
            rgba = np.empty(color.shape[:2] + (4,), np.float32)
            rgba[..., :3] = color[..., :3]
            rgba[..., 3] = depth > 0
            s = _sample(rgba, gx, gy, 1, 0.0)
            out = s[..., :3] + (1.0 - s[..., 3:]) * bg
            img = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        else:
            img = np.clip(np.rint(bg), 0, 255).astype(np.uint8)
        # the viewport is a similarity of the viewpoint's image frame: x_img = (x_v − cx_v)·k + cx
        K_img = viewpoint.intrinsics()
        k = K_img[0, 0] / Kv[0, 0]
        crop = CropTransform((crop_v.x0 - Kv[0, 2]) * k + K_img[0, 2],
                             (crop_v.y0 - Kv[1, 2]) * k + K_img[1, 2],
                             (crop_v.x1 - Kv[0, 2]) * k + K_img[0, 2],
                             (crop_v.y1 - Kv[1, 2]) * k + K_img[1, 2], W, H)
        return RenderResult(img, mask, d_crop.astype(np.float32), pts, crop, viewpoint,
                            crop_intrinsics(crop, K_img), R, C, depth, Kv)

    def _mesh_shading(self, mesh: Mesh):
        from .raster import MeshShading  # on use: numba kernels, kept out of CLI start-up

        key = id(mesh)
        entry = self._shading.get(key)
        if entry is not None and entry[0]() is mesh:
            self._shading.move_to_end(key)
            return entry[1]
        sh = MeshShading(mesh)
        self._shading[key] = (weakref.ref(mesh), sh)
        while len(self._shading) > 2 * self.cache_size:
            self._shading.popitem(last=False)
        return sh

    def _used_vertices(self, mesh: Mesh) -> np.ndarray:
        key = ("used", id(mesh))
        entry = self._shading.get(key)
        if entry is not None and entry[0]() is mesh:
            return entry[1]
        used = np.unique(mesh.faces)
        self._shading[key] = (weakref.ref(mesh), used)
        while len(self._shading) > 2 * self.cache_size:
            self._shading.popitem(last=False)
        return used

    def _render_raster(self, mesh, viewpoint, W, H, light, background, margin, rgb):
        from .raster import rasterize, shade, surface, to_camera  # on use: see _mesh_shading

        R = viewpoint.rotation
        C = viewpoint.center
        pc, zmin = to_camera(mesh.vertices, R, C)
        if zmin <= 1e-6 * max(1.0, float(viewpoint.distance)):
            raise ValueError(
                f"viewpoint {viewpoint} puts the camera inside or behind the model "
                f"{mesh.source or '<array mesh>'} (nearest vertex depth {zmin:.4g}); "
                "increase the distance")
        z = pc[:, 2]
        K_img = viewpoint.intrinsics()
        iz = 1.0 / z
        un = pc[:, 0] * iz
        vn = pc[:, 1] * iz
        # the exact extent of the projected model (vertices not used by faces are ignored)
        if len(mesh.faces) * 3 < len(pc):
            used = self._used_vertices(mesh)
            un, vn = un[used], vn[used]
        x0 = K_img[0, 0] * un.min() + K_img[0, 2]
        x1 = K_img[0, 0] * un.max() + K_img[0, 2]
        y0 = K_img[1, 1] * vn.min() + K_img[1, 2]
        y1 = K_img[1, 1] * vn.max() + K_img[1, 2]
        if not (x1 > x0 and y1 > y0):
            raise RuntimeError(f"the model {mesh.source or '<array mesh>'} projects to a "
                               f"degenerate box from {viewpoint}")
        s = 1.0 + margin
        cxb, cyb, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * s / 2, (y1 - y0) * s / 2
        crop = CropTransform(cxb - hw, cyb - hh, cxb + hw, cyb + hh, W, H)
        K = crop_intrinsics(crop, K_img)
        xs = K[0, 0] * pc[:, 0] * iz + K[0, 2]
        ys = K[1, 1] * pc[:, 1] * iz + K[1, 2]
        fid, zinv = rasterize(xs, ys, iz, mesh.faces, H, W)
        mask = fid >= 0
        bg = _background(background, H, W)
        want = bool(rgb and mask.any())
        ss = self.antialias
        if want:
            sh = self._mesh_shading(mesh)
            d = np.asarray(light.direction, np.float64)
            n = np.linalg.norm(d)
            if not np.isfinite(n) or n == 0:
                raise ValueError(f"light direction must be a non-zero finite vector, got {d}")
            ldir = R.T @ (d / n)
        else:
            sh, ldir = None, np.zeros(3)

        def draw(fid_, zinv_, K_, bg_, with_rgb):
            depth_, pts_, img_ = surface(fid_, zinv_, K_, R, C, sh, ldir, light.intensity,
                                         light.ambient, light.color, bg_, with_rgb)
            if with_rgb and (sh.tex_id >= 0).any():
                img_[fid_ >= 0] = shade(sh, fid_, pts_, C, ldir, float(light.intensity),
                                        float(light.ambient), light.color, mesh.vertices,
                                        mesh.faces) * 255.0
            return depth_, pts_, img_

        depth, pts, img = draw(fid, zinv, K, bg, want and ss == 1)
        if want and ss > 1:
            # supersampled colour: the same crop box on an (ss·H)×(ss·W) grid, box-filtered
            crop_s = CropTransform(crop.x0, crop.y0, crop.x1, crop.y1, W * ss, H * ss)
            Ks = crop_intrinsics(crop_s, K_img)
            fid_s, zinv_s = rasterize(Ks[0, 0] * pc[:, 0] * iz + Ks[0, 2],
                                      Ks[1, 1] * pc[:, 1] * iz + Ks[1, 2], iz, mesh.faces,
                                      H * ss, W * ss)
            bg_s = np.repeat(np.repeat(bg, ss, 0), ss, 1)
            img_s = draw(fid_s, zinv_s, Ks, bg_s, True)[2]
            img = img_s.reshape(H, ss, W, ss, 3).mean(axis=(1, 3))
        pts = pts.astype(np.float32)
        img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        return RenderResult(img, mask, depth.astype(np.float32), pts, crop, viewpoint, K, R, C,
                            depth.astype(np.float32), K)


def _background(background, H, W) -> np.ndarray:
    bg = np.asarray(background)
    if bg.ndim == 1 and bg.shape[0] == 3:
        if not np.isfinite(bg.astype(np.float64)).all():
            raise ValueError(f"background colour must be finite, got {background}")
        return np.broadcast_to(bg.astype(np.float32), (H, W, 3))
    if bg.ndim == 3 and bg.shape[2] == 3 and bg.shape[0] > 0 and bg.shape[1] > 0:
        if bg.shape[:2] == (H, W):
            return bg.astype(np.float32)
        cr = CropTransform(-0.5, -0.5, bg.shape[1] - 0.5, bg.shape[0] - 0.5, W, H)
        return cr.crop_image(bg.astype(np.float32), fill=None)
    raise ValueError(f"background must be an (r, g, b) colour or an H×W×3 image, "
                     f"got shape {bg.shape}")


def _sample_depth(depth: np.ndarray, xs: np.ndarray, ys: np.ndarray,
                  rel_tol: float = 0.01) -> np.ndarray:
    """Depth at float positions (pixel centres at integers), 0 on background.

    A position is foreground where its nearest pixel is. Its depth is bilinear in 1/z where the
    four surrounding pixels lie on one surface (depths within ``rel_tol``), which is exact on
    planes. Elsewhere (silhouettes, creases) 1/z is extrapolated from the nearest pixel with
    the finite-difference gradient of 1/z over its neighbours on the same surface (one-sided
    where only one side is), also exact on planes; with no such neighbour, the nearest pixel's
    depth is used.
    """
    Hs, Ws = depth.shape
    d = depth.astype(np.float64)
    inv = np.zeros_like(d)
    np.divide(1.0, d, out=inv, where=d > 0)
    xn = np.rint(xs).astype(np.int64)
    yn = np.rint(ys).astype(np.int64)
    inside = (xn >= 0) & (xn < Ws) & (yn >= 0) & (yn < Hs)
    xn, yn = np.clip(xn, 0, Ws - 1), np.clip(yn, 0, Hs - 1)
    dn = np.where(inside, d[yn, xn], 0.0)
    fg = dn > 0
    # gradient extrapolation from the nearest pixel
    inv_n = inv[yn, xn]
    out_inv = inv_n.copy()
    for axis, (px, py) in enumerate(((1, 0), (0, 1))):
        vals, oks = [], []
        for sgn in (1, -1):
            xi, yi = xn + sgn * px, yn + sgn * py
            okb = (xi >= 0) & (xi < Ws) & (yi >= 0) & (yi < Hs)
            dv = d[np.clip(yi, 0, Hs - 1), np.clip(xi, 0, Ws - 1)]
            ok = okb & (dv > 0) & (np.abs(dv - dn) <= rel_tol * dn)
            vals.append(np.where(ok, inv[np.clip(yi, 0, Hs - 1), np.clip(xi, 0, Ws - 1)], 0.0))
            oks.append(ok)
        g = np.where(oks[0] & oks[1], (vals[0] - vals[1]) / 2,
                     np.where(oks[0], vals[0] - inv_n, np.where(oks[1], inv_n - vals[1], 0.0)))
        off = (xs - xn) if axis == 0 else (ys - yn)
        out_inv = out_inv + g * off
    # bilinear where the 2×2 neighbourhood is one surface
    x0 = np.clip(np.floor(xs).astype(np.int64), 0, Ws - 2)
    y0 = np.clip(np.floor(ys).astype(np.int64), 0, Hs - 2)
    fx = np.clip(xs - x0, 0.0, 1.0)
    fy = np.clip(ys - y0, 0.0, 1.0)
    d00, d01, d10, d11 = d[y0, x0], d[y0, x0 + 1], d[y0 + 1, x0], d[y0 + 1, x0 + 1]
    lo = np.minimum(np.minimum(d00, d01), np.minimum(d10, d11))
    hi = np.maximum(np.maximum(d00, d01), np.maximum(d10, d11))
    smooth = (lo > 0) & (hi - lo <= rel_tol * lo)
    bil = ((1 - fy) * ((1 - fx) * inv[y0, x0] + fx * inv[y0, x0 + 1])
           + fy * ((1 - fx) * inv[y0 + 1, x0] + fx * inv[y0 + 1, x0 + 1]))
    out_inv = np.where(smooth, bil, out_inv)
    out = np.zeros_like(out_inv)
    ok = fg & (out_inv > 0)
    out[ok] = 1.0 / out_inv[ok]
    out[fg & ~ok] = dn[fg & ~ok]
    return out.astype(np.float32)


_DEFAULT: dict = {}


def default_renderer() -> Renderer:
    """The per-process default :class:`Renderer` (created on first use, again after a fork)."""
    r = _DEFAULT.get(os.getpid())
    if r is None:
        _DEFAULT.clear()
        r = _DEFAULT[os.getpid()] = Renderer()
    return r


def render_view(mesh: Mesh, viewpoint: Viewpoint, size: int = 128, light: Light | None = None,
                background=(0, 0, 0), margin: float = 0.0, rgb: bool = True,
                renderer: Renderer | None = None) -> RenderResult:
    """Render ``mesh`` from ``viewpoint`` cropped to its box at size×size (see
    :meth:`Renderer.render`); uses the per-process default renderer unless one is given."""
    return (renderer or default_renderer()).render(mesh, viewpoint, size, light, background,
                                                   margin, rgb)
