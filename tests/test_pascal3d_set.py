"""The pascal3d-* evaluation sets: PASCAL3D+'s ImageNet photos as a real-photo keypoint set
outside the evaluation sets (fixture in the public release format)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from pascal3d_files import pascal3d_object, write_pascal3d
from PIL import Image

from cyclecorr.cli import main
from cyclecorr.evaluate.datasets import load_pascal3d_photos, pascal3d_pairs
from cyclecorr.model import NetConfig, build_network
from cyclecorr.train.config import load_config
from cyclecorr.train.monitor import RealPhotoPCK

BOX = (11, 21, 138, 148)  # 1-based, 128 × 128: the crop keeps pixel sizes (x' = x − 10)


def _kps(shift: float = 0.0) -> dict:
    """Three visible keypoints (1-based photo pixels) at crop positions (20, 30), (60, 60) and
    (90, 100); ``shift`` moves the first by ×1, the second by ×0.4 and the third by ×1.8 in x."""
    def at(x, y):
        return (x + BOX[0], y + BOX[1])
    return {"left_front_wheel": at(20 + shift, 30), "left_back_wheel": at(60 + 0.4 * shift, 60),
            "right_front_wheel": at(90 + 1.8 * shift, 100), "right_back_wheel": None}


def _photo(path, seed: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    rs = np.random.RandomState(seed)
    Image.fromarray(rs.randint(0, 255, (170, 160, 3), dtype=np.uint8)).save(path, quality=95)


def _release(root):
    """a, b: azimuths 30° and 60°, b's keypoints 10 / 4 / 18 px right of a's (in the crop);
    c: azimuth 200° (too far from both); d: occluded (skipped); a car_pascal image (not read)."""
    spec = {"a": (30, 0.0, 0), "b": (60, 10.0, 0), "c": (200, 0.0, 0), "d": (40, 0.0, 1)}
    for k, (name, (az, shift, occ)) in enumerate(spec.items()):
        _photo(root / "Images" / "car_imagenet" / f"n0_{name}.JPEG", k)
        write_pascal3d(root, "car_imagenet", f"n0_{name}.JPEG",
                       [pascal3d_object(BOX, _kps(shift), view={"azimuth": az}, occluded=occ)])
    _photo(root / "Images" / "car_pascal" / "2008_000001.jpg", 9)
    write_pascal3d(root, "car_pascal", "2008_000001.jpg", [pascal3d_object(BOX, _kps())])


def test_photos_are_the_imagenet_crops_with_their_keypoints(tmp_path):
    _release(tmp_path)
    photos = load_pascal3d_photos(tmp_path, "car")
    assert [p.path.name for p in photos] == ["n0_a.JPEG", "n0_b.JPEG", "n0_c.JPEG"]
    a, b = photos[0], photos[1]
    assert a.image.shape == (128, 128, 3)
    np.testing.assert_allclose(a.keypoints[:3], [[20, 30], [60, 60], [90, 100]], atol=1e-9)
    np.testing.assert_allclose(b.keypoints[:3, 0] - a.keypoints[:3, 0], [10, 4, 18], atol=1e-9)
    assert a.visible[:3].all() and not a.visible[3:].any()


def test_pairs_keep_close_azimuths_and_shared_keypoints(tmp_path):
    _release(tmp_path)
    photos = load_pascal3d_photos(tmp_path, "car")
    assert pascal3d_pairs(photos) == [(0, 1), (1, 0)]  # c is 140°+ away from both
    assert pascal3d_pairs(photos, min_common=4) == []
    assert len(pascal3d_pairs(photos, max_azimuth_gap=180)) == 6
    # azimuths wrap: 350° and 10° are 20° apart
    photos[2].viewpoint = dataclasses.replace(photos[2].viewpoint, azimuth=350.0)
    photos[0].viewpoint = dataclasses.replace(photos[0].viewpoint, azimuth=10.0)
    assert (0, 2) in pascal3d_pairs(photos) and (1, 2) not in pascal3d_pairs(photos)
    many = pascal3d_pairs(photos, n_pairs=3, max_azimuth_gap=180, seed=4)
    assert len(many) == 3 and many == sorted(many)
    assert many == pascal3d_pairs(photos, n_pairs=3, max_azimuth_gap=180, seed=4)


def test_evaluate_pascal3d_set_zero_flow_in_closed_form(tmp_path):
    """Zero flow misses by 10, 4 and 18 px on both pairs: at α·128 = 6.4 / 12.8 / 19.2 px,
    PCK 1/3, 2/3 and 1."""
    root = tmp_path / "p3d"
    _release(root)
    out = tmp_path / "ev"
    assert main(["evaluate", "--methods", "zero", "--sets", "pascal3d-car", "--pascal3d",
                 str(root), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())["sets"]["pascal3d-car"]["zero"]
    pck = res["pck"]["all"]["per_keypoint"]
    assert res["n_pairs"] == 2
    np.testing.assert_allclose([pck["0.05"], pck["0.1"], pck["0.15"]], [1 / 3, 2 / 3, 1.0])
    assert "ImageNet" in res["protocol"]["source"]
    assert "PCK@0.10" in (out / "results.md").read_text()


def test_pascal3d_set_needs_its_folder(tmp_path, capsys):
    assert main(["evaluate", "--methods", "zero", "--sets", "pascal3d-car", "--out",
                 str(tmp_path / "ev")]) == 2
    assert "pascal3d-car needs --pascal3d DIR" in capsys.readouterr().err


def test_training_monitor_on_pascal3d_photos(tmp_path):
    """``validation.real_dataset=pascal3d:DIR``: the training's real-photo monitor reads the
    same pairs as the set; an untrained network (zero flow) scores the closed-form 2/3 at 0.1."""
    root = tmp_path / "p3d"
    _release(root)
    cfg = load_config("smoke", [f"validation.real_dataset=pascal3d:{root}",
                                "validation.real_pairs=4"])
    mon = RealPhotoPCK(cfg)
    assert mon.pairs == [(0, 1), (1, 0)]
    out = mon(build_network(NetConfig(width=0.25, image_size=128)))
    assert out["real_pairs"] == 2
    np.testing.assert_allclose(out["real_pck@0.1"], 2 / 3)
    with pytest.raises(ValueError, match="real_dataset"):
        load_config("smoke", ["validation.real_dataset=pascal3d:"])
    with pytest.raises(FileNotFoundError):
        RealPhotoPCK(load_config("smoke", [f"validation.real_dataset=pascal3d:{tmp_path}/x"]))
