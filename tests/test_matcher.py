"""Matcher and model files: round trip, shapes for any image size, flow in original pixels."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cyclecorr import Matcher
from cyclecorr.checkpoint import load_model, read_metadata, save_model
from cyclecorr.model import NetConfig, build_network


@pytest.fixture
def model_file(tmp_path):
    torch.manual_seed(0)
    net = build_network(NetConfig(width=0.25, image_size=64))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.02)
    path = tmp_path / "m.safetensors"
    save_model(path, net, {"step": 7, "stage": 2})
    return path, net


def test_model_file_round_trip(model_file):
    path, net = model_file
    loaded, meta = load_model(path)
    assert meta["step"] == 7 and meta["net"]["width"] == 0.25 and len(meta["sha256"]) == 64
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = net.eval()(x, x.flip(0)), loaded(x, x.flip(0))
    assert torch.allclose(a["flow"], b["flow"])
    assert torch.allclose(a["matchability"], b["matchability"])


def test_not_a_model_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="bad.safetensors"):
        read_metadata(bad)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        Matcher.from_checkpoint(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("hw_src,hw_tgt", [((37, 53), (80, 61)), ((64, 64), (64, 64))])
def test_match_shapes_any_size(model_file, hw_src, hw_tgt):
    m = Matcher.from_checkpoint(model_file[0], device="cpu")
    rng = np.random.RandomState(0)
    src = rng.randint(0, 255, hw_src + (3,)).astype(np.uint8)
    tgt = rng.randint(0, 255, hw_tgt + (3,)).astype(np.uint8)
    out = m.match(src, tgt)
    assert out["flow"].shape == hw_src + (2,) and out["flow"].dtype == np.float32
    assert out["matchability"].shape == hw_src
    assert np.all((out["matchability"] >= 0) & (out["matchability"] <= 1))
    kps = m.transfer_keypoints(src, tgt, [[3.0, 4.0], [20.5, 10.25]])
    assert kps.shape == (2, 2) and np.all(np.isfinite(kps))


def test_zero_network_flow_maps_relative_positions():
    """An untrained network predicts zero flow at its own resolution; in original pixels that is
    the map between relative positions of the two images."""
    net = build_network(NetConfig(width=0.25, image_size=32))
    m = Matcher(net, device="cpu")
    out = m.match(np.zeros((20, 40, 3), np.uint8), np.zeros((60, 10, 3), np.uint8))
    ys, xs = np.mgrid[0:20, 0:40]
    qx, qy = xs + out["flow"][..., 0], ys + out["flow"][..., 1]
    assert np.allclose((qx + 0.5) / 10, (xs + 0.5) / 40, atol=1e-5)
    assert np.allclose((qy + 0.5) / 60, (ys + 0.5) / 20, atol=1e-5)


def test_bad_image_rejected(model_file):
    m = Matcher.from_checkpoint(model_file[0], device="cpu")
    with pytest.raises(ValueError, match="H×W×3"):
        m.match(np.zeros((10, 10, 5), np.uint8), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        m.match(np.full((10, 10, 3), np.nan, np.float32), np.zeros((10, 10, 3), np.float32))


def test_atomic_write_leaves_no_temp_and_normal_permissions(tmp_path):
    import os

    from cyclecorr._io import atomic_path, atomic_write_bytes

    atomic_write_bytes(tmp_path / "a.json", b"{}")
    assert (tmp_path / "a.json").read_bytes() == b"{}"
    mode = os.stat(tmp_path / "a.json").st_mode & 0o777
    assert mode & 0o044  # readable by others (not mkstemp's 0600), umask permitting
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "b.npz") as tmp:
            assert tmp.suffix == ".npz"  # writers that look at the ending keep working
            tmp.write_bytes(b"partial")
            raise RuntimeError("writer failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_format_json_reader_names_file_and_problem(tmp_path):
    from cyclecorr._io import read_format_json
    from cyclecorr.data.io import DataError

    good = tmp_path / "good.json"
    good.write_text('{"format": "x-1", "n": 3}')
    assert read_format_json(good, "x-1", "manifest")["n"] == 3
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "x-1", ')
    with pytest.raises(DataError, match=r"bad\.json: malformed manifest"):
        read_format_json(bad, "x-1", "manifest", DataError)
    other = tmp_path / "other.json"
    other.write_text('{"format": "y-2"}')
    with pytest.raises(ValueError, match=r"other\.json: not a x-1 pointer \(format 'y-2'\)"):
        read_format_json(other, "x-1", "pointer")
    lst = tmp_path / "list.json"
    lst.write_text('[1, 2]')
    with pytest.raises(ValueError, match="format 'list'"):
        read_format_json(lst, "x-1", "pointer")


def test_read_only_images_are_copied_not_shared():
    """np.asarray of a PIL image is read-only; the tensor must not alias it (torch warns, and a
    later in-place op would write into the caller's image)."""
    import warnings

    from cyclecorr.matcher import to_tensor_image

    for arr in (np.full((8, 9, 3), 255, np.uint8), np.full((8, 9, 3), 0.5, np.float32)):
        arr.setflags(write=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            t = to_tensor_image(arr)
        t.mul_(0)  # must not touch (or fail on) the caller's array
        assert arr.max() > 0 and t.shape == (3, 8, 9)


def test_resize_image_is_the_one_resize():
    """An image already at the network's size passes unchanged; others are resized antialiased,
    aspect not kept; uint8 is scaled to [0, 1] and the result clamped."""
    from cyclecorr.matcher import resize_image

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    t = resize_image(img, 32)
    assert t.shape == (3, 32, 32) and torch.equal(t, torch.from_numpy(img).permute(2, 0, 1) / 255.0)
    flat = resize_image(np.full((8, 50, 3), 255, np.uint8), 16)
    assert flat.shape == (3, 16, 16) and flat.max() <= 1.0 and torch.allclose(flat, torch.ones(1))
    grey = resize_image(np.full((20, 10), 0.25, np.float32), 8)  # H×W grey → three channels
    assert grey.shape == (3, 8, 8) and torch.allclose(grey, torch.full_like(grey, 0.25))


def test_network_refined_by_sift_flow(model_file):
    """``NAME=PATH+siftflow`` / ``Matcher(refine="siftflow")``: the network's flow searched around
    by SIFT flow finds a known translation exactly; the matchability stays the network's."""
    from scipy import ndimage

    from cyclecorr.evaluate.methods import make_method
    from cyclecorr.evaluate.report import markdown_report
    from cyclecorr.matcher import REFINE_DEFAULT, format_refine, parse_refine

    path, _ = model_file
    net = make_method(f"n={path}", device="cpu")
    guided = make_method(f"n={path}+siftflow:2:4:0", device="cpu")  # searched to full size
    default = make_method(f"n={path}+siftflow", device="cpu")
    assert default.name == "n+siftflow" and default.matcher.refine == REFINE_DEFAULT
    assert guided.name == "n+siftflow:2:4:0" and guided.matcher.refine == (2, 4, 0)
    assert net.matcher.refine is None and "refine" not in net.describe()
    other = make_method(f"n={path}+siftflow:1:3", device="cpu")
    assert other.name == "n+siftflow:1:3:1" and other.matcher.refine == (1, 3, 1)
    d = other.describe()
    assert d["refine"]["level"] == 1 and d["refine"]["window"] == 3 and d["sha256"]
    assert d["refine"]["stop_level"] == 1
    report = markdown_report({"sets": {}, "methods": {other.name: d}})
    assert "refined by SIFT flow from pyramid level 1 within ±3 there down to level 1" in report
    rs = np.random.RandomState(0)
    tex = ndimage.gaussian_filter(rs.rand(64, 64, 3), sigma=(2.0, 2.0, 0))
    a = torch.from_numpy((tex - tex.min()) / np.ptp(tex)).permute(2, 0, 1).float()
    b = torch.roll(a, shifts=(2, 3), dims=(1, 2))  # b(p + (3, 2)) = a(p)
    src, tgt = torch.stack([a, b]), torch.stack([b, a])
    flow, mat = guided.predict_batch(src, tgt)
    f_net, m_net = net.predict_batch(src, tgt)
    torch.testing.assert_close(mat, m_net)
    inner = flow[:, :, 12:-12, 12:-12]
    assert (inner[0, 0] == 3).float().mean() > 0.95 and (inner[0, 1] == 2).float().mean() > 0.95
    assert (inner[1, 0] == -3).float().mean() > 0.95 and (inner[1, 1] == -2).float().mean() > 0.95
    assert (f_net[0, 0, 12:-12, 12:-12] - 3).abs().mean() > 1  # the network alone is far off
    # the default stops at half resolution: within 1 px of the shift (odd shifts fall between
    # half-resolution labels)
    f_half, _ = default.predict_batch(src, tgt)
    err = (f_half[0, :, 12:-12, 12:-12] - torch.tensor([3.0, 2.0])[:, None, None]).abs()
    assert (err <= 1.0).all(dim=0).float().mean() > 0.95
    out = guided.matcher.predict(src, tgt)
    torch.testing.assert_close(out["network_flow"], f_net)
    # the Python API: Matcher.from_checkpoint(refine=...) and match() on images of any size
    m = Matcher.from_checkpoint(path, device="cpu", refine="siftflow:2:4:0")
    img_a = (a.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    img_b = (b.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    res = m.match(img_a, img_b)["flow"][12:-12, 12:-12]
    assert np.mean((res[..., 0] == 3) & (res[..., 1] == 2)) > 0.95
    assert parse_refine(None) is None and parse_refine("none") is None
    assert parse_refine("siftflow:0:6") == (0, 6, 0) and parse_refine((1, 2)) == (1, 2, 1)
    assert parse_refine("siftflow:3:8:2") == (3, 8, 2) and parse_refine((2, 8, 0)) == (2, 8, 0)
    assert format_refine((3, 8, 2)) == "siftflow:3:8:2" and format_refine(None) is None
    assert parse_refine(format_refine(REFINE_DEFAULT)) == REFINE_DEFAULT
    for bad in ("sift", "siftflow:2", "siftflow:a:b", "siftflow:-1:2", "siftflow:1:2:3:4",
                "siftflow:2:4:-1"):
        with pytest.raises(ValueError, match="refine"):
            parse_refine(bad)
    with pytest.raises(ValueError, match="not a network"):
        make_method("zero+siftflow")
    with pytest.raises(ValueError, match="LEVEL:WINDOW"):
        make_method(f"n={path}+siftflow:2")


def test_network_matched_both_ways(model_file):
    """``NAME=PATH+bidir`` / ``Matcher(bidirectional=True)``: the forward and reverse passes are
    the plain network's, the flow is their :func:`bidirectional_flow` at S/8 and S/64 (spread
    gate 3σ), the
    matchability the forward pass's; the description, report and compare identity say so."""
    from cyclecorr.commands.compare_cmd import _identity
    from cyclecorr.evaluate.methods import make_method
    from cyclecorr.evaluate.report import markdown_report
    from cyclecorr.geometry import bidirectional_flow

    path, _ = model_file
    plain = make_method(f"n={path}", device="cpu")
    both = make_method(f"n={path}+bidir", device="cpu")
    assert both.name == "n+bidir" and both.matcher.bidirectional
    assert not plain.matcher.bidirectional and "bidirectional" not in plain.describe()
    g = torch.Generator().manual_seed(0)
    src, tgt = torch.rand(3, 3, 64, 64, generator=g), torch.rand(3, 3, 64, 64, generator=g)
    out = both.matcher.predict(src, tgt)
    fwd, rev = plain.matcher.predict(src, tgt), plain.matcher.predict(tgt, src)
    torch.testing.assert_close(out["forward_flow"], fwd["flow"])
    torch.testing.assert_close(out["reverse_flow"], rev["flow"])
    torch.testing.assert_close(out["matchability"], fwd["matchability"])
    torch.testing.assert_close(out["flow"], bidirectional_flow(fwd["flow"], rev["flow"], 8, 1,
                                                               max_spread=3))
    assert not torch.equal(out["flow"], fwd["flow"])  # some pixels were averaged
    d = both.describe()
    assert d["bidirectional"]["tau_px"] == 8 and d["bidirectional"]["sigma_px"] == 1
    assert d["bidirectional"]["max_spread_px"] == 3
    assert "matched both ways and averaged where the two estimates agree within 8 px (reverse " \
        "flow inverted by a 1 px splat, not where it spreads by more than 3 px)" in \
        markdown_report({"sets": {}, "methods": {both.name: d}})
    assert _identity(d) != _identity({**d, "bidirectional": None})
    refined = make_method(f"n={path}+siftflow+bidir", device="cpu")
    assert refined.name == "n+siftflow+bidir" and refined.matcher.refine is not None
    with pytest.raises(ValueError, match="not a network"):
        make_method("zero+bidir")
