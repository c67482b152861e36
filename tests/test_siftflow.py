"""Tests of cyclecorr.siftflow: dense SIFT, the BP solver, SIFT flow, batch caching, the command."""
from __future__ import annotations

import argparse
import itertools
import json
import os

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from cyclecorr.siftflow import (
    SiftFlowParams,
    _bp,
    compute_sift_flow_batch,
    dense_sift,
    load_sift_flow,
    matchability_from_cost,
    sift_flow,
    sift_flow_tensors,
)

MARGIN = 16  # pixels left out near the borders (the SIFT patch and out-of-image matches)


# ----------------------------------------------------------------------------- helpers
def _texture(h=128, w=128, seed=0) -> np.ndarray:
    """A smooth random colour texture, uint8 H×W×3 (used where no real image is needed)."""
    rs = np.random.RandomState(seed)
    img = ndimage.gaussian_filter(rs.rand(h, w, 3), sigma=(2.0, 2.0, 0))
    img = (img - img.min()) / (img.max() - img.min())
    return (40 + 170 * img).astype(np.uint8)


def _real_image(data_dir, size=(128, 128)) -> np.ndarray:
    p = data_dir / "real" / "tss" / "JODS" / "car_03_04" / "image1.png"
    if not p.is_file():
        pytest.skip(f"missing {p}")
    img = Image.open(p).convert("RGB").resize(size, Image.BILINEAR)
    return np.asarray(img)


def _warp_affine(img: np.ndarray, A: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Image b with b(A p + t) = a(p): b sampled at q takes a at A^{-1}(q − t) (bilinear)."""
    h, w = img.shape[:2]
    qy, qx = np.indices((h, w), dtype=np.float64)
    Ai = np.linalg.inv(A)
    px = Ai[0, 0] * (qx - t[0]) + Ai[0, 1] * (qy - t[1])
    py = Ai[1, 0] * (qx - t[0]) + Ai[1, 1] * (qy - t[1])
    out = np.stack([ndimage.map_coordinates(img[..., c].astype(np.float64), [py, px], order=1,
                                            mode="nearest") for c in range(3)], axis=-1)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _interior(arr, m=MARGIN):
    return arr[..., m:-m, m:-m]


def _read_flo(path) -> np.ndarray:
    with open(path, "rb") as f:
        assert np.fromfile(f, np.float32, 1)[0] == np.float32(202021.25), path
        w, h = np.fromfile(f, np.int32, 2)
        return np.fromfile(f, np.float32).reshape(h, w, 2)


# ----------------------------------------------------------------------------- dense SIFT
def test_dense_sift_shape_range_and_brightness_invariance():
    img = _texture(40, 50)
    s = dense_sift(img)
    assert s.shape == (40, 50, 128) and s.dtype == np.float32
    assert s.min() >= 0 and s.max() <= 255.0 + 1e-3
    norms = np.linalg.norm(s, axis=2)
    assert np.median(norms) > 250 and np.all(norms <= 255.0 + 1e-3)  # normalised (×255)
    flat = dense_sift(np.full((20, 20, 3), 128, np.uint8))
    assert np.all(flat == 0)  # no gradient, no descriptor
    brighter = img.astype(np.int16) + 25
    assert brighter.max() <= 255
    np.testing.assert_array_equal(dense_sift(brighter.astype(np.uint8)), s)


def test_dense_sift_translation_equivariance():
    img = _texture(60, 60, seed=3)
    shifted = np.roll(img, (5, -3), axis=(0, 1))
    s, s2 = dense_sift(img), dense_sift(shifted)
    np.testing.assert_allclose(s2[20:-20, 20:-20], s[15:-25, 23:-17], atol=1e-3)


def test_dense_sift_rejects_bad_input():
    bad = _texture(20, 20).astype(np.float64) / 255
    bad[3, 4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        dense_sift(bad)
    with pytest.raises(ValueError, match="shape"):
        dense_sift(np.zeros((5, 5, 7)))


# ----------------------------------------------------------------------------- the BP solver
def test_bp_exact_on_decoupled_chain():
    """With D(u, v) = f(u) + g(v) on a 1×5 chain both layers are chains: BP is exact."""
    rs = np.random.RandomState(0)
    width, w = 5, 1
    n = 2 * w + 1
    f, g = rs.rand(1, width, n) * 10, rs.rand(1, width, n) * 10
    D = (f[:, :, None, :] + g[:, :, :, None]).astype(np.float32)
    rng = np.zeros((2, 1, width, n), np.float32)
    off = np.zeros((2, 1, width), np.int32)
    for alpha, d in [(1.0, 100.0), (3.0, 4.0), (10.0, 100.0)]:
        energies = np.zeros(12)
        labels, energies, _, _ = _bp.multigrid_bp(D, rng, off, 0.0, w, alpha, d, 12, 0)
        # separable: the optimum is the sum of two chain optima (brute force over 3^5 each)
        configs = np.array(list(itertools.product(range(n), repeat=width)))
        pair = np.minimum(alpha * np.abs(np.diff(configs, axis=1)), d).sum(1)
        best = sum((u[0, np.arange(width), configs].sum(1) + pair).min() for u in (f, g))
        assert _bp.energy(D, rng, off, labels, w, alpha, d) == pytest.approx(best, rel=1e-6)


def test_energy_decreases_over_iterations():
    a = _texture(64, 64, seed=1)
    b = np.roll(a, (3, -6), axis=(0, 1))
    params = SiftFlowParams()
    res = sift_flow(a, b, params)
    assert len(res.energy_per_level) == len(res.level_shapes) >= 3
    assert res.level_shapes[-1] == (64, 64)
    assert len(res.energy) == sum(len(e) for e in res.energy_per_level)
    assert len(res.energy_per_level[0]) == params.n_top_iterations + 1
    assert len(res.energy_per_level[-1]) == params.n_iterations + 1
    for e in res.energy_per_level:
        assert np.all(np.isfinite(e))
        assert min(e[1:]) <= e[0]  # BP never ends above the flow it started from
    top = res.energy_per_level[0]
    assert min(top[1:]) < 0.8 * top[0]  # the coarsest level really optimises
    # plain BP (no multigrid start): the energy goes down over the iterations
    s1, s2 = dense_sift(a), dense_sift(b)
    w = 8  # b(p + (−6, 3)) = a(p): inside the ±8 window
    off = np.zeros((2, 64, 64), np.int32)
    D = _bp.data_term(s1, s2, off[0], off[1], w)
    D[D < 0] = np.median(D[D >= 0])
    rng = np.ascontiguousarray(np.broadcast_to(
        (params.gamma * np.abs(np.arange(2 * w + 1) - w)).astype(np.float32),
        (2, 64, 64, 2 * w + 1)))
    args = (D, rng, off, params.gamma, w, params.alpha, params.d, 30)
    _, e_plain, _, _ = _bp.multigrid_bp(*args, 0)
    assert e_plain[-1] < e_plain[1] and np.all(np.diff(e_plain[2:]) < 0.01 * e_plain[0])
    labels, e_mg, _, _ = _bp.multigrid_bp(*args, 2)  # Liu's multigrid start
    assert e_mg[1] < 0.7 * e_mg[0] and min(e_mg[2:]) <= e_mg[1] and e_mg[-1] < e_plain[-1]
    assert _bp.energy(D, rng, off, labels, w, params.alpha, params.d) == pytest.approx(min(e_mg))


# ----------------------------------------------------------------------------- SIFT flow
def test_translation_recovered_synthetic():
    a = _texture(96, 112, seed=2)
    b = np.zeros_like(a)
    b[4:, 7:] = a[:-4, :-7]  # b(p + (7, 4)) = a(p)
    res = sift_flow(a, b)
    assert res.flow.shape == (2, 96, 112) and res.flow.dtype == np.float32
    assert res.cost.shape == (96, 112) and res.cost.dtype == np.float32
    fl = _interior(res.flow)
    assert np.mean((fl[0] == 7) & (fl[1] == 4)) > 0.99
    assert np.median(_interior(res.cost)) < 1.0  # identical descriptors at the match


def test_translation_and_affine_on_real_image(data_dir):
    a = _real_image(data_dir)
    # integer translation: flow exact, and warping b by the flow reproduces a
    b = np.zeros_like(a)
    b[:-5, 9:] = a[5:, :-9]  # b(p + (9, −5)) = a(p)
    res = sift_flow(a, b)
    fl = _interior(res.flow)
    epe = np.hypot(fl[0] - 9, fl[1] + 5)
    assert epe.mean() < 1.0 and np.mean(epe == 0) > 0.95
    h, w = a.shape[:2]
    yy, xx = np.indices((h, w))
    warped = b[np.clip(yy + res.flow[1].astype(int), 0, h - 1),
               np.clip(xx + res.flow[0].astype(int), 0, w - 1)]
    assert np.mean(np.abs(_interior(warped.transpose(2, 0, 1)).astype(int)
                          - _interior(a.transpose(2, 0, 1)).astype(int))) < 2.0
    # affine warp (rotation ≈ 2°, scale 1.04, shift): true flow A p + t − p
    th = np.deg2rad(2.0)
    A = 1.04 * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    t = np.array([-4.0, 3.0])
    b = _warp_affine(a, A, t)
    res = sift_flow(a, b)
    py, px = np.indices((h, w), dtype=np.float64)
    gt = np.stack([A[0, 0] * px + A[0, 1] * py + t[0] - px,
                   A[1, 0] * px + A[1, 1] * py + t[1] - py])
    epe = np.hypot(*(_interior(res.flow) - _interior(gt)))
    assert epe.mean() < 1.0, epe.mean()


def test_large_displacement_at_128(data_dir):
    """The coarsest level (16×16, ±10 px) reaches ~30 px displacements at 128×128."""
    p = data_dir / "real" / "tss" / "JODS" / "car_03_04" / "image1.png"
    if not p.is_file():
        pytest.skip(f"missing {p}")
    big = np.asarray(Image.open(p).convert("RGB").resize((256, 192), Image.BILINEAR))
    a = big[30:158, 40:168]  # a(p) = big(p + (40, 30))
    b = big[10:138, 70:198]  # b(q) = big(q + (70, 10))  =>  q = p + (−30, 20)
    res = sift_flow(a, b)
    overlap = (slice(0, 108), slice(30, 128))  # pixels of a whose match lies inside b
    ok = (res.flow[0] == -30) & (res.flow[1] == 20)
    assert ok[overlap].mean() > 0.95


def test_brightness_change_does_not_change_result():
    a = _texture(80, 80, seed=4)
    b = np.roll(a, (2, 5), axis=(0, 1))
    r1 = sift_flow(a, b)
    r2 = sift_flow((a.astype(np.int16) + 30).astype(np.uint8), b)
    np.testing.assert_array_equal(r1.flow, r2.flow)
    np.testing.assert_allclose(r1.cost, r2.cost, atol=1e-3)
    # float input in [0, 1] gives the same as uint8
    r3 = sift_flow(a / 255.0, b.astype(np.float32) / 255.0)
    np.testing.assert_array_equal(r1.flow, r3.flow)


def test_different_sizes_map_flow_into_b_pixels():
    a = _texture(80, 96, seed=5)
    b0 = np.roll(a, (3, 5), axis=(0, 1))  # b0(p + (5, 3)) = a(p)
    b = np.asarray(Image.fromarray(b0).resize((120, 100), Image.BILINEAR))  # b is b0 ×1.25
    res = sift_flow(a, b)
    assert res.flow.shape == (2, 80, 96)
    py, px = np.indices((80, 96), dtype=np.float64)
    gt = np.stack([(px + 5 + 0.5) * 1.25 - 0.5 - px, (py + 3 + 0.5) * 1.25 - 0.5 - py])
    epe = np.hypot(*(_interior(res.flow) - _interior(gt)))
    assert epe.mean() < 1.0, epe.mean()


def test_tensor_batch_and_matchability():
    torch = pytest.importorskip("torch")
    a = _texture(40, 48, seed=6)
    b = np.roll(a, (1, 2), axis=(0, 1))
    ta = torch.from_numpy(np.stack([a, b])).permute(0, 3, 1, 2).float() / 255
    tb = torch.from_numpy(np.stack([b, a])).permute(0, 3, 1, 2).float() / 255
    flow, cost = sift_flow_tensors(ta, tb)
    assert flow.shape == (2, 2, 40, 48) and cost.shape == (2, 40, 48)
    assert isinstance(flow, torch.Tensor) and flow.dtype == torch.float32
    np.testing.assert_array_equal(flow[0].numpy(), sift_flow(a, b).flow)
    inner = flow[:, :, MARGIN:-MARGIN, MARGIN:-MARGIN]
    assert torch.all(inner[0, 0] == 2) and torch.all(inner[0, 1] == 1)  # b(p + (2, 1)) = a(p)
    assert torch.all(inner[1, 0] == -2) and torch.all(inner[1, 1] == -1)
    # pairs in threads: bit-equal to one at a time, guided or not; threads < 1 refused
    init = torch.randn(2, 2, 40, 48, generator=torch.Generator().manual_seed(0))
    for kw in ({}, {"init_flow": init, "init_level": 1, "init_window": 3}):
        one = sift_flow_tensors(ta, tb, threads=1, **kw)
        two = sift_flow_tensors(ta, tb, threads=2, **kw)
        assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    torch.testing.assert_close(one[0], sift_flow_tensors(ta, tb, threads=5, **kw)[0], rtol=0,
                               atol=0)
    with pytest.raises(ValueError, match="threads"):
        sift_flow_tensors(ta, tb, threads=0)
    m = matchability_from_cost(np.array([[0.0, 10.0], [20.0, 40.0]]))
    np.testing.assert_allclose(m, np.exp(-np.array([[0.0, 10.0], [20.0, 40.0]]) / 15.0), rtol=1e-6)
    assert m.dtype == np.float32 and m.max() <= 1 and m.min() > 0


def test_bad_input_raises():
    a = _texture(32, 32).astype(np.float64) / 255
    b = a.copy()
    b[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="image_b"):
        sift_flow(a, b)
    with pytest.raises(ValueError, match="image_a"):
        sift_flow(np.zeros((1, 5)), a)
    with pytest.raises(ValueError):
        SiftFlowParams(data_threshold="mean")


def test_tss_cars_better_than_zero_flow(data_dir):
    """TSS car pairs (FG3DCar, JODS), flow1 = image1 → image2, evaluated at 160 px wide."""
    root = data_dir / "real" / "tss"
    pairs = sorted(list((root / "FG3DCar").glob("*")) + list((root / "JODS").glob("*")))
    pairs = [p for p in pairs if (p / "flow1.flo").is_file()]
    if not pairs:
        pytest.skip(f"no TSS car pairs under {root}")
    for d in pairs:
        a = Image.open(d / "image1.png").convert("RGB")
        b = Image.open(d / "image2.png").convert("RGB")
        s = 160 / max(a.size)
        size_a = (round(a.size[0] * s), round(a.size[1] * s))
        size_b = (round(b.size[0] * s), round(b.size[1] * s))
        A = np.asarray(a.resize(size_a, Image.BILINEAR))
        B = np.asarray(b.resize(size_b, Image.BILINEAR))
        gt_full = _read_flo(d / "flow1.flo")
        mask_full = np.asarray(Image.open(d / "mask1.png")) > 0
        h, w = A.shape[:2]
        yy, xx = np.indices((h, w))
        oy = np.clip(np.round((yy + 0.5) / s - 0.5).astype(int), 0, gt_full.shape[0] - 1)
        ox = np.clip(np.round((xx + 0.5) / s - 0.5).astype(int), 0, gt_full.shape[1] - 1)
        g = gt_full[oy, ox]
        valid = (np.abs(g).max(-1) < 1e9) & mask_full[oy, ox]
        sx, sy = size_b[0] / b.size[0], size_b[1] / b.size[1]
        gx = (ox + g[..., 0] + 0.5) * sx - 0.5 - xx
        gy = (oy + g[..., 1] + 0.5) * sy - 0.5 - yy
        res = sift_flow(A, B)
        ok_sf = np.mean(np.hypot(res.flow[0] - gx, res.flow[1] - gy)[valid] < 5)
        ok_zero = np.mean(np.hypot(gx, gy)[valid] < 5)
        assert ok_sf > ok_zero, (d, ok_sf, ok_zero)
        assert ok_sf > 0.45, (d, ok_sf)  # measured 0.55–0.97 on the four car pairs


# ----------------------------------------------------------------------------- batch + command
def test_batch_cache_resume_and_parallel(tmp_path):
    imgs = [_texture(48, 48, seed=10 + i) for i in range(3)]
    paths = []
    for i, im in enumerate(imgs):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(im).save(p)
        paths.append(p)
    shifted = np.roll(imgs[0], (2, 3), axis=(0, 1))
    pairs = [(paths[0], paths[1]), (paths[1], paths[2]), (imgs[0], lambda: shifted)]
    out = tmp_path / "out"
    res = compute_sift_flow_batch(pairs, out, workers=2, size=48, progress=False)
    assert len(res) == 3 and all(p.is_file() for p in res)
    assert len(set(res)) == 3
    index = json.loads((out / "index.json").read_text())
    assert [e["file"] for e in index["pairs"]] == [p.name for p in res]
    direct = sift_flow(imgs[0], shifted)
    loaded = load_sift_flow(res[2])
    np.testing.assert_array_equal(loaded.flow, direct.flow)
    np.testing.assert_allclose(loaded.cost, direct.cost)
    assert loaded.energy == pytest.approx(direct.energy)
    # resume: nothing is recomputed (files untouched); no temporary files left behind
    mtimes = [p.stat().st_mtime_ns for p in res]
    os.remove(res[1])
    res2 = compute_sift_flow_batch(pairs, out, workers=1, size=48, progress=False)
    assert res2 == res and res2[1].is_file()
    assert [res2[0].stat().st_mtime_ns, res2[2].stat().st_mtime_ns] == [mtimes[0], mtimes[2]]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    # other parameters -> other cache files
    res3 = compute_sift_flow_batch(pairs[:1], out, workers=1, size=40, progress=False)
    assert res3[0] != res[0] and load_sift_flow(res3[0]).flow.shape == (2, 40, 40)


def test_batch_bad_files(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(_texture(32, 32)).save(good)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="corrupt.png"):
        compute_sift_flow_batch([(good, corrupt)], tmp_path / "o", workers=1, progress=False)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        compute_sift_flow_batch([(good, tmp_path / "missing.png")], tmp_path / "o", workers=1,
                                progress=False)
    bad_npz = tmp_path / "bad.npz"
    bad_npz.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.npz"):
        load_sift_flow(bad_npz)


def test_command(tmp_path, capsys):
    from cyclecorr.commands import siftflow_cmd

    for i in range(2):
        Image.fromarray(_texture(40, 40, seed=20 + i)).save(tmp_path / f"{i}.png")
    (tmp_path / "pairs.txt").write_text("# a b\n0.png 1.png\n1.png, 0.png\n")
    parser = argparse.ArgumentParser()
    siftflow_cmd.add_arguments(parser)
    args = parser.parse_args(["--pairs", str(tmp_path / "pairs.txt"), "--out",
                              str(tmp_path / "o"), "--workers", "1", "--size", "32",
                              "--no-progress"])
    assert siftflow_cmd.run(args) == 0
    assert len(list((tmp_path / "o").glob("*.npz"))) == 2
    assert "wrote 2 result(s)" in capsys.readouterr().out
    (tmp_path / "bad.txt").write_text("only_one.png\n")
    from cyclecorr.cli import main

    assert main(["siftflow", "--pairs", str(tmp_path / "bad.txt"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "bad.txt:1" in capsys.readouterr().err


# ----------------------------------------------------------------------------- guided SIFT flow
def _shifted_crops(data_dir):
    """Two 128×128 crops of one photo: b(p + (−30, 20)) = a(p); the overlap where that holds."""
    p = data_dir / "real" / "tss" / "JODS" / "car_03_04" / "image1.png"
    if not p.is_file():
        pytest.skip(f"missing {p}")
    big = np.asarray(Image.open(p).convert("RGB").resize((256, 192), Image.BILINEAR))
    return big[30:158, 40:168], big[10:138, 70:198], (slice(0, 108), slice(30, 128))


def test_guided_recovers_translation_from_a_rough_guide(data_dir):
    """Started at level 1 within ±3 (±6 px at 128) of a guide that is wrong by a smooth field
    of up to 5 px, the search lands on the exact shift; from a zero guide it cannot reach it."""
    a, b, overlap = _shifted_crops(data_dir)
    yy, xx = np.indices((128, 128), dtype=np.float64)
    err = np.stack([5 * np.sin(xx / 20.0), -4 * np.cos(yy / 25.0)])
    guide = np.stack([np.full((128, 128), -30.0), np.full((128, 128), 20.0)]) + err
    res = sift_flow(a, b, init_flow=guide, init_level=1, init_window=3)
    assert res.flow.shape == (2, 128, 128) and len(res.energy_per_level) == 2  # levels 1 and 0
    ok = (res.flow[0] == -30) & (res.flow[1] == 20)
    assert ok[overlap].mean() > 0.95
    far = sift_flow(a, b, init_flow=np.zeros((2, 128, 128)), init_level=1, init_window=3)
    assert ((far.flow[0] == -30) & (far.flow[1] == 20))[overlap].mean() < 0.05
    # a guide above the coarsest level starts at the coarsest: every level runs
    top = sift_flow(a, b, init_flow=guide, init_level=9, init_window=3)
    assert len(top.energy_per_level) == len(sift_flow(a, b).energy_per_level)


def test_guided_window_zero_returns_the_rounded_guide():
    a = _texture(40, 48, seed=7)
    b = _texture(40, 48, seed=8)
    rs = np.random.RandomState(0)
    guide = rs.uniform(-6, 6, size=(2, 40, 48))
    res = sift_flow(a, b, init_flow=guide, init_level=0, init_window=0)
    np.testing.assert_array_equal(res.flow, np.round(guide))
    # at level 1, window 0 there and 0 at level 0 (params.window): the 2×2 mean, halved,
    # rounded, then doubled and rounded back up by the usual upsampling
    res1 = sift_flow(a, b, SiftFlowParams(window=0), init_flow=np.full((2, 40, 48), 6.0),
                     init_level=1, init_window=0)
    assert np.all(res1.flow == 6.0)


def test_guided_stop_level_upsamples_the_coarser_search(data_dir):
    """``stop_level=1``: the finest level is not searched; the half-resolution flow and cost are
    upsampled bilinearly (a constant flow exactly), and an even shift is still found exactly."""
    a = _texture(40, 48, seed=7)
    b = _texture(40, 48, seed=8)
    res = sift_flow(a, b, SiftFlowParams(window=0), init_flow=np.full((2, 40, 48), 8.0),
                    init_level=2, init_window=0, stop_level=1)
    assert res.flow.shape == (2, 40, 48) and res.cost.shape == (40, 48)
    assert len(res.energy_per_level) == 2 and np.all(res.flow == 8.0)
    a, b, overlap = _shifted_crops(data_dir)
    guide = np.stack([np.full((128, 128), -27.0), np.full((128, 128), 23.0)])
    half = sift_flow(a, b, init_flow=guide, init_level=2, init_window=4, stop_level=1)
    ok = (half.flow[0] == -30) & (half.flow[1] == 20)
    assert ok[overlap].mean() > 0.9
    with pytest.raises(ValueError, match="stop_level"):
        sift_flow(a, b, init_flow=guide, stop_level=-1)


def test_guided_different_sizes_guide_in_b_pixels():
    a = _texture(80, 96, seed=5)
    b0 = np.roll(a, (3, 5), axis=(0, 1))  # b0(p + (5, 3)) = a(p)
    b = np.asarray(Image.fromarray(b0).resize((120, 100), Image.BILINEAR))  # b is b0 ×1.25
    py, px = np.indices((80, 96), dtype=np.float64)
    gt = np.stack([(px + 5 + 0.5) * 1.25 - 0.5 - px, (py + 3 + 0.5) * 1.25 - 0.5 - py])
    res = sift_flow(a, b, init_flow=gt + np.array([4.0, -3.0])[:, None, None], init_level=1,
                    init_window=3)
    epe = np.hypot(*(_interior(res.flow) - _interior(gt)))
    assert epe.mean() < 1.0, epe.mean()


def test_guided_bad_guide_raises():
    a = _texture(32, 32, seed=1)
    with pytest.raises(ValueError, match="shape"):
        sift_flow(a, a, init_flow=np.zeros((2, 16, 32)))
    bad = np.zeros((2, 32, 32))
    bad[0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sift_flow(a, a, init_flow=bad)
    with pytest.raises(ValueError, match="≥ 0"):
        sift_flow(a, a, init_flow=np.zeros((2, 32, 32)), init_window=-1)


@pytest.mark.parametrize("shape", [(20, 17, 5), (9, 8, 1), (2, 3, 4), (1, 1, 2), (33, 40, 128)])
def test_pyramid_downsample_is_a_gaussian_then_2x2_mean(shape):
    """The pyramid's reduction (row-by-row kernel) against the formula in numpy, float64: a 5-tap
    Gaussian (σ = 0.67, edges replicated) along x and y, then the mean of each 2×2 block (the last
    row/column repeated for odd sizes)."""
    from cyclecorr.siftflow import _bp

    rs = np.random.RandomState(sum(shape))
    img = (rs.rand(*shape) * 255).astype(np.float32)
    g = np.exp(-0.5 * (np.arange(-2, 3) / 0.67) ** 2)
    g /= g.sum()
    h, w, _ = shape
    x = img.astype(np.float64)
    sx = sum(g[t] * x[:, np.clip(np.arange(w) + t - 2, 0, w - 1)] for t in range(5))
    sm = sum(g[t] * sx[np.clip(np.arange(h) + t - 2, 0, h - 1)] for t in range(5))
    ys, xs = np.arange(0, h, 2), np.arange(0, w, 2)
    y1, x1 = np.minimum(ys + 1, h - 1), np.minimum(xs + 1, w - 1)
    want = 0.25 * (sm[ys][:, xs] + sm[ys][:, x1] + sm[y1][:, xs] + sm[y1][:, x1])
    got = _bp.downsample(img)
    assert got.shape == ((h + 1) // 2, (w + 1) // 2, shape[2]) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
