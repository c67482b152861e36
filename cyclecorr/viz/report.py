"""The pictures of one matched pair, and an HTML page that shows them (relative links only, so the
folder can be moved or served as is).

Files written by :func:`write_pair_pictures` into ``out_dir`` (names relative to it)::

    source.png, target.png     the inputs
    flow.png                   flow colour coding (Middlebury wheel, saturated at max_flow)
    warped.png                 the target warped onto the source: target(p + F(p))
    warped_masked.png          the same where matchability ≥ 0.5 (black elsewhere; when available)
    matchability.png           matchability heat map (inferno: 0 dark, 1 bright)
    transfer.png               source keypoints (or a grid) and their transfer into the target
    flow.flo, matchability.npy the raw numbers (Middlebury .flo, source pixels; numpy float32)
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import torch

from cyclecorr.data.io import write_flo
from cyclecorr.geometry import transfer_keypoints
from cyclecorr.viz.flow_color import color_wheel_legend, flow_to_color
from cyclecorr.viz.pictures import draw_correspondences, grid_points, heatmap, save_png, warp_image

__all__ = ["write_pair_pictures", "write_html_page"]


def write_pair_pictures(out_dir, image_a: np.ndarray, image_b: np.ndarray, flow_ab: np.ndarray,
                        matchability: np.ndarray | None = None, keypoints_a=None,
                        keypoints_b_true=None, grid: int = 10, title: str = "",
                        max_flow: float | None = None) -> dict:
    """Write the pictures of a correspondence ``a → b`` (see module doc) and return
    ``{"title", "files": {label: relative path}, "stats": {...}}`` for :func:`write_html_page`.

    Args:
        image_a, image_b: ``H×W×3`` uint8 (any sizes).
        flow_ab: ``(H_a, W_a, 2)`` or ``(2, H_a, W_a)`` in pixels, into b's pixels.
        matchability: ``(H_a, W_a)`` in [0, 1] or None.
        keypoints_a: ``(N, 2)`` (x, y) 0-based source points to transfer; default a grid of
            ``grid × grid`` points (on pixels with matchability ≥ 0.5 when available).
        keypoints_b_true: optional ground truth in b, drawn as crosses.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    f = np.asarray(flow_ab, np.float32)
    ha, wa = image_a.shape[:2]
    if f.shape == (ha, wa, 2):
        f_hw2 = f
    elif f.shape == (2, ha, wa):
        f_hw2 = f.transpose(1, 2, 0)
    else:
        raise ValueError(f"flow has shape {f.shape}; expected ({ha}, {wa}, 2) or (2, {ha}, {wa}) "
                         f"for a {ha}×{wa} source image")
    f_chw = np.ascontiguousarray(f_hw2.transpose(2, 0, 1))
    files = {}
    save_png(out / "source.png", image_a)
    files["source"] = "source.png"
    save_png(out / "target.png", image_b)
    files["target"] = "target.png"
    save_png(out / "flow.png", flow_to_color(f_chw, max_flow))
    files["flow (colour wheel)"] = "flow.png"
    warped = warp_image(image_b, f_chw)
    save_png(out / "warped.png", warped)
    files["target warped onto source"] = "warped.png"
    stats = {"size_source": [ha, wa], "size_target": list(image_b.shape[:2]),
             "mean_flow_px": float(np.linalg.norm(f_hw2, axis=-1).mean())}
    if matchability is not None:
        m = np.asarray(matchability, np.float32)
        if m.shape != (ha, wa):
            raise ValueError(f"matchability is {m.shape}, source image is {(ha, wa)}")
        save_png(out / "matchability.png", heatmap(m))
        files["matchability"] = "matchability.png"
        masked = np.where((m >= 0.5)[..., None], warped, 0).astype(np.uint8)
        save_png(out / "warped_masked.png", masked)
        files["warped where matchable"] = "warped_masked.png"
        np.save(out / "matchability.npy", m)
        stats["matchable_fraction"] = float((m >= 0.5).mean())
    if keypoints_a is None:
        mask = None
        if matchability is not None and (np.asarray(matchability) >= 0.5).sum() >= 4:
            mask = np.asarray(matchability) >= 0.5
        kps_a = grid_points(ha, wa, n=grid, mask=mask)
        what = "grid"
    else:
        kps_a = np.asarray(keypoints_a, np.float64).reshape(-1, 2)
        what = "keypoints"
    kps_b = transfer_keypoints(torch.from_numpy(kps_a), torch.from_numpy(f_chw).double()).numpy() \
        if len(kps_a) else kps_a.copy()
    draw_correspondences(image_a, image_b, kps_a, kps_b, out / "transfer.png",
                         kps_b_true=keypoints_b_true)
    files[f"transferred {what}"] = "transfer.png"
    np.savetxt(out / "transfer.txt", np.concatenate([kps_a, kps_b], 1), fmt="%.3f",
               header="x_src y_src x_tgt y_tgt (0-based pixels)")
    write_flo(out / "flow.flo", f_chw)
    save_png(out / "flow_legend.png", color_wheel_legend(64))
    return {"title": title, "files": files, "stats": stats, "dir": str(out)}


_CSS = """body{font-family:sans-serif;margin:1em;background:#fafafa}
h2{margin-top:1.5em;font-size:1.1em}.row{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;background:#fff;padding:4px;border:1px solid #ddd}
figcaption{font-size:0.8em;color:#444;max-width:320px}
img{height:220px;width:auto;image-rendering:pixelated}pre{font-size:0.8em;color:#555}"""


def write_html_page(path, entries: list[dict], title: str = "cyclecorr match",
                    header: str = "") -> Path:
    """One HTML page with a section per matched pair; image links are relative to the page.

    ``entries``: dicts from :func:`write_pair_pictures` (``dir`` must lie under the page's folder).
    """
    page = Path(path)
    page.parent.mkdir(parents=True, exist_ok=True)
    base = page.parent.resolve()
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if header:
        parts.append(f"<p>{html.escape(header)}</p>")
    for e in entries:
        d = Path(e["dir"]).resolve()
        try:
            rel = d.relative_to(base)
        except ValueError as err:
            raise ValueError(f"{d} is not under the page's folder {base}") from err
        parts.append(f"<h2>{html.escape(e.get('title') or str(rel))}</h2><div class='row'>")
        for label, f in e["files"].items():
            src = (rel / f).as_posix()
            parts.append(f"<figure><a href='{html.escape(src)}'><img src='{html.escape(src)}' "
                         f"alt='{html.escape(label)}'></a><figcaption>{html.escape(label)}"
                         f"</figcaption></figure>")
        if "flow (colour wheel)" in e["files"]:
            legend = (rel / "flow_legend.png").as_posix()
            parts.append(f"<figure><img src='{html.escape(legend)}' alt='legend'><figcaption>flow "
                         f"colour key (direction = hue, length = saturation)</figcaption></figure>")
        parts.append("</div>")
        if e.get("stats"):
            parts.append(f"<pre>{html.escape(json.dumps(e['stats']))}</pre>")
    parts.append("</body></html>\n")
    page.write_text("".join(parts))
    return page
