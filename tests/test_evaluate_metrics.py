"""Metrics and benchmark functions on hand-made cases with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cyclecorr.evaluate import (
    IoUAccumulator,
    PCKAccumulator,
    accuracy,
    average_precision,
    evaluate_flowweb_car,
    evaluate_keypoint_transfer,
    flow_accuracy,
    iou,
    matchability_ground_truth,
    part_label_map,
    pck_pair,
    reference_length,
    transfer_keypoints_resized,
)
from cyclecorr.evaluate.report import headline, markdown_report, write_results


class ShiftMethod:
    """A method predicting a constant flow (dx, dy) at 128×128, matchability = a given map."""

    def __init__(self, dx=0.0, dy=0.0, size=16, match=None):
        self.dx, self.dy, self.size, self.match = dx, dy, size, match
        self.name = f"shift({dx},{dy})"

    def describe(self):
        return {"name": self.name}

    def predict_batch(self, src, tgt):
        b = src.shape[0]
        f = torch.zeros(b, 2, self.size, self.size)
        f[:, 0] = self.dx
        f[:, 1] = self.dy
        m = None if self.match is None else self.match.expand(b, 1, self.size, self.size)
        return f, m


class S:  # a minimal sample
    def __init__(self, image, kps, visible=None, bbox=None, mask=None, parts=None):
        self.image = image
        self.keypoints = np.asarray(kps, float)
        self.visible = np.ones(len(kps), bool) if visible is None else np.asarray(visible)
        self.bbox, self.mask, self.parts = bbox, mask, parts or {}


# ------------------------------------------------------------------ PCK
def test_pck_pair_perfect_and_threshold():
    gt = np.array([[10.0, 10.0], [20.0, 5.0], [3.0, 4.0]])
    r = pck_pair(gt, gt, ref_len=100.0, alphas=(0.05, 0.1))
    assert r["n"] == 3 and r["correct"][0.1].all()
    pred = gt + np.array([[6.0, 0.0], [0.0, 4.0], [3.0, 4.0]])  # errors 6, 4, 5
    r = pck_pair(pred, gt, ref_len=100.0, alphas=(0.05, 0.1))
    assert r["correct"][0.05].tolist() == [False, True, True]  # 5 ≤ 0.05·100 counts
    assert r["correct"][0.1].all()
    np.testing.assert_allclose(r["errors"], [6, 4, 5])


def test_pck_missing_keypoints_ignored():
    gt = np.array([[10.0, 10.0], [np.nan, np.nan], [3.0, 4.0], [7.0, 7.0]])
    pred = np.array([[10.0, 10.0], [1.0, 1.0], [50.0, 50.0], [7.0, 7.0]])
    r = pck_pair(pred, gt, 100.0, (0.1,), valid=[True, True, True, False])
    assert r["n"] == 2  # row 1 NaN in gt, row 3 not valid
    acc = PCKAccumulator((0.1,))
    acc.add("x", r)
    s = acc.summary()
    assert s["x"]["per_keypoint"]["0.1"] == pytest.approx(0.5)
    assert s["x"]["n_keypoints"] == 2


def test_pck_accumulator_averaging_conventions():
    acc = PCKAccumulator((0.1,))
    gt = np.zeros((4, 2))
    # pair 1: 4 keypoints, all correct; pair 2: 1 keypoint, wrong
    acc.add("a", pck_pair(gt, gt, 10.0, (0.1,)))
    acc.add("b", pck_pair(np.array([[5.0, 0.0]]), np.zeros((1, 2)), 10.0, (0.1,)))
    s = acc.summary()
    assert s["all"]["per_keypoint"]["0.1"] == pytest.approx(4 / 5)
    assert s["all"]["per_pair"]["0.1"] == pytest.approx(0.5)
    assert s["mean_over_groups"]["per_pair"]["0.1"] == pytest.approx(0.5)


def test_reference_lengths_differ_as_expected():
    kps = np.array([[10.0, 20.0], [40.0, 30.0], [np.nan, np.nan]])
    assert reference_length("image", image_size=(100, 200)) == 200
    assert reference_length("keypoint-box", keypoints=kps) == 30  # x span 30, y span 10
    assert reference_length("object-box", bbox=(5, 5, 64, 24)) == 60
    # a keypoint marked not visible does not enlarge the box
    assert reference_length("keypoint-box", keypoints=[[0, 0], [40, 30], [100, 0]],
                            visible=[True, True, False]) == 40
    with pytest.raises(ValueError, match="unknown reference"):
        reference_length("diagonal", image_size=(1, 1))


def test_zero_flow_on_known_shift_gives_known_pck():
    # target keypoints are the source keypoints shifted by (3, 0) (12×12 images, method at 16);
    # the zero-flow transfer misses by 3 px: correct at alpha·12 ≥ 3 only.
    img = np.zeros((12, 12, 3), np.uint8)
    kps_a = np.array([[2.0, 2.0], [5.0, 7.0], [8.0, 3.0]])
    a, b = S(img, kps_a), S(img, kps_a + [3.0, 0.0])
    r = evaluate_keypoint_transfer(ShiftMethod(0, 0), [a, b], pairs=[(0, 1)],
                                   alphas=(0.2, 0.25, 0.3), reference="image")
    per = r["pck"]["all"]["per_keypoint"]
    assert per["0.2"] == 0.0 and per["0.25"] == 1.0 and per["0.3"] == 1.0
    # the right shift at the method's resolution (16/12 of 3 px = 4 px) is perfect
    r = evaluate_keypoint_transfer(ShiftMethod(4.0, 0), [a, b], pairs=[(0, 1)], alphas=(0.01,))
    assert r["pck"]["all"]["per_keypoint"]["0.01"] == 1.0
    assert r["protocol"]["reference_length"].startswith("max(H, W)")


def test_keypoint_box_reference_changes_pck():
    img = np.zeros((100, 100, 3), np.uint8)
    kps = np.array([[10.0, 10.0], [30.0, 10.0], [20.0, 20.0]])  # keypoint box 20 px
    a, b = S(img, kps), S(img, kps + [4.0, 0.0])
    z = ShiftMethod(0, 0)
    r_img = evaluate_keypoint_transfer(z, [a, b], pairs=[(0, 1)], alphas=(0.1,), reference="image")
    r_kb = evaluate_keypoint_transfer(z, [a, b], pairs=[(0, 1)], alphas=(0.1,),
                                      reference="keypoint-box")
    assert r_img["pck"]["all"]["per_keypoint"]["0.1"] == 1.0  # 4 ≤ 10
    assert r_kb["pck"]["all"]["per_keypoint"]["0.1"] == 0.0  # 4 > 2


def test_transfer_keypoints_resized_identity_and_scale():
    flow = torch.zeros(2, 16, 16)
    k = np.array([[0.0, 0.0], [11.0, 7.0], [np.nan, np.nan]])
    out = transfer_keypoints_resized(k, flow, (8, 12), (8, 12))
    np.testing.assert_allclose(out[:2], k[:2], atol=1e-9)
    assert np.isnan(out[2]).all()
    # into a target twice as large: q = (p + 0.5)·2 − 0.5
    out = transfer_keypoints_resized(k[:2], flow, (8, 12), (16, 24))
    np.testing.assert_allclose(out, (k[:2] + 0.5) * 2 - 0.5, atol=1e-9)


# ------------------------------------------------------------------ IoU / AP / accuracy
def test_iou_known_values():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2, :2] = True  # 4 px
    b[1:3, 1:3] = True  # 4 px, overlap 1
    assert iou(a, b) == pytest.approx(1 / 7)
    assert iou(a, a) == 1.0
    assert math.isnan(iou(np.zeros((2, 2)), np.zeros((2, 2))))
    acc = IoUAccumulator()
    acc.add(a.astype(int), b.astype(int), [1])
    acc.add(a.astype(int), a.astype(int), [1])
    s = acc.summary({1: "part"})
    assert s["per_label"]["part"] == pytest.approx((1 + 4) / (7 + 4))
    assert s["mean_per_pair"] == pytest.approx((1 / 7 + 1) / 2)


def test_average_precision_known_values():
    assert average_precision([0.9, 0.8, 0.1], [1, 1, 0]) == pytest.approx(1.0)
    # ranking: pos, neg, pos → AP = 0.5·1 + 0.5·(2/3)
    assert average_precision([0.9, 0.8, 0.7], [1, 0, 1]) == pytest.approx(0.5 + 1 / 3)
    # all tied: one threshold, AP = positive fraction
    assert average_precision([0.5] * 4, [1, 0, 0, 1]) == pytest.approx(0.5)
    assert math.isnan(average_precision([0.1, 0.2], [0, 0]))
    assert accuracy([0.9, 0.4, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(0.5)


def test_flow_accuracy_counts_mask_and_finite_only():
    gt = np.zeros((2, 3, 3))
    pred = np.zeros((2, 3, 3))
    pred[0, 0, 0] = 6.0  # one bad pixel
    gt[:, 2, 2] = np.nan  # unknown ground truth
    r = flow_accuracy(pred, gt, threshold=5.0)
    assert r["n_pixels"] == 8 and r["accuracy"] == pytest.approx(7 / 8)
    mask = np.zeros((3, 3), bool)
    mask[0, :] = True
    assert flow_accuracy(pred, gt, mask)["accuracy"] == pytest.approx(2 / 3)


# ------------------------------------------------------------------ FlowWeb-style protocol
def _toy_car(shift=0):
    img = np.zeros((16, 16, 3), np.uint8)
    mask = np.zeros((16, 16), bool)
    mask[4:12, 2 + shift:10 + shift] = True
    wheel = np.zeros_like(mask)
    wheel[10:12, 2 + shift:10 + shift] = True
    front = mask & ~wheel
    kps = np.array([[3.0 + shift, 5.0], [8.0 + shift, 11.0]])
    return S(img, kps, mask=mask, parts={"frontside": front, "wheel_1": wheel})


def test_flowweb_protocol_perfect_flow():
    a, b = _toy_car(0), _toy_car(3)
    r = evaluate_flowweb_car(ShiftMethod(3.0, 0.0, size=16, match=None), [a, b], pairs=[(0, 1)],
                             alphas=(0.01,))
    assert r["pck"]["per_keypoint"]["0.01"] == 1.0
    assert r["segmentation"]["part_iou"] == {"frontside": 1.0, "wheel": 1.0}
    assert r["segmentation"]["object_iou"] == 1.0
    assert r["matchability"] is None
    z = evaluate_flowweb_car(ShiftMethod(0, 0, size=16), [a, b], pairs=[(0, 1)], alphas=(0.01,))
    assert z["pck"]["per_keypoint"]["0.01"] == 0.0
    assert z["segmentation"]["object_iou"] == pytest.approx(5 / 11)  # width 8, overlap 5


def test_matchability_ground_truth_and_ap():
    mask_a = np.zeros((4, 4), bool)
    mask_a[:, :2] = True
    la = np.zeros((4, 4), int)
    la[:2, :2] = 1  # part 1 (visible in b)
    la[2:3, :2] = 2  # part 2 (not in b); row 3 of the object has no part → ignored
    lb = np.zeros((4, 4), int)
    lb[0, 0] = 1
    lab, ev = matchability_ground_truth(mask_a, la, lb)
    assert lab.sum() == 4 and lab[:2, :2].all()
    assert not ev[3, :2].any() and ev.sum() == 14
    labels = part_label_map({"wheel_1": mask_a, "wheel_2": mask_a & (la == 1),
                             "frontside": np.ones((4, 4), bool)}, (4, 4), ["frontside", "wheel"])
    assert (labels[mask_a] == 2).all() and (labels[~mask_a] == 1).all()


def test_report_markdown_and_json(tmp_path):
    res = {"sets": {"flowweb-car": {"zero": {"n_pairs": 2, "pck": {"per_keypoint": {"0.1": 0.5}},
                                             "matchability": None, "protocol": {"alphas": [0.1]}}}},
           "methods": {"zero": {"kind": "baseline"}}, "seed": 0, "command": "cyclecorr evaluate"}
    assert headline("flowweb-car", res["sets"]["flowweb-car"]["zero"])["PCK@0.10"] == 0.5
    md = markdown_report(res)
    assert "| zero | – | 0.500 |" in md and "α·S" in md and "S = 128" in md
    j, m = write_results(res, tmp_path / "out")
    assert j.is_file() and m.read_text() == md
