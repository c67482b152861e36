"""Pictures: flow colours, warps, heat maps, overlays, HTML page, embedding."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from cyclecorr.viz import (
    color_wheel,
    draw_correspondences,
    flow_to_color,
    grid_points,
    heatmap,
    warp_image,
    write_html_page,
    write_pair_pictures,
)
from cyclecorr.viz.embedding import embed_features, plot_embedding, tsne


def test_flow_colours():
    assert color_wheel().shape == (55, 3)
    f = np.zeros((2, 3, 4))
    assert (flow_to_color(f) == 255).all()  # zero flow is white
    f[0, 0, 0] = 1.0  # right
    f[0, 0, 1] = -1.0  # left
    f[1, 0, 2] = 1.0  # down
    f[0, 0, 3] = np.nan
    c = flow_to_color(f, max_flow=1.0)
    assert tuple(c[0, 0]) != tuple(c[0, 1]) != tuple(c[0, 2])
    assert c[0, 0, 0] == 255 and c[0, 0, 1] == 0  # rightward: red end of the wheel
    assert c[0, 1, 0] == 0 and c[0, 1, 2] == 255  # leftward: cyan/blue
    assert (c[0, 3] == 0).all()  # unknown → black
    # half the saturating length: half-way to white; (H, W, 2) layout gives the same picture
    h = flow_to_color(f * 0.5, max_flow=1.0)
    assert 120 <= h[0, 0, 1] <= 135
    np.testing.assert_array_equal(flow_to_color(f.transpose(1, 2, 0), max_flow=1.0), c)
    with pytest.raises(ValueError, match="flow must be"):
        flow_to_color(np.zeros((3, 3)))


def test_warp_image_integer_shift():
    rng = np.random.default_rng(0)
    b = rng.integers(0, 255, (6, 9, 3), dtype=np.uint8)
    flow = np.zeros((2, 6, 9), np.float32)
    flow[0] = 2.0  # out(p) = b(p + (2, 0))
    w = warp_image(b, flow)
    np.testing.assert_array_equal(w[:, :7], b[:, 2:])
    assert (w[:, 7:] == 0).all()  # outside b: fill


def test_heatmap_and_grid():
    h = heatmap(np.array([[0.0, 1.0]]))
    assert h.shape == (1, 2, 3) and h.dtype == np.uint8
    assert h[0, 1].astype(int).sum() > h[0, 0].astype(int).sum()
    pts = grid_points(20, 30, n=5)
    assert len(pts) > 0 and (pts[:, 0] < 30).all() and (pts[:, 1] < 20).all()
    mask = np.zeros((20, 30), bool)
    mask[:, :15] = True
    assert (grid_points(20, 30, n=5, mask=mask)[:, 0] < 15).all()


def test_pair_pictures_and_html(tmp_path):
    a = np.full((37, 51, 3), 100, np.uint8)
    b = np.full((45, 29, 3), 200, np.uint8)
    flow = np.zeros((37, 51, 2), np.float32)
    m = np.linspace(0, 1, 37 * 51).reshape(37, 51).astype(np.float32)
    e = write_pair_pictures(tmp_path / "run" / "p1", a, b, flow, m, title="a → b")
    for f in e["files"].values():
        assert (tmp_path / "run" / "p1" / f).is_file()
    with Image.open(tmp_path / "run" / "p1" / "flow.png") as im:
        assert im.size == (51, 37)
    page = write_html_page(tmp_path / "run" / "index.html", [e], title="t")
    srcs = re.findall(r"src='([^']+)'", page.read_text())
    assert srcs and all(not s.startswith("/") for s in srcs)
    assert all((page.parent / s).is_file() for s in srcs)
    with pytest.raises(ValueError, match="flow has shape"):
        write_pair_pictures(tmp_path / "bad", a, b, np.zeros((10, 10, 2)))


def test_draw_correspondences_writes_png(tmp_path):
    a = np.zeros((20, 30, 3), np.uint8)
    p = draw_correspondences(a, a, [[1, 2], [5, 5]], [[3, 4], [np.nan, 1]], tmp_path / "c.png")
    with Image.open(p) as im:
        assert im.size[1] >= 320  # small pictures are enlarged


def test_tsne_separates_clusters(tmp_path):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (15, 10)), rng.normal(3, 0.1, (15, 10))])
    y = tsne(x, perplexity=5, n_iter=300, seed=0)
    d = np.linalg.norm(y[:, None] - y[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    nn = d.argmin(1)
    assert ((nn < 15) == (np.arange(30) < 15)).all()
    assert embed_features(x, "pca").shape == (30, 2)
    p = plot_embedding(y, tmp_path / "e.png", values=np.arange(30) * 12.0,
                       labels=["a"] * 15 + ["b"] * 15)
    assert p.is_file()


def test_page_flow_scale_depends_on_sizes_only():
    from cyclecorr.viz import page_flow_scale

    assert page_flow_scale([(108, 150)]) == 20.0  # 150 / 5 = 30 -> 20
    assert page_flow_scale([(64, 64)]) == 10.0  # 12.8 -> 10
    assert page_flow_scale([(160, 301), (160, 214)]) == 50.0  # the longest side sets it: 60.2
    assert page_flow_scale([(3, 4)]) == 1.0  # at least 1 px
    assert page_flow_scale([(1000, 500)]) == 200.0


def test_flow_legend_and_colorbar_pictures():
    from cyclecorr.viz import colorbar, flow_legend

    leg = flow_legend(20.0)
    assert leg.ndim == 3 and leg.shape[2] == 3 and leg.dtype == np.uint8
    assert min(leg.shape[:2]) > 150
    bar = colorbar()
    assert bar.shape[1] >= 250 and bar.shape[0] < bar.shape[1] / 3
    # the bar holds inferno's dark and bright ends
    lum = bar.astype(int).sum(-1)
    assert lum.min() < 60 and (bar[..., 0].astype(int) > 230).any()


def test_salient_points_on_the_matchable_structure():
    from cyclecorr.viz import salient_points

    img = np.full((120, 160, 3), 128, np.uint8)  # flat grey (a "sky")
    img[40:80, 30:70] = 255  # a bright square: four corners of structure
    img[40:80, 100:140] = 0  # a dark square, declared unmatchable below
    m = np.zeros((120, 160), np.float32)
    m[:, :85] = 0.9
    pts = salient_points(img, m, n=8)
    assert 1 <= len(pts) <= 8
    assert (pts[:, 0] < 85).all()  # only where matchability >= 0.5
    # on the square's outline, not in the flat background
    near = (np.abs(pts[:, 0] - 30) < 8) | (np.abs(pts[:, 0] - 69) < 8) | \
        (np.abs(pts[:, 1] - 40) < 8) | (np.abs(pts[:, 1] - 79) < 8)
    assert near.all(), pts
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(len(pts)) * 1e9
    assert d.min() >= 15.0  # spread: an eighth of the smaller side
    assert len(salient_points(np.full((50, 50, 3), 9, np.uint8))) == 0  # nothing to check by eye


def test_viewer_data_round_trip():
    import base64

    from cyclecorr.viz.viewer import FLOW_UNITS, viewer_data

    rng = np.random.default_rng(0)
    f = rng.normal(0, 20, (30, 41, 2)).astype(np.float32)
    m = rng.uniform(0, 1, (30, 41)).astype(np.float32)
    d = viewer_data(f, m, (50, 60))
    assert (d["w"], d["h"], d["tw"], d["th"], d["step"]) == (41, 30, 60, 50, 1)
    q = np.frombuffer(base64.b64decode(d["flow"]), "<i2").reshape(30, 41, 2) / FLOW_UNITS
    assert np.abs(q - f).max() <= 0.5 / FLOW_UNITS + 1e-6
    mq = np.frombuffer(base64.b64decode(d["match"]), np.uint8).reshape(30, 41) / 255
    assert np.abs(mq - m).max() <= 0.5 / 255 + 1e-6
    big = viewer_data(np.zeros((300, 700, 2)), None, (10, 10))
    assert big["step"] == 3 and (big["gh"], big["gw"]) == (100, 234) and big["match"] is None


def test_page_explains_itself(tmp_path):
    """Every picture has a caption, the legend states the page's one scale, the model box links a
    card that exists, and the raw numbers sit in a collapsed block at the bottom."""
    from cyclecorr.viz import model_summary

    a = np.full((40, 60, 3), 90, np.uint8)
    b = np.full((40, 60, 3), 160, np.uint8)
    flow = np.full((40, 60, 2), 1.5, np.float32)
    m = np.full((40, 60), 0.8, np.float32)
    es = [write_pair_pictures(tmp_path / f"p{i}", a, b, flow, m, max_flow=5.0, title=f"pair {i}")
          for i in range(2)]
    model = model_summary("shipped")
    assert model["category"] == "car" and model["card"].is_file()
    page = write_html_page(tmp_path / "index.html", es, title="t", model=model)
    text = page.read_text()
    figures = re.findall(r"<figure.*?</figure>", text, re.S)
    assert len(figures) >= 2 * 5 + 2  # five pictures per pair (+ viewer) and the two keys
    for fig in figures:
        cap = re.search(r"<figcaption>(.*?)</figcaption>", fig, re.S)
        assert cap and len(cap.group(1)) > 15, fig[:200]
    assert "full colour = 5 px" in text and (tmp_path / "flow_key_5px.png").is_file()
    assert (tmp_path / "matchability_key.png").is_file()
    href = re.search(r"href='([^']+)'>model card", text).group(1)
    assert (tmp_path / href).read_text() == model["card"].read_text()
    assert text.index("<details>") > text.rindex("<figure")  # raw JSON last, collapsed
    import html

    raw = json.loads(html.unescape(re.search(r"<details>.*?<pre>(.*?)</pre>", text, re.S).group(1)))
    assert [p["flow_scale_px"] for p in raw["pairs"]] == [5.0, 5.0]
    assert text.count("class='viewer'") == 2
    # the flow picture uses the given scale: 1.5·√2 px of 5 px is pale, not saturated
    with Image.open(tmp_path / "p0" / "flow.png") as im:
        assert np.asarray(im).min() > 120
