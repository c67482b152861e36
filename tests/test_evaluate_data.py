"""Benchmark functions on the real shared data (skipped where it is absent)."""
from __future__ import annotations

import numpy as np
import pytest

from cyclecorr.evaluate import (
    ZeroFlow,
    evaluate_flowweb_car,
    evaluate_keypoint_transfer,
    evaluate_pck_pf_willow,
    evaluate_tss,
    flow_accuracy,
    load_flowweb_car,
    load_pf_willow,
    load_tss,
)


def test_flowweb_identity_pairs_are_perfect(data_dir):
    s = load_flowweb_car(data_dir, limit=3)
    assert len(s) == 3 and s[0].parts
    r = evaluate_flowweb_car(ZeroFlow(), s, pairs=[(0, 0), (1, 1), (2, 2)], alphas=(0.01,))
    assert r["pck"]["per_keypoint"]["0.01"] == 1.0
    assert r["pck"]["n_keypoints"] == sum(int(x.visible.sum()) for x in s)
    assert r["segmentation"]["object_iou"] == 1.0
    assert all(v == 1.0 for v in r["segmentation"]["part_iou"].values())
    assert "128x128" in r["protocol"]["resolution"]


def test_flowweb_zero_flow_all_pairs(data_dir):
    s = load_flowweb_car(data_dir, limit=4)
    r = evaluate_flowweb_car(ZeroFlow(), s, tasks=("pck", "segmentation"))
    assert r["n_pairs"] == 12
    p = r["pck"]["per_keypoint"]
    assert 0.0 < p["0.05"] <= p["0.1"] <= p["0.15"] < 1.0
    assert 0.0 < r["segmentation"]["object_iou"] < 1.0


def test_pf_willow_zero_flow_matches_closed_form(data_dir):
    by_class = load_pf_willow(data_dir, classes=["car(G)"], limit=3)
    r = evaluate_pck_pf_willow(ZeroFlow(), samples_by_class=by_class, alphas=(0.1,))
    assert r["n_pairs"] == 6
    # zero flow at 128×128 between resized images: q = (p + 0.5)·(W_b/W_a) − 0.5 (same in y)
    s = by_class["car(G)"]
    fractions = []
    for i in range(3):
        for j in range(3):
            if i == j:
                continue
            (ha, wa), (hb, wb) = s[i].image.shape[:2], s[j].image.shape[:2]
            q = (s[i].keypoints + 0.5) * np.array([wb / wa, hb / ha]) - 0.5
            gt = s[j].keypoints
            span = gt.max(0) - gt.min(0)
            err = np.linalg.norm(q - gt, axis=1)
            fractions.append(np.mean(err <= 0.1 * span.max()))
    assert r["pck"]["car(G)"]["per_pair"]["0.1"] == pytest.approx(np.mean(fractions), abs=1e-9)
    assert r["protocol"]["reference_length"].startswith("max(w, h) of the target's annotated")


def test_pf_willow_identity_pairs_perfect_in_original_pixels(data_dir):
    s = load_pf_willow(data_dir, classes=["duck(S)"], limit=2)["duck(S)"]
    r = evaluate_keypoint_transfer(ZeroFlow(), s, pairs=[(0, 0), (1, 1)], alphas=(0.001,),
                                   reference="keypoint-box")
    assert r["pck"]["all"]["per_keypoint"]["0.001"] == 1.0


def test_tss_zero_flow_matches_closed_form(data_dir):
    pairs = load_tss(data_dir, limit=1)
    r = evaluate_tss(ZeroFlow(), pairs)
    p = pairs[0]
    (ha, wa), (hb, wb) = p.image_a.shape[:2], p.image_b.shape[:2]
    ys, xs = np.mgrid[0:ha, 0:wa].astype(np.float64)
    flow = np.stack([(xs + 0.5) * wb / wa - 0.5 - xs, (ys + 0.5) * hb / ha - 0.5 - ys])
    expect = flow_accuracy(flow, p.flow_ab, p.mask_a, 5.0)["accuracy"]
    got = next(iter(r["pairs"].values()))["accuracy"]
    assert got == pytest.approx(expect, abs=1e-6)
    assert r["protocol"]["threshold_px"] == 5.0


def test_keypoint_gap_script_closed_form():
    """Two 256×128 images whose keypoints differ by a known shift and scale: in the 128×128 frame
    x halves, so a 20 px x-shift is 10 px, and a box twice as large gives ratio 2."""
    import importlib.util
    from pathlib import Path

    from cyclecorr.data import Sample

    path = Path(__file__).resolve().parents[1] / "scripts" / "keypoint_gap.py"
    spec = importlib.util.spec_from_file_location("keypoint_gap", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    img = np.zeros((128, 256, 3), np.uint8)
    k = np.array([[40.0, 30.0], [80.0, 30.0], [60.0, 70.0], [np.nan, np.nan]])
    vis = np.array([True, True, True, False])
    a = Sample(img, k, vis)
    b = Sample(img, k + [20.0, 0.0], vis)
    g = mod.pair_gap(a, b, 128)
    assert g["displacement"] == pytest.approx(10.0)
    assert g["scale_ratio"] == pytest.approx(1.0)
    assert g["box_threshold"] == pytest.approx(4.0)  # 0.1 × max(40/2 wide, 40 tall)
    big = Sample(img, (k - [40.0, 30.0]) * 2 + [40.0, 30.0], vis)
    assert mod.pair_gap(a, big, 128)["scale_ratio"] == pytest.approx(2.0)
    one = Sample(img, k, np.array([True, False, False, False]))
    assert mod.pair_gap(a, one, 128) is None
    r = mod.summarise([a, b, one], 128)
    assert r["pairs"] == 2 and r["displacement_mean"] == pytest.approx(10.0)


def test_keypoint_errors_script_sorts_landings_closed_form():
    """Transfers placed by hand: one on its own keypoint, one on another keypoint of the target
    (a swapped part), one at neither; and the zero flow on a FlowWeb-style pair whose second
    keypoint moved onto the first's place, through the script's FlowWeb path."""
    import importlib.util
    from pathlib import Path

    from cyclecorr.data import Sample
    from cyclecorr.evaluate.methods import make_method

    path = Path(__file__).resolve().parents[1] / "scripts" / "keypoint_errors.py"
    spec = importlib.util.spec_from_file_location("keypoint_errors", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    gt = np.array([[10.0, 10.0], [60.0, 10.0], [10.0, 60.0], [np.nan, np.nan]])
    pred = np.array([[12.0, 10.0], [10.0, 11.0], [40.0, 40.0], [0.0, 0.0]])
    rows = mod.landing(pred, gt, 100.0, np.array([True, True, True, False]))
    assert rows == pytest.approx(np.array([[0.02, 0.48], [np.hypot(50, 1) / 100, 0.01],
                                           [np.hypot(30, 20) / 100, np.hypot(30, 20) / 100]]))
    s = mod.summarise(rows)
    assert s["n"] == 3 and s["median_error"] == pytest.approx(np.hypot(30, 20) / 100)
    assert s[0.05] == pytest.approx({"correct": 1 / 3, "other keypoint": 1 / 3,
                                     "elsewhere": 1 / 3})
    assert s[0.15]["correct"] == pytest.approx(1 / 3)  # 0.36 and 0.50 are beyond 0.15

    img = np.zeros((128, 128, 3), np.uint8)
    vis = np.array([True, True])
    a = Sample(img, np.array([[20.0, 20.0], [100.0, 20.0]]), vis)
    b = Sample(img, np.array([[20.0, 20.0], [22.0, 21.0]]), vis)
    rows = mod.flowweb_rows(make_method("zero", size=128), [a, b], 128)
    s = mod.summarise(rows)
    # a→b: keypoint 0 stays right, keypoint 1 stays at x=100 (elsewhere); b→a: keypoint 0 right,
    # keypoint 1 (22, 21) lands within 0.05·128 of a's keypoint 0: another keypoint
    assert s["n"] == 4
    assert s[0.05] == pytest.approx({"correct": 0.5, "other keypoint": 0.25, "elsewhere": 0.25})
    # the PF-WILLOW path: original pixels, L = the target's keypoint box (a → c: c's, 20 px;
    # c → a: a's, 80 px); the zero flow leaves every keypoint where it was
    c = Sample(img, np.array([[20.0, 20.0], [40.0, 20.0]]), vis)
    rows = mod.pf_willow_rows(make_method("zero", size=128), {"car": [a, c]}, 128)
    assert sorted(map(tuple, rows.round(6))) == sorted([(0.0, 20 / 20), (60 / 20, 80 / 20),
                                                       (0.0, 80 / 80), (60 / 80, 20 / 80)])


def test_self_match_similarity_pairs_carry_the_exact_flow():
    """scripts/self_match.py's similarity test: sampling the moved copy at p + flow(p) gives the
    photo back wherever the match lies in the frame (a textured image, away from the border)."""
    import importlib.util
    from pathlib import Path

    import torch

    from cyclecorr.geometry import warp

    path = Path(__file__).resolve().parents[1] / "scripts" / "self_match.py"
    spec = importlib.util.spec_from_file_location("self_match", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    g = torch.Generator().manual_seed(1)
    small = torch.rand(4, 3, 8, 8, generator=g)
    images = torch.nn.functional.interpolate(small, size=(64, 64), mode="bicubic",
                                             align_corners=False)
    t = mod.similarity_pairs(images, seed=3)
    assert t["flow"].shape == (4, 2, 64, 64) and 0.5 < float(t["match"].mean()) < 1.0
    back = warp(t["tgt"], t["flow"], "border")
    inner = t["match"].clone()
    inner[..., :4, :] = inner[..., -4:, :] = inner[..., :, :4] = inner[..., :, -4:] = 0
    err = (back - images).abs().amax(1, keepdim=True)[inner > 0.5]
    # two bilinear resamplings of a smooth image; a wrong map errs by the image's contrast (~0.5)
    assert float(err.mean()) < 0.01 and float(err.max()) < 0.08
    # the maps are similarities: the flow's divergence is 2(s·cos θ − 1), constant per image
    f = t["flow"][:, :, 8:-8, 8:-8]
    div = (f[:, 0, :, 2:] - f[:, 0, :, :-2])[:, 1:-1] / 2 + \
        (f[:, 1, 2:, :] - f[:, 1, :-2, :])[..., 1:-1] / 2
    assert float((div - div.mean((1, 2), keepdim=True)).abs().max()) < 1e-4


def test_self_match_reads_a_folder_of_photos(tmp_path):
    """scripts/self_match.py --photos: ``limit`` photos spread over the sorted folder, each
    resized to the test size; an empty folder is refused by name."""
    import importlib.util
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from cyclecorr.data.datasets import DataError

    path = Path(__file__).resolve().parents[1] / "scripts" / "self_match.py"
    spec = importlib.util.spec_from_file_location("self_match", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for i in range(6):  # photo i is uniformly 40·i grey
        Image.fromarray(np.full((30 + i, 50, 3), 40 * i, np.uint8)).save(tmp_path / f"p{i}.jpg")
    images = mod.load_folder(str(tmp_path), 32, limit=3)
    assert images.shape == (3, 3, 32, 32)
    np.testing.assert_allclose(images.mean((1, 2, 3)).numpy() * 255, [0, 80, 160], atol=2)
    assert mod.load_folder(str(tmp_path), 16, limit=0).shape[0] == 6
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        mod.load_folder(str(tmp_path / "empty"), 16, limit=3)
