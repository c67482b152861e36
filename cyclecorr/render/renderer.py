"""Rendering a mesh from a viewpoint: RGB, mask, depth and per-pixel 3D surface point.

How a view is made (:meth:`Renderer.render`):

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

The GL context is created lazily, on the first render, and again in a forked child (a context is
never shared across a fork): worker processes can each render with their own context.
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
        crop: viewport → cropped frame transform.
        viewpoint: the viewpoint rendered.
        K: (3, 3) intrinsics of the viewport render (pixel centres at integers).
        R, C: world→camera rotation (3, 3) and camera centre (3,).
        depth_full: (V, V) float32 viewport depth (0 on background), used for visibility tests.
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
    depth_full: np.ndarray = field(repr=False)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Canonical points (N, 3) → (cropped-frame xy (N, 2), camera z (N,))."""
        pc = (np.asarray(points, np.float64).reshape(-1, 3) - self.C) @ self.R.T
        z = pc[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            x = self.K[0, 0] * pc[:, 0] / z + self.K[0, 2]
            y = self.K[1, 1] * pc[:, 1] / z + self.K[1, 2]
        return self.crop.apply(np.stack([x, y], 1)), z

    def project_viewport(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Canonical points (N, 3) → (viewport xy (N, 2), camera z (N,))."""
        pc = (np.asarray(points, np.float64).reshape(-1, 3) - self.C) @ self.R.T
        z = pc[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            x = self.K[0, 0] * pc[:, 0] / z + self.K[0, 2]
            y = self.K[1, 1] * pc[:, 1] / z + self.K[1, 2]
        return np.stack([x, y], 1), z


def _ensure_gl_platform():
    if "PYOPENGL_PLATFORM" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["PYOPENGL_PLATFORM"] = "osmesa"


class Renderer:
    """Reusable renderer holding one lazily created GL context and a fixed viewport.

    Args:
        viewport: side of the square GL framebuffer in pixels (renders are cropped from it).
        fill: fraction of the viewport the projected model (plus margin) spans.
        cache_size: how many meshes stay uploaded to the GL context.

    One instance per process; module-level functions use :func:`default_renderer`. Safe to
    construct before forking: nothing touches OpenGL until the first render, and a child
    process that inherited an instance makes its own context.
    """

    def __init__(self, viewport: int = 256, fill: float = 0.92, cache_size: int = 8):
        if viewport < 16:
            raise ValueError(f"viewport must be ≥ 16 pixels, got {viewport}")
        if not 0.1 <= fill <= 1.0:
            raise ValueError(f"fill must be in [0.1, 1], got {fill}")
        self.viewport = int(viewport)
        self.fill = float(fill)
        self.cache_size = int(cache_size)
        self._pid = None
        self._gl = None
        self._scene = None
        self._meshes: OrderedDict = OrderedDict()

    # -- GL state ---------------------------------------------------------------------------
    def _context(self):
        if self._gl is None or self._pid != os.getpid():
            _ensure_gl_platform()
            import pyrender

            if self._gl is not None and self._pid == os.getpid():
                self._gl.delete()
            self._gl = pyrender.OffscreenRenderer(self.viewport, self.viewport)
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
        import pyrender
        import trimesh

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
        import pyrender

        gl = self._context()
        node = self._mesh_node(mesh)
        del node
        V = self.viewport
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
        """
        if not isinstance(mesh, Mesh):
            raise TypeError(f"render expects a cyclecorr.render.Mesh, got {type(mesh).__name__}")
        W, H = (size, size) if np.isscalar(size) else (int(size[0]), int(size[1]))
        if W < 1 or H < 1:
            raise ValueError(f"size must be positive, got {size}")
        if not (math.isfinite(margin) and margin > -0.5):
            raise ValueError(f"margin must be a finite number > -0.5, got {margin}")
        K, R, C, zn, zf = self.frame(mesh, viewpoint, margin)
        color, depth = self.render_depth_rgb(mesh, K, R, C, zn, zf, light, rgb)
        fg = depth > 0
        if not fg.any():
            raise RuntimeError(f"the model {mesh.source or '<array mesh>'} is not visible "
                               f"from {viewpoint}")
        ys, xs = np.nonzero(fg)
        crop = CropTransform.from_pixel_box(xs.min(), ys.min(), xs.max(), ys.max(), W, H,
                                            scale=1.0 + margin)
        return self._finish(mesh, viewpoint, crop, K, R, C, color, depth, background, rgb)

    def _finish(self, mesh, viewpoint, crop, K, R, C, color, depth, background, rgb):
        W, H = crop.width, crop.height
        gx, gy = crop.source_grid()
        d_crop = _sample_depth(depth, gx, gy)
        mask = d_crop > 0
        # points along the exact ray of each output pixel
        xc = (gx - K[0, 2]) / K[0, 0]
        yc = (gy - K[1, 2]) / K[1, 1]
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
        return RenderResult(img, mask, d_crop.astype(np.float32), pts, crop, viewpoint, K, R, C,
                            depth)


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
        return cr.crop_image(bg.astype(np.float32))
    raise ValueError(f"background must be an (r, g, b) colour or an H×W×3 image, "
                     f"got shape {bg.shape}")


def _sample_depth(depth: np.ndarray, xs: np.ndarray, ys: np.ndarray,
                  rel_tol: float = 0.01) -> np.ndarray:
    """Depth at float positions: foreground where the nearest pixel is foreground; bilinear in
    1/z where the four neighbours are foreground and within ``rel_tol`` of each other, else the
    nearest pixel's depth. 0 on background."""
    Hs, Ws = depth.shape
    xi = np.clip(np.rint(xs).astype(np.int64), 0, Ws - 1)
    yi = np.clip(np.rint(ys).astype(np.int64), 0, Hs - 1)
    inside = (xs > -0.5) & (xs < Ws - 0.5) & (ys > -0.5) & (ys < Hs - 0.5)
    near = np.where(inside, depth[yi, xi], 0.0)
    x0 = np.clip(np.floor(xs).astype(np.int64), 0, Ws - 2)
    y0 = np.clip(np.floor(ys).astype(np.int64), 0, Hs - 2)
    fx = np.clip(xs - x0, 0.0, 1.0)
    fy = np.clip(ys - y0, 0.0, 1.0)
    d00 = depth[y0, x0]
    d01 = depth[y0, x0 + 1]
    d10 = depth[y0 + 1, x0]
    d11 = depth[y0 + 1, x0 + 1]
    stack = np.stack([d00, d01, d10, d11])
    lo, hi = stack.min(0), stack.max(0)
    smooth = (lo > 0) & (hi - lo <= rel_tol * lo)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = ((1 - fy) * ((1 - fx) / d00 + fx / d01) + fy * ((1 - fx) / d10 + fx / d11))
        interp = 1.0 / inv
    out = np.where(smooth & (near > 0), interp, near)
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
