"""Pictures of correspondences: Middlebury flow colours, warps, matchability heat maps, keypoint
and grid transfer overlays, an HTML page per run, and the feature-embedding picture.

Conventions: numpy images ``H×W×3`` uint8; flows ``(2, H, W)`` or ``(H, W, 2)`` (channel 0 = x,
pixels, ``flow_ab(p) = q − p``); keypoints ``(N, 2)`` (x, y) 0-based. matplotlib uses Agg.
"""
from cyclecorr.viz.flow_color import color_wheel, color_wheel_legend, flow_to_color
from cyclecorr.viz.pictures import (
    blend,
    draw_correspondences,
    grid_points,
    heatmap,
    save_png,
    side_by_side,
    warp_image,
)
from cyclecorr.viz.report import write_html_page, write_pair_pictures

__all__ = ["color_wheel", "color_wheel_legend", "flow_to_color", "blend", "draw_correspondences",
           "grid_points", "heatmap", "save_png", "side_by_side", "warp_image", "write_html_page",
           "write_pair_pictures"]
