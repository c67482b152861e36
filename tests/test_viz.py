"""Pictures: flow colours, warps, heat maps, overlays, HTML page, embedding."""
from __future__ import annotations

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
