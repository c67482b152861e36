"""The pictures of one matched pair, and an HTML page that explains them (relative links only, so
the folder can be moved, opened from ``file://`` or served as is).

Files written by :func:`write_pair_pictures` into ``out_dir`` (names relative to it)::

    source.png, target.png     the inputs
    flow.png                   flow colour coding (Middlebury wheel, full colour at the page's
                               fixed scale in pixels, see :func:`~cyclecorr.viz.page_flow_scale`)
    warped.png                 the target warped onto the source: target(p + F(p))
    warped_masked.png          the same where matchability ≥ 0.5 (black elsewhere; when available)
    matchability.png           matchability heat map (inferno: 0 dark, 1 bright)
    transfer.png               a sparse set of confident, well-textured source points (or the
                               given keypoints) joined to their matches in the target
    transfer.txt               those points: x_src y_src x_tgt y_tgt (0-based pixels)
    flow.flo, matchability.npy the raw numbers (Middlebury .flo, source pixels; numpy float32)

The raw numbers (``flow.flo``, ``matchability.npy``, ``transfer.txt``) are always in the images'
own pixels. The pictures and the viewer of an image larger than ``draw_max`` (1024 px a side) are
drawn downscaled (the flow read at the drawn pixels and carried into the drawn target's pixels),
so that a 6000×6000 photo costs about what matching it costs.

:func:`write_html_page` writes the page: what ran (model name, category, card), how to read the
pictures (the flow colour key at the page's scale, the matchability colour bar), per pair an
interactive viewer (:mod:`cyclecorr.viz.viewer`) and the pictures with captions, and the raw
numbers in a collapsed block at the bottom.
"""
from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cyclecorr._io import atomic_path, atomic_write_bytes
from cyclecorr.checkpoint import file_sha256, read_metadata, shipped_model_path
from cyclecorr.data.io import write_flo
from cyclecorr.geometry import rescale_points, transfer_keypoints
from cyclecorr.viz.flow_color import flow_legend, flow_to_color, page_flow_scale
from cyclecorr.viz.pictures import (
    colorbar,
    draw_correspondences,
    heatmap,
    salient_points,
    save_png,
    warp_image,
)
from cyclecorr.viz.viewer import VIEWER_CSS, VIEWER_JS, viewer_data, viewer_html

__all__ = ["write_pair_pictures", "write_html_page", "model_summary", "MATCH_THRESHOLD",
           "DRAW_MAX"]

MATCH_THRESHOLD = 0.5
"""Matchability at or above which a source pixel counts as having a match."""
DRAW_MAX = 1024
"""Longest side, in pixels, at which a pair's pictures are drawn (larger images are downscaled)."""


def _drawn_size(h: int, w: int, draw_max: int) -> tuple[int, int]:
    s = min(1.0, draw_max / max(h, w))
    return max(1, int(round(h * s))), max(1, int(round(w * s)))


def _shrink(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """An ``H×W×3`` uint8 or ``H×W`` float32 image resized to ``hw`` (area average)."""
    if tuple(image.shape[:2]) == tuple(hw):
        return image
    mode = "F" if image.ndim == 2 else None
    im = Image.fromarray(np.ascontiguousarray(image), mode) if mode else Image.fromarray(image)
    return np.asarray(im.resize((hw[1], hw[0]), Image.BOX))


def _drawn_flow(f_hw2: np.ndarray, hw_a: tuple[int, int], hw_b: tuple[int, int],
                da: tuple[int, int], db: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The flow at the drawn source's pixels: ``(original flow read there (H'×W'×2, source
    pixels), the same correspondence in drawn pixels (drawn source → drawn target))``. Each
    drawn pixel reads the flow of the original pixel nearest to its centre."""
    (ha, wa), (hb, wb) = hw_a, hw_b
    ys = rescale_points(np.arange(da[0], dtype=np.float64), ha / da[0])
    xs = rescale_points(np.arange(da[1], dtype=np.float64), wa / da[1])
    yi = np.clip(np.rint(ys), 0, ha - 1).astype(np.int64)
    xi = np.clip(np.rint(xs), 0, wa - 1).astype(np.int64)
    f = f_hw2[yi[:, None], xi[None, :]].astype(np.float64)       # (H', W', 2) original pixels
    qx = rescale_points(xs[None, :] + f[..., 0], db[1] / wb)
    qy = rescale_points(ys[:, None] + f[..., 1], db[0] / hb)
    gy, gx = np.mgrid[0:da[0], 0:da[1]]
    drawn = np.stack([qx - gx, qy - gy], axis=-1).astype(np.float32)
    return f.astype(np.float32), drawn


def write_pair_pictures(out_dir, image_a: np.ndarray, image_b: np.ndarray, flow_ab: np.ndarray,
                        matchability: np.ndarray | None = None, keypoints_a=None,
                        keypoints_b_true=None, points: int = 12, title: str = "",
                        max_flow: float | None = None, draw_max: int = DRAW_MAX) -> dict:
    """Write the pictures of a correspondence ``a → b`` (see module doc) and return the entry
    :func:`write_html_page` shows: ``{"title", "dir", "files": {key: relative path},
    "captions": {key: text}, "stats": {...}, "viewer": {...}}``.

    Args:
        image_a, image_b: ``H×W×3`` uint8 (any sizes).
        flow_ab: ``(H_a, W_a, 2)`` or ``(2, H_a, W_a)`` in pixels, into b's pixels.
        matchability: ``(H_a, W_a)`` in [0, 1] or None.
        keypoints_a: ``(N, 2)`` (x, y) 0-based source points to transfer; default: up to
            ``points`` well-spread, well-textured points with matchability ≥ 0.5
            (:func:`~cyclecorr.viz.pictures.salient_points`).
        keypoints_b_true: optional ground truth in b, drawn as crosses.
        max_flow: flow length (px) drawn at full colour; default
            :func:`~cyclecorr.viz.page_flow_scale` of the source size. Pass the page's scale so
            that every pair of a page shares it.
        draw_max: longest side of the pictures; larger images are drawn downscaled (the raw
            files stay in the images' own pixels).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    f = np.asarray(flow_ab, np.float32)
    ha, wa = image_a.shape[:2]
    hb, wb = image_b.shape[:2]
    if f.shape == (ha, wa, 2):
        f_hw2 = f
    elif f.shape == (2, ha, wa):
        f_hw2 = f.transpose(1, 2, 0)
    else:
        raise ValueError(f"flow has shape {f.shape}; expected ({ha}, {wa}, 2) or (2, {ha}, {wa}) "
                         f"for a {ha}×{wa} source image")
    scale = float(max_flow) if max_flow else page_flow_scale([(ha, wa)])
    m = None
    if matchability is not None:
        m = np.asarray(matchability, np.float32)
        if m.shape != (ha, wa):
            raise ValueError(f"matchability is {m.shape}, source image is {(ha, wa)}")
    # what is drawn: the images at most draw_max a side, the flow read at the drawn pixels
    da, db = _drawn_size(ha, wa, draw_max), _drawn_size(hb, wb, draw_max)
    small = da != (ha, wa) or db != (hb, wb)
    if small:
        img_a, img_b = _shrink(image_a, da), _shrink(image_b, db)
        f_read, f_drawn = _drawn_flow(f_hw2, (ha, wa), (hb, wb), da, db)
        m_drawn = None if m is None else np.clip(_shrink(m, da), 0, 1)
    else:
        img_a, img_b, f_read, f_drawn, m_drawn = image_a, image_b, f_hw2, f_hw2, m
    sa = np.array([da[1] / wa, da[0] / ha])  # drawn / original, (x, y)
    sb = np.array([db[1] / wb, db[0] / hb])
    f_drawn_chw = np.ascontiguousarray(f_drawn.transpose(2, 0, 1))
    files, captions = {}, {}
    drawn_note = (f" Drawn at {da[1]}×{da[0]} px (the source) and {db[1]}×{db[0]} px (the "
                  f"target); the raw files are in the images' own pixels." if small else "")

    def add(key, name, caption):
        files[key] = name
        captions[key] = caption

    save_png(out / "source.png", img_a)
    add("source", "source.png", f"Source ({wa}×{ha} px): the image whose pixels are matched."
        + (f" Drawn at {da[1]}×{da[0]} px." if small else ""))
    save_png(out / "target.png", img_b)
    add("target", "target.png", f"Target ({wb}×{hb} px): where the matches are looked for."
        + (f" Drawn at {db[1]}×{db[0]} px." if small else ""))
    save_png(out / "flow.png", flow_to_color(np.ascontiguousarray(f_read.transpose(2, 0, 1)),
                                             scale))
    mags = np.hypot(f_hw2[..., 0], f_hw2[..., 1])
    add("flow", "flow.png",
        f"Flow, drawn on the source: the colour of a pixel tells in which direction its match "
        f"lies (colour key above), its strength how far: white = in the same place, full colour "
        f"= {scale:g} px or more (this page's fixed scale). Here the median is "
        f"{float(np.median(mags)):.1f} px, the largest {float(mags.max()):.1f} px.")
    warped = warp_image(img_b, f_drawn_chw)
    save_png(out / "warped.png", warped)
    add("warped", "warped.png",
        "Target warped onto the source: every source pixel shows the target pixel the flow sends "
        "it to. Where the flow is right, this is the target object redrawn in the source's "
        "pose and place.")
    stats = {"size_source": [ha, wa], "size_target": [hb, wb],
             "mean_flow_px": float(mags.mean()), "flow_scale_px": scale}
    del mags
    if small:
        stats["drawn_source"], stats["drawn_target"] = list(da), list(db)
    if m is not None:
        save_png(out / "matchability.png", heatmap(m_drawn))
        frac = float((m >= MATCH_THRESHOLD).mean())
        add("matchability", "matchability.png",
            f"Matchability: the model's estimate (0–1, colour bar above) that a source pixel is "
            f"visible in the target. Bright: matchable; dark: background, hidden or outside. "
            f"{100 * frac:.0f} % of the pixels are at or above {MATCH_THRESHOLD}.")
        save_png(out / "warped_masked.png",
                 np.where((m_drawn >= MATCH_THRESHOLD)[..., None], warped, 0).astype(np.uint8))
        add("warped_masked", "warped_masked.png",
            f"The warped target only where matchability ≥ {MATCH_THRESHOLD} (black elsewhere): "
            f"the part of the correspondence the model vouches for.")
        np.save(out / "matchability.npy", m)
        stats["matchable_fraction"] = frac
    if keypoints_a is None:
        kps_a = salient_points(img_a, m_drawn, n=points, threshold=MATCH_THRESHOLD)
        kps_a = rescale_points(kps_a, 1.0 / sa) if small else kps_a  # into the source's pixels
        what = "points"
        if m is not None:
            how = (f"{len(kps_a)} source points picked by the page (well-textured spots with "
                   f"matchability ≥ {MATCH_THRESHOLD}, spread out)")
        else:
            how = f"{len(kps_a)} source points picked by the page (well-textured spots, spread out)"
    else:
        kps_a = np.asarray(keypoints_a, np.float64).reshape(-1, 2)
        what = "keypoints"
        how = f"Your {len(kps_a)} keypoints"
    # float64 for images drawn as they are; a downscaled (large) one is read in float32
    fdt = np.float32 if small else np.float64
    kps_b = transfer_keypoints(torch.from_numpy(kps_a.astype(fdt)), torch.from_numpy(
        np.ascontiguousarray(f_hw2.transpose(2, 0, 1), dtype=fdt))).numpy().astype(np.float64) \
        if len(kps_a) else kps_a.copy()
    true_b = None if keypoints_b_true is None else \
        rescale_points(np.asarray(keypoints_b_true, np.float64).reshape(-1, 2), sb)
    draw_correspondences(img_a, img_b, rescale_points(kps_a, sa), rescale_points(kps_b, sb),
                         out / "transfer.png", kps_b_true=true_b, numbers=True)
    add("transfer", "transfer.png",
        f"{how}, each joined to its match in the target (same colour and number). A good "
        f"correspondence joins the same parts: wheel to wheel, light to light."
        + (" Crosses: the true positions." if keypoints_b_true is not None else "") + drawn_note)
    with atomic_path(out / "transfer.txt") as tmp:
        np.savetxt(tmp, np.concatenate([kps_a, kps_b], 1), fmt="%.3f",
                   header="x_src y_src x_tgt y_tgt (0-based pixels)")
    write_flo(out / "flow.flo", f_hw2, layout="hw2")
    stats["transferred"] = what
    return {"title": title, "files": files, "captions": captions, "stats": stats,
            "dir": str(out), "viewer": viewer_data(f_drawn, m_drawn, db)}


def model_summary(path=None, *, method: str = "model", name: str | None = None) -> dict:
    """What a page says about the model that ran: ``{"name", "category", "input_size", "sha256",
    "card" (a Path or None), "card_title", "note"}``. ``path``: a model file, ``"shipped"`` or
    None (= shipped); ``method``: ``model``, ``siftflow`` or ``zero`` (baselines have no file)."""
    if method == "siftflow":
        return {"name": name or "SIFT flow (Liu et al. 2011)", "category": "any",
                "note": "a hand-designed baseline (dense SIFT matched with belief propagation): "
                        "no learning and no matchability"}
    if method == "zero":
        return {"name": name or "zero flow", "category": "any",
                "note": "the trivial baseline: every pixel matches the same position"}

    p = Path(shipped_model_path("car") if path in (None, "shipped") else path)
    try:  # any model shipped in the package (car, chair, …), named by its category
        shipped = p.resolve() == shipped_model_path(p.stem).resolve()
    except FileNotFoundError:
        shipped = False
    meta = read_metadata(p)
    cfg = meta.get("train_config", {})
    # a shipped model's card sits beside it (car.md), a run's is the run folder's MODEL_CARD.md
    card = next((c for c in (p.with_suffix(".md"), p.parent / "MODEL_CARD.md") if c.is_file()),
                None)
    title = ""
    if card is not None:
        first = card.read_text(encoding="utf-8").splitlines()[:1]
        title = first[0].lstrip("# ").replace("`", "").strip() if first else ""
    return {"name": name or (f"{cfg.get('category', 'car')} (shipped with cyclecorr)" if shipped
                             else p.name),
            "category": cfg.get("category", "?"),
            "input_size": meta.get("net", {}).get("image_size"),
            "sha256": file_sha256(p), "card": card, "card_title": title,
            "note": meta.get("note", "")}


_CSS = """body{font-family:sans-serif;margin:1em 1.5em;background:#fafafa;color:#222;
max-width:1400px}
h1{margin-bottom:.2em}h2{margin-top:1.6em;font-size:1.15em;border-bottom:1px solid #ddd}
h3{font-size:1em;margin:1em 0 .3em}p{max-width:62em;line-height:1.4}
.row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
figure{margin:0;background:#fff;padding:5px;border:1px solid #ddd}
figcaption{font-size:.8em;color:#333;margin-top:4px;line-height:1.3}
.row figure{width:min-content}.row figure img{height:200px;width:auto;display:block}
.row figure figcaption{min-width:220px}.row figure.wide img{height:260px}
.row figure.key img{height:auto}
.model{background:#fff;border:1px solid #ccd;padding:.5em .8em;margin:.6em 0;font-size:.9em;
max-width:62em}table{border-collapse:collapse;font-size:.9em;background:#fff}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
details{margin-top:2em}pre{font-size:.75em;color:#444;white-space:pre-wrap}"""


def _model_html(model: dict, page_dir: Path, card_name: str) -> str:
    """The model box: name, category, input size, SHA-256, a link to its card (copied next to
    the page when it lies outside the page's folder)."""
    esc = html.escape
    parts = [f"<div class='model'><b>Model:</b> {esc(str(model.get('name', '?')))}"]
    if model.get("category"):
        parts.append(f" · <b>category:</b> {esc(str(model['category']))}")
    if model.get("input_size"):
        s = int(model["input_size"])
        parts.append(f" · <b>network input:</b> {s}×{s} px")
    if model.get("sha256"):
        parts.append(f" · <b>SHA-256:</b> <code>{esc(model['sha256'][:16])}…</code>")
    card = model.get("card")
    if card:
        card = Path(card).resolve()
        try:
            rel = card.relative_to(page_dir).as_posix()
        except ValueError:
            rel = card_name
            shutil.copyfile(card, page_dir / rel)
        parts.append(f" · <a href='{esc(rel)}'>model card</a>")
        if model.get("card_title"):
            parts.append(f"<br><i>{esc(model['card_title'])}</i>")
    if model.get("note"):
        parts.append(f"<br>{esc(model['note'])}")
    parts.append("</div>")
    return "".join(parts)


def write_html_page(path, entries: list[dict], title: str = "cyclecorr match",
                    header: str = "", model: dict | None = None, intro_html: str = "",
                    raw: dict | None = None) -> Path:
    """One self-explaining HTML page with a section per matched pair; links are relative.

    Args:
        entries: dicts from :func:`write_pair_pictures` (``dir`` must lie under the page's
            folder); an entry may carry its own ``"model"`` (a :func:`model_summary` dict).
        header: a line of plain text under the title.
        model: the model all pairs were matched with (shown once at the top).
        intro_html: trusted HTML inserted after the model box (the demo's explanation).
        raw: more numbers for the collapsed raw-JSON block at the bottom.
    """
    esc = html.escape
    page = Path(path)
    page.parent.mkdir(parents=True, exist_ok=True)
    base = page.parent.resolve()
    scales = sorted({float(e.get("stats", {}).get("flow_scale_px", 0)) for e in entries} - {0.0})
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
             f"<style>{_CSS}\n{VIEWER_CSS}</style></head><body><h1>{esc(title)}</h1>"]
    if header:
        parts.append(f"<p>{esc(header)}</p>")
    if model:
        parts.append(_model_html(model, base, "model_card.md"))
    if intro_html:
        parts.append(intro_html)
    # how to read the pictures: the flow key at the page's scale, the matchability colour bar
    keys = []
    same = "Every flow picture on this page uses this scale." if len(scales) == 1 else ""
    for s in scales:
        name = f"flow_key_{s:g}px.png"
        save_png(base / name, flow_legend(s))
        keys.append(f"<figure class='key'><img src='{esc(name)}' alt='flow colour key'>"
                    f"<figcaption>Flow colour key: a pixel's colour is the direction of its "
                    f"match; white = 0 px, full colour = {s:g} px or more, darker beyond. "
                    f"{same}"
                    f"</figcaption></figure>")
    if any("matchability" in e["files"] for e in entries):
        save_png(base / "matchability_key.png", colorbar())
        keys.append("<figure class='key'><img src='matchability_key.png' alt='matchability colour "
                    "bar'><figcaption>Matchability colour bar: 0 (dark, no match expected) to 1 "
                    f"(bright); the green line marks {MATCH_THRESHOLD}, the threshold used on "
                    "this page.</figcaption></figure>")
    if keys:
        parts.append("<h3>How to read the pictures</h3><div class='row'>" + "".join(keys)
                     + "</div>")
    for i, e in enumerate(entries):
        d = Path(e["dir"]).resolve()
        try:
            rel = d.relative_to(base)
        except ValueError as err:
            raise ValueError(f"{d} is not under the page's folder {base}") from err
        parts.append(f"<h2>{esc(e.get('title') or str(rel))}</h2>")
        if e.get("model"):
            parts.append(_model_html(e["model"], base, f"model_card_{i + 1}.md"))
        files = e["files"]
        caps = e.get("captions", {})
        if e.get("viewer") and "source" in files and "target" in files:
            parts.append(viewer_html(i, (rel / files["source"]).as_posix(),
                                     (rel / files["target"]).as_posix(), e["viewer"]))
        shown = [k for k in files if not (e.get("viewer") and k in ("source", "target"))]
        parts.append("<div class='row'>")
        for k in shown:
            src = (rel / files[k]).as_posix()
            wide = " class='wide'" if k == "transfer" else ""
            parts.append(f"<figure{wide}><a href='{esc(src)}'><img src='{esc(src)}' "
                         f"alt='{esc(k)}'></a><figcaption>{esc(caps.get(k, k))}</figcaption>"
                         f"</figure>")
        parts.append("</div>")
    numbers = {"pairs": [{"title": e.get("title"), "folder": Path(e["dir"]).name,
                          **e.get("stats", {})} for e in entries]}
    if raw:
        numbers.update(raw)
    parts.append("<details><summary>Raw numbers (JSON) and files</summary><p>Each pair's folder "
                 "also holds <code>flow.flo</code> (Middlebury format, source pixels), "
                 "<code>matchability.npy</code> and <code>transfer.txt</code>.</p><pre>"
                 f"{esc(json.dumps(numbers, indent=1, default=str))}</pre></details>")
    parts.append(f"<script>{VIEWER_JS}</script></body></html>\n")
    atomic_write_bytes(page, "".join(parts).encode("utf-8"))
    return page
