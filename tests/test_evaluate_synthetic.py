"""Synthetic CAD pairs: generation and the evaluation against exact ground truth."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cyclecorr.evaluate import ZeroFlow, evaluate_synthetic, make_synthetic_pairs


class Oracle:
    """Returns each same-model pair's exact flow/matchability (zeros for cross-model pairs)."""

    name = "oracle"
    size = 128

    def __init__(self, pairs):
        self.queue = list(pairs)

    def describe(self):
        return {"name": self.name}

    def predict_batch(self, src, tgt):
        flows, mats = [], []
        for _ in range(src.shape[0]):
            p = self.queue.pop(0)
            if p.flow_ab is None:
                flows.append(torch.zeros(2, 128, 128))
                mats.append(torch.zeros(1, 128, 128))
            else:
                flows.append(torch.from_numpy(np.nan_to_num(p.flow_ab)))
                mats.append(torch.from_numpy(p.match_ab)[None])
        return torch.stack(flows), torch.stack(mats)


def test_synthetic_pairs_and_oracle(data_dir):
    pairs = make_synthetic_pairs(data_dir, "car", n_pairs=2, seed=3)
    assert len(pairs) == 2
    same, cross = pairs
    assert same.flow_ab is not None and cross.flow_ab is None
    assert same.meta["model_a"] == same.meta["model_b"] != ""
    assert cross.meta["model_a"] != cross.meta["model_b"]
    assert same.image_a.shape == (128, 128, 3) and len(same.keypoint_names) == len(same.kps_a)
    assert np.isfinite(same.kps_a).all(1).sum() >= 3
    r = evaluate_synthetic(Oracle(pairs), pairs, alphas=(0.1,))
    assert r["flow"]["accuracy"] == 1.0
    assert r["matchability"]["ap"] == 1.0 and r["matchability"]["accuracy@0.5"] == 1.0
    # exact flow carries keypoints exactly except those on the silhouette's edge (background pixel)
    assert r["pck_same_model"]["per_keypoint"]["0.1"] >= 0.75
    s = pairs[0]
    from cyclecorr.geometry import transfer_keypoints
    ok = np.isfinite(s.kps_a).all(1) & np.isfinite(s.kps_b).all(1)
    k = np.clip(np.rint(np.nan_to_num(s.kps_a)), 0, 127).astype(int)
    on = ok & (s.match_ab[k[:, 1], k[:, 0]] > 0.5)
    pred = transfer_keypoints(torch.from_numpy(s.kps_a[on]),
                              torch.from_numpy(np.nan_to_num(s.flow_ab)).double()).numpy()
    err = np.linalg.norm(pred - s.kps_b[on], axis=1)
    # keypoints on the object are carried to within a pixel, bar one near a depth edge
    assert on.sum() >= 2 and np.median(err) < 0.5 and np.mean(err < 1.5) >= 0.75
    z = evaluate_synthetic(ZeroFlow(), pairs, alphas=(0.1,))
    assert z["matchability"] is None and z["flow"]["accuracy"] < 1.0
    assert z["protocol"]["keypoints"].startswith("named 3D keypoints")


def test_shape_to_image_transfer(data_dir):
    from types import SimpleNamespace

    from cyclecorr.evaluate import load_flowweb_car
    from cyclecorr.evaluate.shape_transfer import build_template_bank, evaluate_shape_to_image

    bank = build_template_bank(data_dir, "car", azimuth_step=180, elevations=(10.0,))
    assert len(bank.labels) == 2 * 5 and bank.hog.shape[0] == 10
    # a template itself as the "real" image: retrieved exactly, zero flow transfers it perfectly
    own = SimpleNamespace(image=bank.rgb[3], mask=bank.masks[3], path="render-3")
    r = evaluate_shape_to_image(ZeroFlow(), [own], bank)
    assert r["object_iou"] == 1.0 and r["per_image"][0]["template"] == list(bank.labels[3])
    real = load_flowweb_car(data_dir, limit=2)
    r = evaluate_shape_to_image(ZeroFlow(), real, bank)
    assert 0.2 < r["object_iou"] < 1.0 and r["n_images"] == 2
    assert "HOG" in r["protocol"]["template"]


class KeypointOracle(Oracle):
    """Moves every pixel by the displacement of its nearest keypoint visible in both renders
    (Voronoi cells): exact at the keypoints; matchability = the pair's ground truth."""

    name = "kp-oracle"

    def predict_batch(self, src, tgt):
        flows, mats = [], []
        ys, xs = np.mgrid[0:128, 0:128]
        for _ in range(src.shape[0]):
            p = self.queue.pop(0)
            ok = np.isfinite(p.kps_a).all(1) & np.isfinite(p.kps_b).all(1)
            a, d = p.kps_a[ok], p.kps_b[ok] - p.kps_a[ok]
            f = np.zeros((2, 128, 128), np.float32)
            if len(a):
                near = np.argmin((xs[..., None] - a[:, 0]) ** 2 + (ys[..., None] - a[:, 1]) ** 2,
                                 axis=-1)
                f = d[near].transpose(2, 0, 1).astype(np.float32)
            flows.append(torch.from_numpy(f))
            mats.append(torch.from_numpy(p.match_ab)[None])
        return torch.stack(flows), torch.stack(mats)


def test_cross_instance_pairs(data_dir):
    from cyclecorr.render import Viewpoint, load_mesh, project_keypoints, render_view

    pairs = make_synthetic_pairs(data_dir, "chair", n_pairs=6, seed=1, mode="cross")
    for k, p in enumerate(pairs):
        assert p.meta["model_a"] != p.meta["model_b"] and p.flow_ab is None
        i, j = (int(x) for x in p.meta["pair_name"].split("#")[0].split("-"))
        assert p.meta["pair_name"].endswith(f"#{k}")
        assert p.meta["model_a"] == f"chair{i + 1:02d}.json"
        # matchable only on the object; and not everything is (self-occlusion in b's view)
        assert p.match_ab.shape == (128, 128) and not p.match_ab[~p.mask_a].any()
        assert 0.2 < p.match_ab[p.mask_a].mean() <= 1.0
        # keypoints: the same names in both, counted (finite) only where visible in both views
        assert len(p.keypoint_names) == len(p.kps_a) == len(p.kps_b) >= 6  # shared names
        az, el = p.meta["viewpoint_b"]
        assert abs((az - p.meta["viewpoint_a"][0] + 180) % 360 - 180) <= 45 and 0 <= el <= 30
        mb = load_mesh(data_dir / "cad" / "pascal3d" / p.meta["model_b"])
        kb = project_keypoints(mb, view=render_view(mb, Viewpoint(az, el), 128, rgb=False))
        vis = dict(zip(kb.names, kb.visible))
        for n, xb in zip(p.keypoint_names, p.kps_b):
            assert np.isfinite(xb).all() == bool(vis[n])
    # the matchability truth is the source's visibility from the target's viewpoint: at a
    # keypoint of a visible in both (an on-object pixel), it is usually matchable
    at = [p.match_ab[int(round(y)), int(round(x))] for p in pairs
          for (x, y), xb in zip(p.kps_a, p.kps_b)
          if np.isfinite(xb).all() and np.isfinite(x) and p.mask_a[int(round(y)), int(round(x))]]
    assert len(at) >= 10 and np.mean(at) > 0.7
    with pytest.raises(ValueError, match="mode"):
        make_synthetic_pairs(data_dir, "chair", n_pairs=1, mode="same")


def test_cross_instance_benchmark_and_intervals(data_dir):
    from cyclecorr.evaluate.stats import compare_set

    pairs = make_synthetic_pairs(data_dir, "aeroplane", n_pairs=8, seed=2, mode="cross")
    o = evaluate_synthetic(KeypointOracle(pairs), pairs, set_name="synth-kp-aeroplane")
    z = evaluate_synthetic(ZeroFlow(), pairs, set_name="synth-kp-aeroplane")
    # exact at the keypoints: PCK 1 at every α (keypoints closer than 1 px to another can
    # make the bilinear read mix two cells: allow a miss)
    assert o["pck"]["per_keypoint"]["0.05"] >= 0.97 and o["pck_cross_model"] == o["pck"]
    assert o["matchability"]["ap"] == 1.0 and o["flow"] is None
    assert z["pck"]["per_keypoint"]["0.1"] < o["pck"]["per_keypoint"]["0.1"]
    assert z["matchability"] is None
    assert set(o["pck_by_keypoint"]) <= set(pairs[0].keypoint_names)
    assert sum(v["n"] for v in o["pck_by_keypoint"].values()) == o["pck"]["n_keypoints"]
    assert all(n.count("-") == 1 and "#" in n for n in o["pck_pairs"]["pair"])
    assert "visible from the target's viewpoint" in o["protocol"]["matchability_truth"]
    comps = compare_set("synth-kp-aeroplane", {"zero": z, "oracle": o}, n_boot=300)
    c = [c for c in comps if c["alpha"] == 0.1][0]
    assert c["unit"] == "image"  # models are resampled, not pairs
    assert c["a"] == "oracle" and c["diff"] > 0 and c["ci"][0] <= c["diff"] <= c["ci"][1]


def test_evaluate_command_synth_kp_with_baselines(data_dir, tmp_path):
    import json

    from cyclecorr.cli import main

    out = tmp_path / "res"
    rc = main(["evaluate", "--methods", "zero,siftflow", "--sets", "synth-kp-chair",
               "--synthetic-pairs", "4", "--out", str(out), "--seed", "3"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    by = res["sets"]["synth-kp-chair"]
    assert set(by) == {"zero", "siftflow"}
    for r in by.values():
        assert r["n_pairs"] == 4 and set(r["pck"]["per_keypoint"]) == {"0.05", "0.1", "0.15"}
        gen = r["protocol"]["generation"]
        assert gen["held_out"].startswith("evaluation-only") and len(gen["models"]) >= 2
    assert by["zero"]["matchability"] is None
    assert 0 < by["siftflow"]["matchability"]["ap"] <= 1
    comps = res["comparisons"]["synth-kp-chair"]
    assert {c["alpha"] for c in comps} == {0.05, 0.1, 0.15} and all(c["unit"] == "image"
                                                                  for c in comps)
    md = (out / "results.md").read_text()
    assert "## synth-kp-chair" in md and "PCK@0.10 per pair" in md and "match AP" in md
    assert "CAD models drawn with replacement" in md
