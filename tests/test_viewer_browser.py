"""The match page's interactive viewer in a real headless browser (Debian's Chromium, driven by
the playwright package; it never downloads a browser). The page is opened from ``file://``, a
point of the source is clicked, and the target marker must sit at exactly source point + flow.

Skipped with the reason where playwright or Chromium is missing (``scripts/setup.sh`` installs
both; CI runs it)."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from cyclecorr.viz import write_html_page, write_pair_pictures

ROOT = Path(__file__).resolve().parent.parent
# flags that work as root in a container, with no network or GPU
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium() -> str | None:
    exe = os.environ.get("CYCLECORR_CHROMIUM")
    if exe:
        return exe if Path(exe).is_file() else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    sync = pytest.importorskip("playwright.sync_api", reason="the playwright package is not "
                               "installed (pip install -e '.[dev]', which scripts/setup.sh runs)")
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium installed (apt-get install chromium, which scripts/setup.sh "
                    "runs; or set CYCLECORR_CHROMIUM to its path)")
    with sync.sync_playwright() as p:  # each launch starts from a fresh temporary profile
        b = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _open(browser, page_path: Path):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    requests: list[str] = []
    pg.on("request", lambda r: requests.append(r.url))
    pg.goto(page_path.resolve().as_uri())
    pg.wait_for_load_state("load")
    return pg, errors, requests


def _viewer_info(pg, i: int) -> dict:
    return json.loads(pg.locator(f"#viewer-{i} script.vdata").text_content())


def _click_source_pixel(pg, i: int, x: float, y: float) -> None:
    """Click the centre of source pixel (x, y) of viewer i (pixel centres at integers)."""
    d = _viewer_info(pg, i)
    bb = pg.locator(f"#viewer-{i} .src img").bounding_box()
    pg.mouse.click(bb["x"] + (x + 0.5) * bb["width"] / d["w"],
                   bb["y"] + (y + 0.5) * bb["height"] / d["h"])


def _pins(pg, i: int) -> list[dict]:
    """The pinned target markers of viewer i: data attributes and, from the marker's drawn
    position, the target pixel it sits on."""
    d = _viewer_info(pg, i)
    tb = pg.locator(f"#viewer-{i} .tgt img").bounding_box()
    out = []
    for m in pg.locator(f"#viewer-{i} .tgt .mk.pin").all():
        bb = m.bounding_box()  # the marker's box is centred on its point
        cx = bb["x"] + bb["width"] / 2
        cy = bb["y"] + bb["height"] / 2
        out.append({"x": float(m.get_attribute("data-x")), "y": float(m.get_attribute("data-y")),
                    "m": m.get_attribute("data-m"),
                    "drawn": ((cx - tb["x"]) * d["tw"] / tb["width"] - 0.5,
                              (cy - tb["y"]) * d["th"] / tb["height"] - 0.5)})
    return out


def test_viewer_click_marks_source_point_plus_flow(browser, tmp_path):
    """Closed form: a translation on a small pair and an affine flow on a large pair (whose
    embedded flow is subsampled: bilinear reading of an affine field is exact)."""
    rng = np.random.default_rng(0)
    a1 = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    b1 = rng.integers(0, 255, (45, 50, 3), dtype=np.uint8)
    t = np.array([7.25, -3.5])  # multiples of the 1/16 px storage step: stored exactly
    f1 = np.broadcast_to(t, (30, 40, 2)).astype(np.float32)
    m1 = np.tile(np.linspace(0, 1, 40, dtype=np.float32), (30, 1))  # matchability = x / 39
    h2, w2 = 300, 600  # stored on every 3rd pixel
    a2 = rng.integers(0, 255, (h2, w2, 3), dtype=np.uint8)
    b2 = rng.integers(0, 255, (280, 700, 3), dtype=np.uint8)
    ys, xs = np.mgrid[0:h2, 0:w2].astype(np.float64)

    def affine(x, y):  # flow(p) = A p + c; its values on the stored grid are multiples of 1/16
        return 0.25 * x + 2.0, -0.125 * y + 1.0

    fx, fy = affine(xs, ys)
    f2 = np.stack([fx, fy], -1).astype(np.float32)
    e1 = write_pair_pictures(tmp_path / "p1", a1, b1, f1, m1, title="translation")
    e2 = write_pair_pictures(tmp_path / "p2", a2, b2, f2, None, title="affine")
    page = write_html_page(tmp_path / "index.html", [e1, e2], title="viewer test")
    assert e2["viewer"]["step"] == 3
    html = page.read_text()
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", html)  # nothing from the network
    pg, errors, requests = _open(browser, page)
    try:
        clicks1 = [(0, 0), (12, 9), (39, 29), (25, 17)]
        for x, y in clicks1:
            _click_source_pixel(pg, 0, x, y)
        pins = _pins(pg, 0)
        assert len(pins) == len(clicks1)
        for (x, y), p in zip(clicks1, pins):
            assert (p["x"], p["y"]) == (x + 7.25, y - 3.5)  # exactly source point + flow
            assert abs(p["drawn"][0] - p["x"]) < 0.5 and abs(p["drawn"][1] - p["y"]) < 0.5
            assert abs(float(p["m"]) - x / 39) <= 0.5 / 255 + 1e-9  # quantised to 1/255
        assert "source (25, 17)" in pg.locator("#viewer-0 .readout").text_content()
        clicks2 = [(0, 0), (301, 151), (598, 298), (10, 200)]
        for x, y in clicks2:
            _click_source_pixel(pg, 1, x, y)
        pins = _pins(pg, 1)
        for (x, y), p in zip(clicks2, pins):
            ex, ey = affine(x, y)
            assert p["x"] == pytest.approx(x + ex, abs=1e-9)
            assert p["y"] == pytest.approx(y + ey, abs=1e-9)
            assert p["m"] == ""  # no matchability given
            assert abs(p["drawn"][0] - p["x"]) < 1.0 and abs(p["drawn"][1] - p["y"]) < 1.0
        # hovering draws a live marker; "clear pins" removes the pins
        bb = pg.locator("#viewer-0 .src img").bounding_box()
        pg.mouse.move(bb["x"] + 5, bb["y"] + 5)
        assert pg.locator("#viewer-0 .tgt .mk.live").count() == 1
        pg.locator("#viewer-0 .vclear").click()
        assert pg.locator("#viewer-0 .mk.pin").count() == 0
        assert errors == []
        assert all(u.startswith(("file:", "data:")) for u in requests), requests
    finally:
        pg.close()


def test_example_photos_wheel_to_wheel(browser, tmp_path):
    """The README's quick start: match the shipped example photos with the shipped model, open
    the page, click the front wheel of car_a: the marker lands on car_b's front wheel."""
    from cyclecorr.cli import main

    ex = ROOT / "examples"
    ann = json.loads((ex / "annotations.json").read_text())
    out = tmp_path / "out"
    assert main(["match", str(ex / "car_a.jpg"), str(ex / "car_b.jpg"), "--out", str(out),
                 "--device", "cpu"]) == 0
    pg, errors, _ = _open(browser, out / "index.html")
    try:
        for wheel in ("front_wheel", "rear_wheel"):
            x, y, _ = ann["car_a.jpg"][wheel]
            _click_source_pixel(pg, 0, x, y)
        pins = _pins(pg, 0)
        srcs = [(float(m.get_attribute("data-x")), float(m.get_attribute("data-y")))
                for m in pg.locator("#viewer-0 .src .mk.pin").all()]
        # the clicks hit the intended pixels at this page's 1.9 CSS px per image pixel
        assert srcs == [tuple(map(float, ann["car_a.jpg"][w][:2]))
                        for w in ("front_wheel", "rear_wheel")]
        for p, wheel in zip(pins, ("front_wheel", "rear_wheel")):
            tx, ty, r = ann["car_b.jpg"][wheel]
            d = float(np.hypot(p["x"] - tx, p["y"] - ty))
            assert d <= r, f"{wheel}: marker at ({p['x']:.1f}, {p['y']:.1f}), {d:.1f} px from " \
                           f"the wheel centre ({tx}, {ty}), radius {r}"
            assert float(p["m"]) >= 0.5
        assert errors == []
    finally:
        pg.close()
