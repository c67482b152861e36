"""Near-duplicate screening of training photos against evaluation images: planted duplicates
(a resized, re-encoded crop; a photo containing an evaluation image; an aspect-distorted copy)
are found with the map that made them, unrelated photos are not, verdicts are cached."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cyclecorr.data import DataError, hygiene
from cyclecorr.data.hygiene import EvaluationIndex, Screener, find_duplicate, load_index


def _photo(seed: int, w: int = 240, h: int = 180) -> np.ndarray:
    """A textured synthetic photo: smooth colour noise with random rectangles and discs."""
    rng = np.random.default_rng(seed)
    small = rng.random((h // 12 + 2, w // 12 + 2, 3))
    img = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((w, h),
                                                                           Image.BICUBIC),
                     dtype=np.float64)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(25):
        c = rng.integers(0, 256, 3)
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        if rng.random() < 0.5:
            x1, y1 = x0 + rng.integers(5, 40), y0 + rng.integers(5, 40)
            m = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
        else:
            m = (xx - x0) ** 2 + (yy - y0) ** 2 < rng.integers(4, 20) ** 2
        img[m] = c
    return img.clip(0, 255).astype(np.uint8)


def _jpeg(img: np.ndarray, q: int = 75) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=q)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BICUBIC))


@pytest.fixture(scope="module")
def evalset(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    images = [_photo(s) for s in (1, 2, 3)]
    for i, im in enumerate(images):
        Image.fromarray(im).save(root / f"e{i}.png")
    index = EvaluationIndex.build(sorted(root.glob("*.png")), cache=root / "cache")
    return images, index, root


def test_planted_duplicates_are_found_with_their_map(evalset):
    images, index, root = evalset
    # 1. a crop of e0 (x 40..184, y 30..138) resized by 0.7 and re-encoded
    crop = images[0][30:138, 40:184]
    photo = _jpeg(_resize(crop, round(144 * 0.7), round(108 * 0.7)))
    d = find_duplicate(photo, index)
    assert d is not None and d.eval_image.endswith("e0.png")
    assert d.scale == pytest.approx((1 / 0.7, 1 / 0.7), rel=0.03)
    # the photo's centre maps onto the crop's centre in e0 (pixel centres: q = (p + ½)/0.7 − ½)
    c = np.array([50.0, 37.5])
    assert np.asarray(d.scale) * c + d.offset == pytest.approx((c + 0.5) / 0.7 - 0.5 + (40, 30),
                                                              abs=2.0)
    assert d.ncc > 0.9 and d.overlap > 0.9
    # 2. a bigger photo containing e1 at (60, 50), then resized by 0.8
    big = _photo(7, 400, 300)
    big[50:230, 60:300] = images[1]
    d = find_duplicate(_jpeg(_resize(big, 320, 240)), index)
    assert d is not None and d.eval_image.endswith("e1.png")
    assert d.scale == pytest.approx((1.25, 1.25), rel=0.03)
    c = np.array([160.0, 120.0])
    assert np.asarray(d.scale) * c + d.offset == pytest.approx((c + 0.5) * 1.25 - 0.5 - (60, 50),
                                                              abs=2.0)
    # 3. e2 squeezed to another aspect ratio (x by 0.5, y by 0.8)
    d = find_duplicate(_resize(images[2], 120, 144), index)
    assert d is not None and d.eval_image.endswith("e2.png")
    assert d.scale == pytest.approx((2.0, 1.25), rel=0.03)


def test_unrelated_photos_are_not_flagged(evalset):
    _, index, _ = evalset
    for seed in range(10, 18):
        assert find_duplicate(_photo(seed, 200, 150), index) is None
    # a flat image has no keypoints: not a duplicate (nothing to compare)
    assert find_duplicate(np.full((90, 120, 3), 128, np.uint8), index) is None


def test_index_cache_round_trip(evalset):
    _, index, root = evalset
    again = EvaluationIndex.build(sorted(root.glob("*.png")), cache=root / "cache")
    assert again.key == index.key
    for a, b in zip(index.descriptors, again.descriptors):
        np.testing.assert_array_equal(a, b)
    # another file set, another key
    other = EvaluationIndex.build(sorted(root.glob("*.png"))[:2], cache=root / "cache")
    assert other.key != index.key and len(other) == 2


def test_screener_caches_verdicts_and_workers_agree(evalset, tmp_path, monkeypatch):
    images, index, _ = evalset
    photos = [_jpeg(_resize(images[0][20:150, 30:200], 119, 91)), _photo(21), _photo(22),
              _resize(images[2], 180, 135)]
    with Screener(index, workers=1, cache=tmp_path) as sc:
        one = sc.check(photos)
    assert [v is not None for v in one] == [True, False, False, True]
    with Screener(index, workers=2, cache=tmp_path / "w2") as sc:
        two = sc.check(photos)
    assert [None if v is None else v.eval_image for v in one] == \
        [None if v is None else v.eval_image for v in two]
    # a new screener over the same cache folder answers from disk
    monkeypatch.setattr(hygiene, "find_duplicate", lambda *a, **k: pytest.fail("recomputed"))
    with Screener(index, workers=1, cache=tmp_path) as sc:
        again = sc.check(photos)
    assert [None if v is None else v.to_dict() for v in again] == \
        [None if v is None else v.to_dict() for v in one]


def test_missing_or_empty_extra_folder_is_named(tmp_path):
    with pytest.raises(DataError, match="nosuch"):
        load_index(None, [tmp_path / "nosuch"], cache=tmp_path / "c")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_index(None, [tmp_path / "empty"], cache=tmp_path / "c")
    assert len(load_index(None, (), cache=tmp_path / "c")) == 0


def test_pf_willow_photo_crop_is_found_and_voc_crops_are_clean(data_dir, tmp_path):
    """Real data: a crop of a PF-WILLOW car photo (as a VOC crop of the same photo would be) is
    found; the shared VOC 2007 car crops (near-duplicates removed there) are not flagged."""
    from cyclecorr.data import load_mat

    index = load_index(data_dir, cache=tmp_path / "c")
    assert len(index) >= 100
    src = sorted((data_dir / "real" / "pf-willow" / "car(G)").glob("*.png"))[3]
    img = np.asarray(Image.open(src).convert("RGB"))
    k = load_mat(src.with_suffix(".mat"))["pts_coord"] - 1
    x0, y0, x1, y1 = int(k[0].min()), int(k[1].min()), int(k[0].max()) + 1, int(k[1].max()) + 1
    crop = img[y0:y1, x0:x1]
    photo = _jpeg(_resize(crop, round(crop.shape[1] / 0.6), round(crop.shape[0] / 0.6)), 80)
    d = find_duplicate(photo, index)
    assert d is not None and d.eval_image.endswith(src.name)
    voc = sorted((data_dir / "real" / "voc2007" / "car").glob("*.jpg"))[::40]
    assert len(voc) >= 25
    flagged = [p.name for p in voc
               if find_duplicate(np.asarray(Image.open(p).convert("RGB")), index) is not None]
    assert flagged == []


def test_prepare_command_names_a_missing_exclude_folder(data_dir, tmp_path, capsys):
    from cyclecorr.cli import main

    rc = main(["prepare", "--category", "car",
               "--real", str(data_dir / "real" / "voc2007" / "car"),
               "--cad", str(data_dir / "cad" / "car" / "gsnet"), "--out", str(tmp_path / "o"),
               "--quartets", "0", "--exclude-like", str(tmp_path / "mine"), "--quiet"])
    assert rc == 2
    assert "mine: evaluation image folder not found" in capsys.readouterr().err
    assert not (tmp_path / "o" / "real_crops.safetensors").exists()
