"""The Stanford Cars layout (``real/stanford-cars``): unlabelled real car photos for training,
read by ImageFolder with their class label from ``images.tsv``, cropped tight like VOC crops."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from cyclecorr.data import DataError, ImageFolder, crop_sample
from cyclecorr.data.quartets import collect_real


def test_stanford_cars_labels_and_tight_crops(data_dir):
    root = data_dir / "real" / "stanford-cars"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    ds = ImageFolder(root)
    assert len(ds) == 6000
    with open(root / "images.tsv", newline="") as fh:
        rows = {r["file"]: r for r in csv.DictReader(fh, delimiter="\t")}
    rng = np.random.default_rng(0)
    for i in [0, *rng.choice(len(ds), 4, replace=False)]:
        s = ds[int(i)]
        row = rows[s.path.name]
        assert s.meta["model"] == row["class_label"] and s.meta["class_id"] == int(row["class_id"])
        w, h = (int(v) for v in row["out_size_wxh"].split("x"))
        assert s.image.shape == (h, w, 3) and s.bbox is None
        # tight: the whole photo is the car's box, so the crop maps its corners onto the photo's
        c = crop_sample(s, 128)
        assert c.image.shape == (128, 128, 3) and c.meta["crop_box_from"] == "image"
        np.testing.assert_allclose(c.meta["crop"].inverse(np.array([[-0.5, -0.5],
                                                                    [127.5, 127.5]])),
                                   [[-0.5, -0.5], [w - 0.5, h - 0.5]], atol=1e-9)
    first = ds[0]
    assert first.path.name == "stanfordcars_00001.jpg"
    assert first.meta["model"] == "Audi TTS Coupe 2012" and first.meta["class_id"] == 14
    # collect_real opens it as a folder of real photos, beside the VOC crops
    sets = collect_real([root, data_dir / "real" / "voc2007" / "car"], "car")
    assert [type(d).__name__ for _, d in sets] == ["ImageFolder", "ImageFolder"]
    assert [len(d) for _, d in sets] == [6000, 1035]


def test_images_tsv_fixture(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(tmp_path / name)
    (tmp_path / "images.tsv").write_text(
        "file\tsource_repo\tclass_id\tclass_label\n"
        "a.jpg\trepo\t3\tAM General Hummer SUV 2000\nb.jpg\trepo\t7\tAudi R8 Coupe 2012\n")
    ds = ImageFolder(tmp_path)
    assert len(ds) == 3                                    # every photo, listed or not
    got = {s.path.name: (s.meta.get("model"), s.meta.get("class_id")) for s in ds}
    assert got == {"a.jpg": ("AM General Hummer SUV 2000", 3), "b.jpg": ("Audi R8 Coupe 2012", 7),
                   "c.jpg": (None, None)}
    (tmp_path / "images.tsv").write_text("file\tclass_id\tclass_label\na.jpg\tseven\tX\n")
    with pytest.raises(DataError, match=r"images\.tsv:2: class_id"):
        ImageFolder(tmp_path)
    # a table without class labels adds nothing
    (tmp_path / "images.tsv").write_text("file\tsize\na.jpg\t20x30\n")
    assert "model" not in ImageFolder(tmp_path)[0].meta
