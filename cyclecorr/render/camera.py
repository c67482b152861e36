"""Cameras from PASCAL3D+ viewpoints, and the crop transform shared with real photos.

Canonical object frame (see :mod:`cyclecorr.render.mesh`): z up, the object's front towards −y,
centred on its bounding-box centre, bounding-box diagonal 1 (the PASCAL3D+ CAD frame).

Viewpoint (PASCAL3D+ convention, angles in degrees)
----------------------------------------------------
With azimuth ``a``, elevation ``e`` and distance ``d`` the camera centre is::

    C = d · (cos e · sin a,  −cos e · cos a,  sin e)

and the camera looks at the origin with the world z axis pointing up in the image. Azimuth 0,
elevation 0 therefore shows the object's front (the camera sits on the −y axis); azimuth grows
counter-clockwise seen from above (azimuth 90 looks from +x). ``theta`` is the in-plane rotation:
the image is rotated counter-clockwise on screen by ``theta`` (PASCAL3D+ ``project_3d.m``).

Camera frame (OpenCV): x right, y down, z forward. ``R`` maps world to camera,
``X_cam = R · (X − C)``, and with intrinsics ``K = [[f, 0, cx], [0, f, cy], [0, 0, 1]]`` a point
projects to ``x = f · X_cam/Z_cam + cx``, ``y = f · Y_cam/Z_cam + cy``, in pixels whose centres
are at integer coordinates (pixel (0, 0) covers [−0.5, 0.5]²). The PASCAL3D+ image frame uses
``f = focal · viewport`` (``focal = 1``, ``viewport = 3000`` by default) and the principal point
given in the annotation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Viewpoint", "CropTransform", "look_at_rotation", "project_points"]


def look_at_rotation(azimuth: float, elevation: float, theta: float = 0.0) -> np.ndarray:
    """World→camera rotation (3×3, OpenCV axes) for a PASCAL3D+ viewpoint in degrees.

    Rows of ``R`` are the camera's right, down and forward axes expressed in the world frame,
    followed by the in-plane roll ``theta`` (counter-clockwise on screen).
    """
    a, e, t = (math.radians(float(v)) for v in (azimuth, elevation, theta))
    # forward = −C/|C|
    fwd = -np.array([math.cos(e) * math.sin(a), -math.cos(e) * math.cos(a), math.sin(e)])
    # right = forward × up_world; well defined at the poles through the azimuth
    right = np.array([math.cos(a), math.sin(a), 0.0])
    down = np.cross(fwd, right)
    R = np.stack([right, down, fwd])
    c, s = math.cos(t), math.sin(t)
    roll = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
    return roll @ R


@dataclass(frozen=True)
class Viewpoint:
    """A PASCAL3D+ viewpoint of an object in the canonical frame (see the module docstring).

    Args:
        azimuth: degrees; 0 = frontal view, 90 = view from the object's +x side.
        elevation: degrees above the ground plane.
        theta: in-plane rotation in degrees (counter-clockwise on screen).
        distance: camera distance from the object's centre, in canonical units (the bounding-box
            diagonal is 1, so the default 2.5 frames the whole object with mild perspective).
        focal: PASCAL3D+ focal length (multiplied by ``viewport`` to give pixels).
        viewport: PASCAL3D+ viewport scale in pixels.
        principal: principal point (x, y) in pixels of the full image; ``None`` = (0, 0).

    ``focal``, ``viewport`` and ``principal`` only define :meth:`intrinsics` (the frame of the full
    PASCAL3D+ photograph); renders are cropped to the object's box, which removes them.
    """

    azimuth: float
    elevation: float
    theta: float = 0.0
    distance: float = 2.5
    focal: float = 1.0
    viewport: float = 3000.0
    principal: tuple[float, float] | None = None

    def __post_init__(self):
        for name in ("azimuth", "elevation", "theta", "distance", "focal", "viewport"):
            v = float(getattr(self, name))
            if not math.isfinite(v):
                raise ValueError(f"Viewpoint.{name} must be finite, got {v}")
        if self.distance <= 0:
            raise ValueError(f"Viewpoint.distance must be > 0, got {self.distance}")
        if self.focal <= 0 or self.viewport <= 0:
            raise ValueError(f"Viewpoint focal and viewport must be > 0, got {self.focal}, "
                             f"{self.viewport}")

    @property
    def center(self) -> np.ndarray:
        """Camera centre ``C`` (3,) in the canonical frame."""
        a, e = math.radians(self.azimuth), math.radians(self.elevation)
        d = float(self.distance)
        return np.array([d * math.cos(e) * math.sin(a), -d * math.cos(e) * math.cos(a),
                         d * math.sin(e)])

    @property
    def rotation(self) -> np.ndarray:
        """World→camera rotation ``R`` (3×3, OpenCV axes)."""
        return look_at_rotation(self.azimuth, self.elevation, self.theta)

    def extrinsics(self) -> np.ndarray:
        """``[R | t]`` (3×4) with ``t = −R C``: ``X_cam = R X + t``."""
        R = self.rotation
        return np.concatenate([R, (-R @ self.center)[:, None]], axis=1)

    def intrinsics(self) -> np.ndarray:
        """PASCAL3D+ intrinsics ``K`` (3×3): ``f = focal·viewport``, principal point as given."""
        f = float(self.focal) * float(self.viewport)
        px, py = self.principal if self.principal is not None else (0.0, 0.0)
        return np.array([[f, 0.0, px], [0.0, f, py], [0.0, 0.0, 1.0]])

    def projection(self) -> np.ndarray:
        """The 3×4 camera matrix ``P = K [R | t]`` of the full PASCAL3D+ image."""
        return self.intrinsics() @ self.extrinsics()

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """Canonical-frame points (N, 3) → camera-frame points (N, 3)."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return (pts - self.center) @ self.rotation.T


def project_points(points_cam: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pinhole projection of camera-frame points (N, 3) with intrinsics K → (N, 2) pixels (x, y)."""
    z = points_cam[:, 2]
    x = K[0, 0] * points_cam[:, 0] / z + K[0, 2]
    y = K[1, 1] * points_cam[:, 1] / z + K[1, 2]
    return np.stack([x, y], axis=1)


@dataclass(frozen=True)
class CropTransform:
    """Crop of the box ``[x0, x1] × [y0, y1]`` resized to ``width × height`` (aspect not kept).

    The box is given by its *edges* in continuous source coordinates where pixel centres are at
    integers (a box covering pixels ``i0 … i1`` has ``x0 = i0 − 0.5``, ``x1 = i1 + 0.5``). The map
    sends box edges to output edges::

        x' = (x − x0) · width  / (x1 − x0) − 0.5
        y' = (y − y0) · height / (y1 − y0) − 0.5

    so output pixel centres are again at integers ``0 … width−1``. Real photos cropped to an
    annotated box and renders cropped to the object's mask box use the same transform.
    """

    x0: float
    y0: float
    x1: float
    y1: float
    width: int = 128
    height: int = 128

    def __post_init__(self):
        vals = (self.x0, self.y0, self.x1, self.y1)
        if not all(math.isfinite(float(v)) for v in vals):
            raise ValueError(f"CropTransform box must be finite, got {vals}")
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise ValueError(f"CropTransform box must have x1 > x0 and y1 > y0, got {vals}")
        if int(self.width) < 1 or int(self.height) < 1:
            raise ValueError(f"CropTransform size must be positive, got {self.width}×{self.height}")

    @classmethod
    def from_pixel_box(cls, xmin: float, ymin: float, xmax: float, ymax: float,
                       width: int = 128, height: int | None = None,
                       scale: float = 1.0) -> CropTransform:
        """Box of inclusive pixel indices ``xmin…xmax``, ``ymin…ymax`` (e.g. a mask's extent),
        enlarged ``scale`` times about its centre (``scale = 1.1`` for the VOC crops)."""
        height = width if height is None else height
        x0, x1 = xmin - 0.5, xmax + 0.5
        y0, y1 = ymin - 0.5, ymax + 0.5
        if scale != 1.0:
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            hw, hh = (x1 - x0) * scale / 2, (y1 - y0) * scale / 2
            x0, x1, y0, y1 = cx - hw, cx + hw, cy - hh, cy + hh
        return cls(float(x0), float(y0), float(x1), float(y1), int(width), int(height))

    @property
    def scale(self) -> tuple[float, float]:
        """``(sx, sy)``: output pixels per source pixel."""
        return self.width / (self.x1 - self.x0), self.height / (self.y1 - self.y0)

    def apply(self, xy: np.ndarray) -> np.ndarray:
        """Source pixel coordinates (..., 2) as (x, y) → cropped-frame coordinates."""
        xy = np.asarray(xy, dtype=np.float64)
        sx, sy = self.scale
        out = np.empty_like(xy)
        out[..., 0] = (xy[..., 0] - self.x0) * sx - 0.5
        out[..., 1] = (xy[..., 1] - self.y0) * sy - 0.5
        return out

    def inverse(self, xy: np.ndarray) -> np.ndarray:
        """Cropped-frame coordinates (..., 2) → source pixel coordinates."""
        xy = np.asarray(xy, dtype=np.float64)
        sx, sy = self.scale
        out = np.empty_like(xy)
        out[..., 0] = (xy[..., 0] + 0.5) / sx + self.x0
        out[..., 1] = (xy[..., 1] + 0.5) / sy + self.y0
        return out

    def source_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Source coordinates ``(xs, ys)`` (each height×width) of every output pixel centre."""
        xs = (np.arange(self.width) + 0.5) * (self.x1 - self.x0) / self.width + self.x0
        ys = (np.arange(self.height) + 0.5) * (self.y1 - self.y0) / self.height + self.y0
        return np.meshgrid(xs, ys)

    def crop_image(self, image: np.ndarray, order: int = 1, fill: float | None = 0.0
                   ) -> np.ndarray:
        """Resample ``image`` (H×W or H×W×C) into the crop frame.

        ``order`` 1 = bilinear, 0 = nearest; pixels outside the source are ``fill``, or the
        nearest border pixel when ``fill`` is None. The dtype is kept (uint8 is rounded and
        clipped).
        """
        img = np.asarray(image)
        if img.ndim not in (2, 3) or img.shape[0] == 0 or img.shape[1] == 0:
            raise ValueError(f"crop_image expects an H×W or H×W×C image, got shape {img.shape}")
        xs, ys = self.source_grid()
        if fill is None:
            xs = np.clip(xs, 0, img.shape[1] - 1)
            ys = np.clip(ys, 0, img.shape[0] - 1)
            fill = 0.0
        out = _sample(img.astype(np.float32) if img.dtype != np.float64 else img, xs, ys,
                      order, fill)
        if img.dtype == np.uint8:
            return np.clip(np.rint(out), 0, 255).astype(np.uint8)
        if img.dtype == bool:
            return out > 0.5
        return out.astype(img.dtype, copy=False)


def _sample(img: np.ndarray, xs: np.ndarray, ys: np.ndarray, order: int, fill: float):
    """Sample ``img`` at float pixel coordinates (pixel centres at integers)."""
    H, W = img.shape[:2]
    if order == 0:
        xi = np.rint(xs).astype(np.int64)
        yi = np.rint(ys).astype(np.int64)
        ok = (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
        out = img[np.clip(yi, 0, H - 1), np.clip(xi, 0, W - 1)].astype(np.float64)
        out[~ok] = fill
        return out
    x0 = np.floor(xs).astype(np.int64)
    y0 = np.floor(ys).astype(np.int64)
    fx = (xs - x0).astype(np.float32)
    fy = (ys - y0).astype(np.float32)
    if fill == 0.0:
        # pad once with a zero border instead of masking every tap
        pad = np.zeros((H + 2, W + 2) + img.shape[2:], np.float32)
        pad[1:-1, 1:-1] = img
        xi = np.clip(x0 + 1, 0, W)
        yi = np.clip(y0 + 1, 0, H)
        # taps that fall outside by more than one pixel read the zero border
        far = (x0 < -1) | (x0 > W - 1) | (y0 < -1) | (y0 > H - 1)
        xi[far], yi[far] = 0, 0
        a, b = pad[yi, xi], pad[yi, xi + 1]
        c, d = pad[yi + 1, xi], pad[yi + 1, xi + 1]
        if img.ndim == 3:
            fx, fy = fx[..., None], fy[..., None]
        top = a + (b - a) * fx
        bot = c + (d - c) * fx
        return top + (bot - top) * fy
    out = 0.0
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            ok = (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
            v = img[np.clip(yi, 0, H - 1), np.clip(xi, 0, W - 1)].astype(np.float64)
            v[~ok] = fill
            w = wx * wy
            out = out + (v * (w[..., None] if v.ndim == 3 else w))
    return out
