"""Rendering CAD models and exact synthetic correspondence.

Canonical object frame: z up, front towards −y, centred, bounding-box diagonal 1 (the PASCAL3D+
CAD frame); each source's axis convention is in :data:`SOURCE_CONVENTIONS`. Images are H×W×3
uint8, flows (2, H, W) with channel 0 = x, pixel centres at integer coordinates, and
``flow_ab(p) = q − p``.

>>> mesh = load_mesh("cad/pascal3d/car01.json")
>>> vp_a, vp_b = Viewpoint(azimuth=30, elevation=10), Viewpoint(azimuth=60, elevation=15)
>>> view = render_view(mesh, vp_a, size=128)          # rgb, mask, depth, points, crop
>>> gt = synthetic_correspondence(mesh, vp_a, vp_b)   # gt.flow (2,128,128), gt.matchability
>>> kp = project_keypoints(mesh, vp_a)                # kp.names, kp.xy, kp.visible
"""
from .camera import CropTransform, Viewpoint, look_at_rotation, project_points
from .correspondence import (
    Correspondence,
    Keypoints,
    correspondence_across,
    correspondence_between,
    project_keypoints,
    same_topology,
    synthetic_correspondence,
    visibility,
)
from .mesh import (
    SOURCE_CONVENTIONS,
    Mesh,
    MeshError,
    axes_rotation,
    detect_source,
    list_meshes,
    load_mesh,
)
from .renderer import (
    Light,
    Renderer,
    RenderResult,
    crop_intrinsics,
    default_renderer,
    random_light,
    render_view,
)

__all__ = [
    "CropTransform", "Viewpoint", "look_at_rotation", "project_points",
    "Correspondence", "Keypoints", "correspondence_between", "correspondence_across",
    "same_topology", "project_keypoints", "synthetic_correspondence", "visibility",
    "SOURCE_CONVENTIONS", "Mesh", "MeshError", "axes_rotation", "detect_source", "list_meshes",
    "load_mesh",
    "Light", "Renderer", "RenderResult", "crop_intrinsics", "default_renderer", "random_light",
    "render_view",
]
