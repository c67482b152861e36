"""Exact synthetic correspondence between two renders of one model, and keypoint projection.

Ground truth between views a and b (both cropped ``size×size``; DESIGN.md conventions): for
every a-pixel p with a surface point X(p) (from the render's depth),

    q = crop_b( π_b(X(p)) ),        flow_ab(p) = q − p          (channel 0 = x, 1 = y, pixels)

and ``matchability_ab(p) = 1`` iff p is on the object in a, X(p) is the visible surface in b
(its camera depth agrees with b's depth buffer at π_b(X) to within
``rel_tol·z + px_tol·z/f_b``, i.e. a relative tolerance plus ``px_tol`` pixel footprints), and q
lies in b's pixel grid ``[0, W−1] × [0, H−1]``. The flow is the geometric reprojection wherever
a has a surface point (also where occluded in b) and 0 on a's background.

Accuracy: with the ``raster`` backend X(p) is the exact ray–triangle intersection at every pixel
centre, so the flow is exact to float precision; with ``gl`` it is exact on smooth surfaces and
off by at most about one pixel footprint at silhouette corners and creases (depth interpolated
from the viewport's depth buffer).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .camera import Viewpoint
from .mesh import Mesh
from .renderer import Light, Renderer, RenderResult, default_renderer

__all__ = ["Correspondence", "Keypoints", "synthetic_correspondence", "correspondence_between",
           "correspondence_across", "same_topology", "project_keypoints", "visibility"]


@dataclass
class Correspondence:
    """Ground truth a → b.

    Attributes:
        flow: (2, H, W) float32, ``flow[:, y, x] = q − p`` in b's cropped pixels (x first).
        matchability: (H, W) float32 in {0, 1}.
        view_a, view_b: the two :class:`RenderResult` (rgb, mask, depth, points, crop).
    """

    flow: np.ndarray
    matchability: np.ndarray
    view_a: RenderResult
    view_b: RenderResult


@dataclass
class Keypoints:
    """Projected 3D keypoints of a model in a render's cropped frame.

    Attributes:
        names: N keypoint names (sorted).
        xy: (N, 2) float64 (x, y), 0-based, pixel centres at integers, cropped frame.
        visible: (N,) bool, inside the crop and not occluded by the model itself.
        depth: (N,) float64 camera-frame z of each keypoint.
    """

    names: list
    xy: np.ndarray
    visible: np.ndarray
    depth: np.ndarray


def visibility(view: RenderResult, points: np.ndarray, rel_tol: float = 0.002,
               px_tol: float = 1.5, abs_tol: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Depth test of canonical points (N, 3) against a render.

    Returns ``(xy, visible)``: ``xy`` (N, 2) in the view's cropped frame and ``visible`` (N,)
    bool: in front of the camera, inside the view's depth buffer, and some foreground pixel among
    the 2×2 around the projection has depth within ``abs_tol + rel_tol·z + px_tol·z/f`` of the
    point's z.
    """
    from .raster import visibility_buffer  # on use: numba kernels, kept out of CLI start-up

    pts = np.asarray(points, np.float64).reshape(-1, 3)
    _, _, vis = visibility_buffer(pts, view.R, view.C, view.K_buffer, view.depth_buffer,
                                  rel_tol, px_tol, abs_tol)
    return view.project(pts)[0], vis


def correspondence_between(view_a: RenderResult, view_b: RenderResult, rel_tol: float = 0.002,
                           px_tol: float = 1.5) -> Correspondence:
    """Ground-truth flow and matchability a → b from two renders of the same mesh (see the
    module docstring for the formulas and the visibility tolerance)."""
    H, W = view_a.mask.shape
    Hb, Wb = view_b.mask.shape
    m = view_a.mask
    flow = np.zeros((2, H, W), np.float32)
    match = np.zeros((H, W), np.float32)
    if m.any():
        X = view_a.points[m].astype(np.float64)
        q, vis = visibility(view_b, X, rel_tol, px_tol)
        ys, xs = np.nonzero(m)
        flow[0, ys, xs] = q[:, 0] - xs
        flow[1, ys, xs] = q[:, 1] - ys
        inside = (q[:, 0] >= 0) & (q[:, 0] <= Wb - 1) & (q[:, 1] >= 0) & (q[:, 1] <= Hb - 1)
        match[ys, xs] = (vis & inside).astype(np.float32)
    return Correspondence(flow, match, view_a, view_b)


def same_topology(mesh_a: Mesh, mesh_b: Mesh) -> bool:
    """Whether two meshes share one topology: as many vertices, the same face list (vertex ``i``
    is then the same point of the object on both, as in the gsnet/ApolloCar3D cars)."""
    return (mesh_a.vertices.shape == mesh_b.vertices.shape
            and np.array_equal(mesh_a.faces, mesh_b.faces))


def _face_ids(mesh: Mesh, view: RenderResult) -> np.ndarray:
    """The face seen at every pixel centre of ``view`` (a render of ``mesh``), ``(H, W)`` int,
    −1 on background: the raster backend's own rasterisation in the cropped frame."""
    from .raster import rasterize, to_camera  # on use: numba kernels

    H, W = view.mask.shape
    pc, _ = to_camera(mesh.vertices, view.R, view.C)
    iz = 1.0 / np.maximum(pc[:, 2], 1e-12)
    xs = view.K[0, 0] * pc[:, 0] * iz + view.K[0, 2]
    ys = view.K[1, 1] * pc[:, 1] * iz + view.K[1, 2]
    return rasterize(xs, ys, iz, mesh.faces, H, W)[0]


def correspondence_across(mesh_a: Mesh, view_a: RenderResult, mesh_b: Mesh,
                          view_b: RenderResult, rel_tol: float = 0.002,
                          px_tol: float = 1.5) -> Correspondence:
    """Ground truth a → b between renders of two *different* models of one topology
    (:func:`same_topology`): the surface point X_a(p) seen at a-pixel p lies in face f with
    barycentric coordinates (u, v, w); its match is the point with the same coordinates in the
    same face of model b, ``X_b = u·B[f₀] + v·B[f₁] + w·B[f₂]``, and

        q = crop_b( π_b(X_b) ),        flow_ab(p) = q − p,

    matchable where X_b is the visible surface of b (the depth test of
    :func:`correspondence_between`) and q lies in b's frame; 0 (not matchable) where p is on a's
    background or no face is found at p. With ``mesh_a is mesh_b`` this is
    :func:`correspondence_between`.

    Raises:
        ValueError: the two meshes do not share one topology (the message names both).
    """
    if not same_topology(mesh_a, mesh_b):
        raise ValueError(f"correspondence across models needs one topology: "
                         f"{mesh_a.source or '<array mesh>'} has {len(mesh_a.vertices)} "
                         f"vertices and {len(mesh_a.faces)} faces, "
                         f"{mesh_b.source or '<array mesh>'} {len(mesh_b.vertices)} and "
                         f"{len(mesh_b.faces)} (or other face lists)")
    H, W = view_a.mask.shape
    Hb, Wb = view_b.mask.shape
    flow = np.zeros((2, H, W), np.float32)
    match = np.zeros((H, W), np.float32)
    fid = _face_ids(mesh_a, view_a)
    m = view_a.mask & (fid >= 0)
    if m.any():
        ys, xs = np.nonzero(m)
        f = mesh_a.faces[fid[m]]                                          # (N, 3)
        A0, A1, A2 = (mesh_a.vertices[f[:, k]].astype(np.float64) for k in range(3))
        X = view_a.points[m].astype(np.float64)
        # barycentrics of X in its triangle (least squares in the triangle's plane)
        e1, e2, d = A1 - A0, A2 - A0, X - A0
        g11, g12, g22 = (e1 * e1).sum(1), (e1 * e2).sum(1), (e2 * e2).sum(1)
        r1, r2 = (d * e1).sum(1), (d * e2).sum(1)
        det = np.where(np.abs(g11 * g22 - g12 ** 2) > 1e-30, g11 * g22 - g12 ** 2, 1.0)
        v = (g22 * r1 - g12 * r2) / det
        w = (g11 * r2 - g12 * r1) / det
        u = 1.0 - v - w
        B = mesh_b.vertices
        Xb = (u[:, None] * B[f[:, 0]] + v[:, None] * B[f[:, 1]] + w[:, None] * B[f[:, 2]])
        q, vis = visibility(view_b, Xb, rel_tol, px_tol)
        flow[0, ys, xs] = q[:, 0] - xs
        flow[1, ys, xs] = q[:, 1] - ys
        inside = (q[:, 0] >= 0) & (q[:, 0] <= Wb - 1) & (q[:, 1] >= 0) & (q[:, 1] <= Hb - 1)
        match[ys, xs] = (vis & inside).astype(np.float32)
    return Correspondence(flow, match, view_a, view_b)


def synthetic_correspondence(mesh: Mesh, viewpoint_a: Viewpoint, viewpoint_b: Viewpoint,
                             size: int = 128, light: Light | None = None, background=(0, 0, 0),
                             margin: float = 0.0, rgb: bool = True,
                             renderer: Renderer | None = None, rel_tol: float = 0.002,
                             px_tol: float = 1.5) -> Correspondence:
    """Render ``mesh`` from two viewpoints and return the exact flow a → b and matchability.

    Both are in the cropped ``size×size`` frames of the two renders (see
    :func:`cyclecorr.render.render_view`); ``rgb=False`` skips shading when only the ground
    truth is needed. Other arguments as in ``render_view`` (the same light, background and margin
    for both views).
    """
    r = renderer or default_renderer()
    va = r.render(mesh, viewpoint_a, size, light, background, margin, rgb)
    vb = r.render(mesh, viewpoint_b, size, light, background, margin, rgb)
    return correspondence_between(va, vb, rel_tol, px_tol)


def project_keypoints(mesh: Mesh, viewpoint: Viewpoint | None = None, size: int = 128,
                      view: RenderResult | None = None, tol: float = 0.01, margin: float = 0.0,
                      renderer: Renderer | None = None) -> Keypoints:
    """Project the mesh's named 3D keypoints into a render's cropped frame.

    Args:
        mesh: a mesh with ``keypoints`` (PASCAL3D+ models).
        viewpoint: the camera (ignored when ``view`` is given).
        size, margin: as in ``render_view`` (must match the render the keypoints go with).
        view: an existing render of ``mesh`` to project into (saves a render).
        tol: occlusion tolerance in canonical units (bbox diagonal = 1): a keypoint is hidden
            when the rendered surface at its projection (nearest viewport pixel) is more than
            ``tol`` in front of it.
            PASCAL3D+ keypoints lie on the surface to within ~0.005.

    Returns:
        :class:`Keypoints` with names, xy (N, 2), visible (N,), depth (N,).
    """
    if not mesh.keypoints:
        raise ValueError(f"{mesh.source or '<array mesh>'}: the model has no 3D keypoints")
    if view is None:
        if viewpoint is None:
            raise ValueError("project_keypoints needs a viewpoint or a view")
        view = (renderer or default_renderer()).render(mesh, viewpoint, size, margin=margin,
                                                       rgb=False)
    names = sorted(mesh.keypoints)
    P = np.stack([mesh.keypoints[n] for n in names])
    xy_v, z = view.project_buffer(P)
    D = view.depth_buffer
    Hs, Ws = D.shape
    with np.errstate(invalid="ignore"):
        xn = np.clip(np.rint(np.nan_to_num(xy_v[:, 0], nan=-1.0)), 0, Ws - 1).astype(np.int64)
        yn = np.clip(np.rint(np.nan_to_num(xy_v[:, 1], nan=-1.0)), 0, Hs - 1).astype(np.int64)
    d = D[yn, xn].astype(np.float64)
    front = np.where(d > 0, d, np.inf)  # nothing in front where the pixel is background
    xy = view.project(P)[0]
    H, W = view.mask.shape
    inside = (xy[:, 0] >= -0.5) & (xy[:, 0] <= W - 0.5) & (xy[:, 1] >= -0.5) & (
        xy[:, 1] <= H - 0.5)
    visible = inside & (z > 0) & (z <= front + tol)
    return Keypoints(names, xy, visible, z)
