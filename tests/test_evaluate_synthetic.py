"""Synthetic CAD pairs: generation and the evaluation against exact ground truth."""
from __future__ import annotations

import numpy as np
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
