"""cyclecorr.data loaders and the crop: counts/shapes on the shared data, 1-based → 0-based,
consistent crops and flips, public-format fixtures (VOC XML, PASCAL3D+ .mat), clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from pascal3d_files import pascal3d_object, write_pascal3d
from PIL import Image

from cyclecorr.data import (
    DataError,
    FlowWebCars,
    ImageFolder,
    Pascal3D,
    PFWillow,
    Sample,
    TSSPairs,
    VOCDetection,
    crop_sample,
    flip_sample,
    list_shapenet,
    load_mat,
    read_flo,
    read_image,
    write_flo,
)


# ------------------------------------------------------------------ shared data
def test_pf_willow_counts(data_dir):
    ds = PFWillow(data_dir / "real" / "pf-willow")
    assert len(ds) == 100 and len(ds.classes) == 10
    for s in ds[:3] + [ds[99]]:
        assert s.keypoints.shape == (10, 2) and s.visible.all()
        h, w = s.size
        assert np.all((s.keypoints >= -0.5) & (s.keypoints <= [w - 0.5, h - 0.5]))
        assert s.path.exists() and s.path.suffix == ".png"
    assert len(ds.pairs("car(G)")) == 90


def test_pf_willow_one_based_conversion(data_dir):
    mat = data_dir / "real" / "pf-willow" / "car(G)" / "Cars_006a.mat"
    raw = scipy.io.loadmat(mat)["pts_coord"]
    s = PFWillow(data_dir / "real" / "pf-willow", classes=["car(G)"])[0]
    assert s.meta["annotation"] == mat
    np.testing.assert_allclose(s.keypoints, raw.T - 1.0)


def test_flowweb_counts_masks_parts(data_dir):
    ds = FlowWebCars(data_dir / "real" / "flowweb-car")
    assert len(ds) == 20
    n_vis = 0
    for s in ds:
        assert s.keypoints.shape == (12, 2) and s.visible.shape == (12,)
        assert s.mask.shape == s.size and s.mask.dtype == bool and s.mask.any()
        assert s.parts and all(m.shape == s.size for m in s.parts.values())
        assert np.isnan(s.keypoints[~s.visible]).all()
        n_vis += s.visible.sum()
        # annotated keypoints are on (or right next to) the car
        k = np.rint(s.keypoints[s.visible]).astype(int)
        h, w = s.size
        k = np.clip(k, 0, [w - 1, h - 1])
        near = np.zeros_like(s.mask)
        near[1:-1, 1:-1] = (s.mask[:-2, 1:-1] | s.mask[2:, 1:-1] | s.mask[1:-1, :-2]
                            | s.mask[1:-1, 2:])
        assert (s.mask | near)[k[:, 1], k[:, 0]].mean() >= 0.75
    assert n_vis >= 80


def test_tss_pairs(data_dir):
    ds = TSSPairs(data_dir / "real" / "tss")
    assert len(ds) == 6
    p = ds[0]
    assert p.flow_ab.shape == (2,) + p.image_a.shape[:2]
    assert p.flow_ba.shape == (2,) + p.image_b.shape[:2]
    valid = np.isfinite(p.flow_ab).all(0)
    # the flow is known exactly on the foreground mask (unknown = 1e10 → NaN elsewhere)
    assert np.array_equal(valid, p.mask_a)
    assert {q.meta["group"] for q in ds} == {"FG3DCar", "JODS", "PASCAL"}
    assert all(q.mask_a.any() and q.mask_b.any() for q in ds)  # palette masks too (JODS)


def test_tss_flow_direction(data_dir):
    """flow1 maps image1 → image2: warping mask2 by it reproduces mask1."""
    import torch

    from cyclecorr.geometry import warp

    p = TSSPairs(data_dir / "real" / "tss")[0]
    f = torch.from_numpy(np.nan_to_num(p.flow_ab))[None]
    w = warp(torch.from_numpy(p.mask_b.astype(np.float32))[None, None], f)[0, 0].numpy() > 0.5
    assert w[p.mask_a].mean() > 0.9


def test_voc2007_folder_boxes(data_dir):
    ds = ImageFolder(data_dir / "real" / "voc2007" / "car")
    assert len(ds) == 1035
    s = ds[0]
    # smsjbvoc_000004_0.jpg: VOC box 13,311,84,362 (1-based), crop window from (8, 307)
    assert s.path.name == "smsjbvoc_000004_0.jpg"
    assert s.bbox == (4.0, 3.0, 75.0, 54.0)
    assert s.meta["pose"] == "Frontal" and s.meta["truncated"] == 0
    c = crop_sample(s)
    assert c.image.shape == (128, 128, 3) and c.meta["crop_box_from"] == "bbox"
    ikea = ImageFolder(data_dir / "real" / "ikea-chair")
    assert len(ikea) == 218 and ikea[0].bbox is None
    assert ikea[0].meta["model"] == "IKEA_chair_SNILLE"


# ------------------------------------------------------------------ crop / flip
def _synthetic_sample(h=60, w=90):
    img = np.zeros((h, w, 3), np.uint8)
    img[20:40, 30:70] = 200
    kps = np.array([[30.0, 20.0], [69.0, 39.0], [50.0, 30.0], [np.nan, np.nan]])
    vis = np.array([True, True, True, False])
    mask = img[..., 0] > 0
    return Sample(image=img, keypoints=kps, visible=vis, mask=mask,
                  keypoint_names=["left_corner", "right_corner", "centre", "left_missing"],
                  parts={"left_half": mask & (np.arange(w) < 50)[None]},
                  bbox=(30, 20, 69, 39))


def test_crop_closed_form():
    s = _synthetic_sample()
    c = crop_sample(s, size=40)  # box 30..69 × 20..39 (40×20 px) → 40×40: sx = 1, sy = 2
    np.testing.assert_allclose(c.keypoints[0], [0.0, 0.5])
    np.testing.assert_allclose(c.keypoints[1], [39.0, 38.5])
    assert c.visible.tolist() == [True, True, True, False]
    # the box is exactly the bright block (bilinear upsampling blends only the outer rows)
    assert c.mask.all() and c.image[1:-1, :, 0].min() >= 190 and c.image[..., 0].min() >= 140
    back = c.meta["crop"].inverse(c.keypoints[:3])
    np.testing.assert_allclose(back, s.keypoints[:3], atol=1e-9)


def test_crop_keypoint_lands_on_drawn_pixel():
    """A keypoint drawn as a bright dot stays on the dot after crop + resize (and flip)."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        h, w = rng.integers(100, 300, 2)
        img = np.zeros((h, w, 3), np.uint8)
        x, y = int(rng.integers(40, w - 40)), int(rng.integers(40, h - 40))
        img[y - 3:y + 4, x - 3:x + 4] = 255
        s = Sample(image=img, keypoints=[[x, y]], visible=[True])
        box = (x - int(rng.integers(10, 39)), y - int(rng.integers(10, 39)),
               x + int(rng.integers(10, 39)), y + int(rng.integers(10, 39)))
        for flip in (False, True):
            c = crop_sample(s, 128, box=box, flip=flip)
            g = c.image[..., 0].astype(float)
            ys, xs = np.nonzero(g > 127)
            centre = np.array([xs.mean(), ys.mean()])
            assert np.abs(centre - c.keypoints[0]).max() < 1.0


def test_crop_outside_image_is_black_and_default_box():
    img = np.full((10, 20, 3), 100, np.uint8)
    s = Sample(image=img)
    c = crop_sample(s, 16)
    assert c.meta["crop_box_from"] == "image" and (c.image == 100).all()
    c = crop_sample(s, 16, box=(-10, 0, 9, 9))  # left half of the box is outside the photo
    assert c.image[:, :6].max() == 0 and c.image[:, 10:].min() == 100


def test_flip_swaps_left_right():
    s = _synthetic_sample()
    f = flip_sample(s)
    w = s.size[1]
    # "left_corner" now holds the mirror of "right_corner"'s position, and vice versa
    np.testing.assert_allclose(f.keypoints[0], [w - 1 - 69.0, 39.0])
    np.testing.assert_allclose(f.keypoints[1], [w - 1 - 30.0, 20.0])
    np.testing.assert_allclose(f.keypoints[2], [w - 1 - 50.0, 30.0])
    assert "right_half" in f.parts
    assert np.array_equal(f.parts["right_half"], s.parts["left_half"][:, ::-1])
    assert f.bbox == (w - 1 - 69, 20, w - 1 - 30, 39)
    ff = flip_sample(f)
    np.testing.assert_allclose(ff.keypoints, s.keypoints)
    assert np.array_equal(ff.image, s.image) and not ff.meta["flipped"]


def test_flowweb_crop_keeps_keypoints_on_mask(data_dir):
    s = FlowWebCars(data_dir / "real" / "flowweb-car")[2]
    c = crop_sample(s)
    assert c.meta["crop_box_from"] == "mask" and c.mask.shape == (128, 128)
    k = np.clip(np.rint(c.keypoints[c.visible]).astype(int), 0, 127)
    assert c.mask[k[:, 1], k[:, 0]].mean() >= 0.75
    assert set(c.parts) == set(s.parts)


# ------------------------------------------------------------------ public-format fixtures
def _write_jpg(path, h=120, w=160):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((h, w, 3), np.uint8)
    img[30:90, 40:140] = (200, 50, 50)
    Image.fromarray(img).save(path, quality=95)


def test_voc_layout(tmp_path):
    root = tmp_path / "VOC2007"
    _write_jpg(root / "JPEGImages" / "000001.jpg")
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "000001.xml").write_text(
        "<annotation><filename>000001.jpg</filename>"
        "<object><name>car</name><pose>Left</pose><truncated>0</truncated><difficult>0</difficult>"
        "<bndbox><xmin>41</xmin><ymin>31</ymin><xmax>140</xmax><ymax>90</ymax></bndbox></object>"
        "<object><name>car</name><truncated>1</truncated><difficult>0</difficult>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object>"
        "<object><name>person</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax>"
        "<ymax>9</ymax></bndbox></object></annotation>")
    ds = VOCDetection(root, "car")
    assert len(ds) == 2
    s = ds[0]
    assert s.bbox == (40.0, 30.0, 139.0, 89.0) and s.meta["pose"] == "Left"
    assert len(VOCDetection(root, "car", skip_truncated=True)) == 1
    c = crop_sample(s)
    # exactly the red block (the outermost output pixels blend with the border, by convention)
    assert np.abs(c.image[2:-2, 2:-2].astype(int) - [200, 50, 50]).max() < 16  # JPEG ringing
    (root / "Annotations" / "000002.xml").write_text("<annotation><filename>")
    with pytest.raises(DataError, match="000002.xml"):
        VOCDetection(root, "car")


def _pascal3d_fixture(root):
    """A one-image PASCAL3D+ release in the public format (record struct in a .mat)."""
    _write_jpg(root / "Images" / "car_pascal" / "2008_000001.jpg")
    obj = pascal3d_object((41, 31, 140, 90),
                          {"left_front_wheel": (51, 81), "right_front_wheel": None},
                          view=dict(azimuth=30, elevation=10, theta=2, distance=5.5, focal=1,
                                    px=81, py=61, viewport=2000), cad_index=3)
    return write_pascal3d(root, "car_pascal", "2008_000001.jpg", [obj])


def test_pascal3d_layout(tmp_path):
    mat = _pascal3d_fixture(tmp_path)
    ds = Pascal3D(tmp_path, "car")
    assert len(ds) == 1
    s = ds[0]
    assert s.bbox == (40.0, 30.0, 139.0, 89.0)
    assert s.keypoint_names[:4] == ["left_front_wheel", "left_back_wheel", "right_front_wheel",
                                    "right_back_wheel"]
    assert s.visible.sum() == 1 and s.visible[0]
    np.testing.assert_allclose(s.keypoints[0], [50.0, 80.0])
    vp = s.viewpoint
    assert (vp.azimuth, vp.elevation, vp.theta, vp.distance) == (30.0, 10.0, 2.0, 5.5)
    assert vp.principal == (80.0, 60.0) and vp.viewport == 2000.0
    assert s.meta["cad_index"] == 3
    c = crop_sample(s, flip=True)  # flipped: the left wheel becomes the right one
    names = c.keypoint_names
    assert c.visible[names.index("right_front_wheel")] and not c.visible[0]
    assert c.viewpoint.azimuth == 330.0
    mat.write_bytes(b"MATLAB 5.0 MAT-file garbage" + bytes(100))
    with pytest.raises(DataError, match="2008_000001.mat"):
        Pascal3D(tmp_path, "car")


def test_list_shapenet(tmp_path, data_dir):
    got = list_shapenet(data_dir / "cad" / "chair" / "shapenet")
    assert len(got) == 10 and all(p.name == "model_normalized.obj" for p in got)
    (tmp_path / "02958343" / "abc" / "models").mkdir(parents=True)
    (tmp_path / "02958343" / "abc" / "models" / "model_normalized.obj").write_text("v 0 0 0\n")
    assert [p.parent.parent.name for p in list_shapenet(tmp_path, "car")] == ["abc"]


# ------------------------------------------------------------------ errors
def test_corrupt_image_names_file(tmp_path):
    p = tmp_path / "broken.jpg"
    p.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        read_image(p)
    (tmp_path / "ok.png").write_bytes(b"")
    ds = ImageFolder(tmp_path)
    with pytest.raises(DataError, match="broken.jpg"):
        ds[0]


def test_malformed_mat_and_missing_variable(tmp_path):
    p = tmp_path / "bad.mat"
    p.write_bytes(b"\x00" * 50)
    with pytest.raises(DataError, match="bad.mat"):
        load_mat(p)
    q = tmp_path / "nopts.mat"
    scipy.io.savemat(q, {"other": np.zeros(3)})
    with pytest.raises(DataError, match=r"nopts.mat.*pts_coord"):
        load_mat(q, ("pts_coord",))
    d = tmp_path / "willow" / "cls"
    d.mkdir(parents=True)
    scipy.io.savemat(d / "001.mat", {"pts_coord": np.zeros((3, 10))})
    _write_jpg(d / "001.png")
    with pytest.raises(DataError, match=r"001.mat.*2×N"):
        PFWillow(tmp_path / "willow")[0]


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(DataError, match="empty folder"):
        ImageFolder(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        FlowWebCars(tmp_path / "nowhere")
    with pytest.raises(DataError, match="empty folder"):
        TSSPairs(tmp_path)
    with pytest.raises(DataError, match="empty folder"):
        FlowWebCars(tmp_path)


def test_flo_round_trip_and_errors(tmp_path):
    f = np.random.default_rng(0).normal(size=(2, 5, 7)).astype(np.float32)
    f[:, 1, 2] = np.nan
    write_flo(tmp_path / "a.flo", f)
    g = read_flo(tmp_path / "a.flo")
    assert np.isnan(g[:, 1, 2]).all()
    np.testing.assert_array_equal(np.nan_to_num(g), np.nan_to_num(f))
    (tmp_path / "b.flo").write_bytes((tmp_path / "a.flo").read_bytes()[:40])
    with pytest.raises(DataError, match=r"b.flo.*truncated"):
        read_flo(tmp_path / "b.flo")


def test_sample_validation():
    with pytest.raises(ValueError, match="uint8"):
        Sample(image=np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="mask"):
        Sample(image=np.zeros((4, 4, 3), np.uint8), mask=np.zeros((3, 4), bool))
    with pytest.raises(ValueError, match="finite"):
        crop_sample(Sample(image=np.zeros((4, 4, 3), np.uint8)), 8, box=(0, 0, np.nan, 3))


def test_image_to_tensor_round_trip():
    from cyclecorr.data import image_to_tensor

    a = (np.arange(12 * 5 * 3) % 256).astype(np.uint8).reshape(12, 5, 3)
    t = image_to_tensor(a)
    assert t.shape == (3, 12, 5) and t.dtype.is_floating_point
    np.testing.assert_array_equal((t * 255).round().permute(1, 2, 0).numpy().astype(np.uint8), a)
