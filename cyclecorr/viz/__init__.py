"""Pictures of correspondences: Middlebury flow colours with a fixed-scale key, warps,
matchability heat maps with a colour bar, keypoint transfer overlays, a self-explaining HTML page
per run with an interactive viewer, and the feature-embedding picture.

Conventions: numpy images ``H×W×3`` uint8; flows ``(2, H, W)`` or ``(H, W, 2)`` (channel 0 = x,
pixels, ``flow_ab(p) = q − p``); keypoints ``(N, 2)`` (x, y) 0-based. matplotlib uses Agg.
"""
from cyclecorr.viz.flow_color import (
    color_wheel,
    color_wheel_legend,
    flow_legend,
    flow_to_color,
    page_flow_scale,
)
from cyclecorr.viz.pictures import (
    blend,
    colorbar,
    draw_correspondences,
    grid_points,
    heatmap,
    salient_points,
    save_png,
    side_by_side,
    warp_image,
)
from cyclecorr.viz.report import model_summary, write_html_page, write_pair_pictures

__all__ = ["color_wheel", "color_wheel_legend", "flow_legend", "flow_to_color", "page_flow_scale",
           "blend", "colorbar", "draw_correspondences", "grid_points", "heatmap", "salient_points",
           "save_png", "side_by_side", "warp_image", "model_summary", "write_html_page",
           "write_pair_pictures"]
