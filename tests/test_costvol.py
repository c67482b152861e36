"""The cost-volume network (cyclecorr.costvol): the dense-SIFT layer against the numpy reference
and closed-form properties, the correlation operators (peaks at known shifts, float64 gradcheck),
and the network's interface, dtypes and closed-form translation recovery."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from cyclecorr.costvol import (
    dense_sift_liu,
    local_correlation,
    orientation_bands,
    sift_cells,
    sift_descriptors,
    sift_local_correlation,
)
from cyclecorr.siftflow.dense_sift import dense_sift


def _texture(h: int, w: int, seed: int = 0, sigma: float = 1.0, channels: int = 3) -> np.ndarray:
    """A smooth random colour texture ``(h, w, channels)`` on [0, 1] (float64)."""
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random((h, w, channels)), (sigma, sigma, 0))
    img -= img.min()
    return img / img.max()


@pytest.fixture
def one_thread():
    """Run a test of many tiny operations on one torch thread: with two threads on a loaded
    machine each tiny parallel region (replicate padding, unfold, softmax) can wait a scheduler
    slice (~20 ms) for the second thread. Restores the thread count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _as_batch(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]


# --- dense SIFT -------------------------------------------------------------------------------

@pytest.mark.parametrize("channels,cell", [(3, 3), (1, 2)])
def test_dense_sift_liu_equals_the_numpy_reference(channels, cell):
    img = _texture(26, 31, seed=channels, channels=channels)
    ref = dense_sift(img[..., 0] if channels == 1 else img, cell_size=cell)
    out = dense_sift_liu(_as_batch(img), cell_size=cell)[0].permute(1, 2, 0).numpy()
    assert out.shape == ref.shape == (26, 31, 128)
    assert ref.max() > 100  # textured: descriptors near the 255 scale
    np.testing.assert_allclose(out, ref, atol=1e-3)


def test_orientation_bands_rotate_with_the_image():
    """Rotating the image by 90° (torch.rot90, x → y) turns every gradient by −90°: band k of the
    rotated image is band k + 2 of the original at the rotated pixel, borders included."""
    x = _as_batch(_texture(20, 27, seed=3))
    b = orientation_bands(x)
    br = orientation_bands(torch.rot90(x, 1, (2, 3)))
    assert b.shape == (1, 8, 20, 27) and b.amax() > 0.05
    torch.testing.assert_close(br, torch.rot90(b.roll(-2, 1), 1, (2, 3)), atol=1e-12, rtol=0)


def test_orientation_bands_of_a_ramp_fill_the_bands_of_its_direction():
    """A linear ramp I = 0.01·x has gradient (0.01, 0) everywhere: band 0 (θ = 0) holds 0.01 and
    the bands at ±45° hold 0.01·cos(45°)^9; the rest are 0 (edges replicated: no interior
    difference; the two columns at each edge see a clamped derivative)."""
    h, w = 9, 16
    ramp = torch.arange(w, dtype=torch.float64).view(1, 1, 1, w).expand(1, 3, h, w) * 0.01
    b = orientation_bands(ramp)[0, :, :, 2:-2]
    torch.testing.assert_close(b[0], torch.full_like(b[0], 0.01))
    side = 0.01 * np.cos(np.pi / 4) ** 9
    torch.testing.assert_close(b[1], torch.full_like(b[1], side))
    torch.testing.assert_close(b[7], torch.full_like(b[7], side))
    assert b[2:7].abs().max() < 1e-12


def test_sift_descriptors_invariances_and_translation():
    x = _as_batch(_texture(64, 64, seed=5))
    cells = sift_cells(x, (2, 4, 8))
    assert [tuple(c.shape) for c in cells] == [(1, 8, 32, 32), (1, 8, 16, 16), (1, 8, 8, 8)]
    # the coarser cells are the band means over larger blocks
    torch.testing.assert_close(cells[2], torch.nn.functional.avg_pool2d(
        orientation_bands(x.mean(1, keepdim=True)), 8))
    plus = sift_cells(x + 0.3, (2, 4, 8))  # adding a constant changes no gradient
    shifted = sift_cells(torch.roll(x, (16, 16), (2, 3)), (2, 4, 8))
    for stride, c, cp, cs in zip((2, 4, 8), cells, plus, shifted):
        d = sift_descriptors(c)
        n = 64 // stride
        assert d.shape == (1, 128, n, n)
        inner = d.norm(dim=1)[0, 1:-2, 1:-2]  # all 16 cells inside: textured, unit vectors
        assert torch.allclose(inner, torch.ones_like(inner), atol=2e-2)
        torch.testing.assert_close(sift_descriptors(cp), d)
        # a roll by 16 px moves the descriptors by 16 / stride (away from the wrapped edge)
        m = 16 // stride
        ds = sift_descriptors(cs)
        torch.testing.assert_close(ds[..., m + 2:n - 3, m + 2:n - 3],
                                   d[..., 2:n - m - 3, 2:n - m - 3], atol=1e-6, rtol=0)
    # a flat image matches nothing: (near-)zero descriptors; low contrast gives short ones
    flat = sift_descriptors(sift_cells(torch.full((1, 3, 32, 32), 0.4), (4,))[0])
    assert flat.norm(dim=1).max() < 1e-3
    faint = sift_descriptors(sift_cells(0.5 + 1e-4 * x, (4,))[0]).norm(dim=1)
    assert 0.01 < faint.median() < 0.5
    # half-resolution gradients: same shapes; colour: the channel of largest gradient
    half = sift_cells(x, (2, 4), input_stride=2)
    assert [tuple(c.shape) for c in half] == [(1, 8, 32, 32), (1, 8, 16, 16)]
    torch.testing.assert_close(sift_cells(x, (1,), colour=True)[0], orientation_bands(x))
    with pytest.raises(ValueError, match="multiple of the previous"):
        sift_cells(x, (4, 6))


def test_sift_local_correlation_is_the_descriptors_local_correlation():
    g = torch.Generator().manual_seed(3)
    ca = torch.rand(2, 8, 9, 11, generator=g, dtype=torch.float64)
    cb = torch.rand(2, 8, 9, 11, generator=g, dtype=torch.float64)
    cb[:, :, :3, :4] = 0  # a flat corner: zero descriptors, similarity 0
    ref = local_correlation(sift_descriptors(ca), sift_descriptors(cb), 2)
    out = sift_local_correlation(ca, cb, 2)
    assert out.shape == (2, 25, 9, 11)
    torch.testing.assert_close(out, ref)


# --- correlation operators --------------------------------------------------------------------

def _shifted(f: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """``g(x + dx, y + dy) = f(x, y)`` (zeros where nothing lands)."""
    g = torch.zeros_like(f)
    h, w = f.shape[-2:]
    ys, yd = slice(max(0, -dy), min(h, h - dy)), slice(max(0, dy), min(h, h + dy))
    xs, xd = slice(max(0, -dx), min(w, w - dx)), slice(max(0, dx), min(w, w + dx))
    g[..., yd, xd] = f[..., ys, xs]
    return g


def _unit_features(b, c, h, w, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(b, c, h, w, generator=g, dtype=dtype), dim=1)


def _local_correlation_reference(a, b, r):
    h, w = a.shape[-2:]
    bp = torch.nn.functional.pad(b, (r, r, r, r))
    return torch.stack([(a * bp[:, :, dy:dy + h, dx:dx + w]).sum(1)
                        for dy in range(2 * r + 1) for dx in range(2 * r + 1)], 1)


@pytest.mark.parametrize("dx,dy", [(3, -2), (-5, 0), (0, 7)])
def test_global_correlation_peaks_at_the_shift_up_to_the_border(dx, dy):
    from cyclecorr.costvol import global_correlation

    fa = _unit_features(2, 16, 12, 10, seed=1)
    fb = _shifted(fa, dx, dy)
    corr = global_correlation(fa, fb)
    assert corr.shape == (2, 120, 120)
    best = corr.argmax(-1)  # (B, Ha·Wa) flattened target index
    ys, xs = torch.meshgrid(torch.arange(12), torch.arange(10), indexing="ij")
    inside = ((xs + dx >= 0) & (xs + dx < 10) & (ys + dy >= 0) & (ys + dy < 12)).flatten()
    expect = ((ys + dy) * 10 + xs + dx).flatten()
    assert inside.sum() > 40 and bool((best[:, inside] == expect[inside]).all())
    torch.testing.assert_close(corr[:, inside].amax(-1), torch.ones(2, int(inside.sum())))


@pytest.mark.parametrize("shape,r,tile", [((2, 5, 7, 9), 2, 4), ((1, 3, 16, 16), 3, 8),
                                          ((2, 4, 6, 5), 1, 8)])
def test_local_correlation_equals_the_direct_sum(shape, r, tile):
    from cyclecorr.costvol import local_correlation

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(*shape, generator=g, dtype=torch.float64), torch.randn(
        *shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(local_correlation(a, b, r, tile=tile),
                               _local_correlation_reference(a, b, r))
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (a, b)]
    torch.testing.assert_close(local_correlation(*cl, r, tile=tile),
                               _local_correlation_reference(a, b, r))


@pytest.mark.parametrize("dx,dy", [(2, -3), (-4, 4), (0, 0)])
def test_local_correlation_peaks_at_the_shift_and_reads_zero_outside(dx, dy):
    from cyclecorr.costvol import local_correlation

    r, h, w = 4, 16, 24
    fa = _unit_features(1, 32, h, w, seed=2)
    corr = local_correlation(fa, _shifted(fa, dx, dy), r)
    assert corr.shape == (1, 81, h, w)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    inside = (xs + dx >= 0) & (xs + dx < w) & (ys + dy >= 0) & (ys + dy < h)
    assert bool((corr[0].argmax(0)[inside] == (dy + r) * 9 + dx + r).all())
    torch.testing.assert_close(corr[0].amax(0)[inside], torch.ones(int(inside.sum())))
    # displacement (+r, +r) from the last row/column leaves the map: exactly 0 there
    assert corr[0, -1, -r:, :].abs().max() == 0 and corr[0, -1, :, -r:].abs().max() == 0


def test_kernel_soft_argmax_closed_forms():
    from cyclecorr.costvol import kernel_soft_argmax

    h, w = 11, 13
    q = torch.stack(torch.meshgrid(torch.arange(w, dtype=torch.float64),
                                   torch.arange(h, dtype=torch.float64), indexing="xy"), -1)
    q = q.reshape(-1, 2)  # (h·w, 2), row-major (x, y)
    # a quadratic similarity around a non-integer q0: the product of two Gaussians (precision
    # 2τ from the softmax, 1/σ² from the window at the argmax q*) has its mean at
    # (2τ·q0 + q*/σ²) / (2τ + 1/σ²) (on a grid of unit spacing, up to the sampling error of a
    # Gaussian of standard deviation 0.7 px: < 1e-3)
    q0 = torch.tensor([6.3, 4.8], dtype=torch.float64)
    corr = -((q - q0) ** 2).sum(-1).view(1, 1, -1)
    tau, sigma = 0.5, 1.0
    qs = torch.tensor([6.0, 5.0], dtype=torch.float64)
    expect = (2 * tau * q0 + qs / sigma ** 2) / (2 * tau + 1 / sigma ** 2)
    out = kernel_soft_argmax(corr, h, w, tau, sigma)
    assert out.shape == (1, 1, 2)
    torch.testing.assert_close(out[0, 0], expect, atol=1e-3, rtol=0)
    # two modes far apart: the position stays at the stronger one (a global soft-argmax would
    # land in between)
    corr2 = torch.zeros(1, 1, h * w, dtype=torch.float64)
    corr2[0, 0, 2 * w + 1] = 1.0  # (1, 2)
    corr2[0, 0, 9 * w + 11] = 0.95  # (11, 9)
    out2 = kernel_soft_argmax(corr2, h, w, 20.0, 1.0)
    torch.testing.assert_close(out2[0, 0], torch.tensor([1.0, 2.0], dtype=torch.float64),
                               atol=1e-3, rtol=0)
    glob = torch.softmax(20.0 * corr2, -1) @ q
    assert (glob[0, 0] - torch.tensor([1.0, 2.0], dtype=torch.float64)).norm() > 3


def test_convex_upsample_closed_forms():
    from cyclecorr.costvol import convex_upsample

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 6, generator=g)
    # all weight on the centre neighbour: nearest-neighbour up-sampling
    mask = torch.full((2, 9, 2, 2, 5, 6), -1e4)
    mask[:, 4] = 0
    up = convex_upsample(x, mask.view(2, 36, 5, 6), 2)
    torch.testing.assert_close(up, x.repeat_interleave(2, 2).repeat_interleave(2, 3))
    # a zero mask averages the 3×3 neighbours (edges replicated): a constant stays constant
    c = torch.full((1, 2, 4, 4), 3.5)
    torch.testing.assert_close(convex_upsample(c, torch.zeros(1, 36, 4, 4), 2),
                               torch.full((1, 2, 8, 8), 3.5))
    with pytest.raises(ValueError, match=r"mask must be \(2, 36, 5, 6\)"):
        convex_upsample(x, torch.zeros(2, 9, 5, 6), 2)


@pytest.mark.parametrize("factor", [2, 3])
def test_convex_upsample_cpu_kernel_equals_the_pytorch_operations(factor):
    """The numba kernel (CPU) against :func:`convex_upsample_reference`: values and both
    gradients in float64, a float32 flow with a bfloat16 mask as the decoder passes them, and
    autograd's in-place check."""
    from cyclecorr.costvol import convex_upsample, convex_upsample_reference

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    m = (4 * torch.randn(2, 9 * factor ** 2, 5, 7, generator=g, dtype=torch.float64)
         ).requires_grad_(True)
    up, ref = convex_upsample(x, m, factor), convex_upsample_reference(x, m, factor)
    assert up.shape == (2, 3, 5 * factor, 7 * factor)
    torch.testing.assert_close(up, ref, atol=1e-12, rtol=0)
    w = torch.randn(up.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(up, (x, m), w), torch.autograd.grad(ref, (x, m), w)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    # the decoder's dtypes: float32 values, a bfloat16 mask (channels-last); gradients in each
    xf = x.detach().float().requires_grad_(True)
    mb = m.detach().bfloat16().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    up = convex_upsample(xf, mb, factor)
    assert up.dtype == torch.float32
    torch.testing.assert_close(up, convex_upsample_reference(xf, mb, factor), atol=1e-5, rtol=0)
    gx, gm = torch.autograd.grad(up.square().sum(), (xf, mb))
    assert gx.dtype == torch.float32 and gm.dtype == torch.bfloat16
    y = x.detach().clone().requires_grad_(True)
    z = y * 1.0
    out = convex_upsample(z, m.detach(), factor)
    z.add_(1.0)  # changed after the forward pass read it
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_local_correlation_cpu_kernel_takes_any_layout_and_bfloat16():
    """The numba path (the default on a CPU) on channel slices of a channels-last map (not
    contiguous), and on bfloat16 maps (float32 sums, the result and gradients in bfloat16),
    against the direct sum; the tiled matrix products agree with it."""
    from cyclecorr._corr import correlation_tiled

    g = torch.Generator().manual_seed(5)
    full = torch.randn(2, 12, 9, 11, generator=g, dtype=torch.float64)
    other = torch.randn(2, 12, 9, 11, generator=g, dtype=torch.float64)
    a = full.contiguous(memory_format=torch.channels_last)[:, :7]
    b = other.contiguous(memory_format=torch.channels_last)[:, 2:9]
    assert not a.is_contiguous() and not a.is_contiguous(memory_format=torch.channels_last)
    ref = _local_correlation_reference(a, b, 3)
    torch.testing.assert_close(local_correlation(a, b, 3), ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(correlation_tiled(a, b, 3), ref, atol=1e-12, rtol=0)
    ab, bb = (t.bfloat16().requires_grad_(True) for t in (a, b))
    out = local_correlation(ab, bb, 3)
    assert out.dtype == torch.bfloat16
    exact = _local_correlation_reference(ab.double(), bb.double(), 3)
    # float32 sums of bfloat16 products, rounded once to bfloat16
    torch.testing.assert_close(out.double(), exact, atol=0.05, rtol=0.01)
    ga, gb = torch.autograd.grad(out.float().sum(), (ab, bb))
    assert ga.dtype == gb.dtype == torch.bfloat16
    ad, bd = (t.detach().double().requires_grad_(True) for t in (ab, bb))
    ra, rb = torch.autograd.grad(_local_correlation_reference(ad, bd, 3).sum(), (ad, bd))
    torch.testing.assert_close(ga.double(), ra, atol=0.05, rtol=0.01)
    torch.testing.assert_close(gb.double(), rb, atol=0.05, rtol=0.01)


def test_correlation_and_warp_gradcheck_float64(one_thread):
    from cyclecorr.costvol import (
        convex_upsample,
        kernel_soft_argmax,
        local_correlation,
        warp_features,
    )

    g = torch.Generator().manual_seed(0)

    def rnd(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)

    def check(fn, *args):  # the full Jacobian, numerical vs analytical (small sizes)
        assert torch.autograd.gradcheck(fn, args, fast_mode=False)

    check(lambda a, b: local_correlation(a, b, 1, tile=2), rnd(1, 2, 3, 4), rnd(1, 2, 3, 4))
    # a larger case by random projections (gradcheck's fast mode): tiles, padding, radius 2
    assert torch.autograd.gradcheck(lambda a, b: local_correlation(a, b, 2, tile=4),
                                    (rnd(2, 3, 5, 6), rnd(2, 3, 5, 6)), fast_mode=True)
    temp = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    check(lambda c, t: kernel_soft_argmax(c, 3, 4, t, 1.2), rnd(2, 3, 12), temp)
    # positions kept away from integers and borders: bilinear sampling has kinks there
    flow = (torch.rand(1, 2, 3, 3, generator=g, dtype=torch.float64) * 0.6 + 0.2
            ).requires_grad_(True)
    check(warp_features, rnd(1, 2, 4, 5), flow)
    check(lambda x, m: convex_upsample(x, m, 2), rnd(1, 2, 2, 3), rnd(1, 36, 2, 3))


def test_warp_features_reads_the_target_at_p_plus_flow():
    from cyclecorr.costvol import warp_features

    f = torch.arange(2 * 6 * 8, dtype=torch.float32).view(1, 2, 6, 8)
    flow = torch.zeros(1, 2, 6, 8)
    flow[:, 0], flow[:, 1] = 2.0, -1.0
    out = warp_features(f, flow)
    torch.testing.assert_close(out[..., 1:, :6], f[..., :-1, 2:])
    assert out[..., 0, :].abs().max() < 1e-5 and out[..., :, 6:].abs().max() == 0  # outside: 0


# --- the network ------------------------------------------------------------------------------

def _translated_pair(dx: int, dy: int, size: int = 128, seed: int = 0):
    """A textured source and its target moved so that ``src(p) = tgt(p − (dx, dy))``: the true
    flow is ``(−dx, −dy)`` (cut from one larger texture, so both sides have real content)."""
    m = 40
    big = _as_batch(_texture(size + 2 * m, size + 2 * m, seed=seed, sigma=1.5)).float()
    src = big[..., m:m + size, m:m + size]
    tgt = big[..., m + dy:m + dy + size, m + dx:m + dx + size]
    return src.contiguous(), tgt.contiguous()


def _interior(dx: int, dy: int, size: int = 128, margin: int = 16) -> torch.Tensor:
    """Source pixels at least ``margin`` from the border whose match is too."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    ok = (xs >= margin) & (xs < size - margin) & (ys >= margin) & (ys < size - margin)
    return ok & (xs - dx >= margin) & (xs - dx < size - margin) & (ys - dy >= margin) & (
        ys - dy < size - margin)


@pytest.mark.parametrize("features", ["sift-only", "sift+random", "random-only"])
def test_untrained_network_recovers_a_translation(features):
    """An untrained network outputs the kernel soft-argmax of the 1/8 correlation, up-sampled:
    for a translation by whole 1/8 cells the correlation peaks exactly at it (the features of
    the two images are the same up to the shift away from the borders), so the flow equals the
    translation over the interior. ``sift-only``: the learned part's weight set to ~0;
    ``random-only``: no SIFT, the randomly initialised pyramid as fixed features."""
    from cyclecorr.costvol import CostVolumeNet

    torch.manual_seed(0)
    net = CostVolumeNet(sift=features != "random-only").eval()
    if features == "sift-only":
        with torch.no_grad():
            net.feature_weight.fill_(1e-3)
    for dx, dy in [(8, -16), (-24, 8)]:
        src, tgt = _translated_pair(dx, dy)
        with torch.no_grad():
            flow = net(src, tgt)["flow"][0]
        err = (flow - torch.tensor([-dx, -dy], dtype=flow.dtype).view(2, 1, 1)).norm(dim=0)
        err = err[_interior(dx, dy)]
        if features == "random-only":  # random features: a weaker, smoother peak
            assert err.median() < 0.5 and (err < 1).float().mean() > 0.9, (dx, dy)
        else:
            assert err.median() < 0.1 and (err < 1).float().mean() > 0.99, (dx, dy)


def test_config_validation_and_round_trip():
    import json

    from cyclecorr.costvol import CostVolumeConfig, CostVolumeNet

    cfg = CostVolumeConfig(pyramid_channels=[8, 16, 24], radius=[1, 2, 2], norm="instance")
    d = json.loads(json.dumps(cfg.to_dict()))  # as a model file stores it
    assert CostVolumeConfig(**d) == cfg and cfg.pyramid_channels == (8, 16, 24)
    for bad, msg in [(dict(image_size=100), "multiple of 16"), (dict(norm="layer"), "norm"),
                     (dict(radius=(1, 2)), "3 values"), (dict(sift_levels=0), "sift_levels"),
                     (dict(pyramid_channels=(8, 0, 8)), "positive"),
                     (dict(kernel_radius=0), "kernel_radius"), (dict(width=0), "width")]:
        with pytest.raises(ValueError, match=msg):
            CostVolumeConfig(**bad)
    net = CostVolumeNet(image_size=64)
    assert net.grown_keys() == [] and net.config.image_size == 64
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\), got \(1, 3, 32, 32\)"):
        net(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="batch sizes differ"):
        net(torch.rand(1, 3, 64, 64), torch.rand(2, 3, 64, 64))


def _perturbed_net(seed=0, **kw):
    """A network whose zero-initialised heads are given small random weights (so that every
    layer shapes the output)."""
    from cyclecorr.costvol import CostVolumeNet

    torch.manual_seed(seed)
    net = CostVolumeNet(**kw)
    with torch.no_grad():
        for d in net.decoders:
            for m in (d.head, d.mask):
                if m is not None:
                    m.weight.normal_(std=0.02)
                    m.bias.normal_(std=0.02)
    return net


def test_interface_halves_equal_forward_and_sizes(one_thread):
    net = _perturbed_net(image_size=64).eval()
    g = torch.Generator().manual_seed(1)
    src, tgt = torch.rand(3, 3, 64, 64, generator=g), torch.rand(3, 3, 64, 64, generator=g)
    with torch.no_grad():
        out = net(src, tgt)
        assert out["flow"].shape == (3, 2, 64, 64) and out["flow"].dtype == torch.float32
        assert out["matchability"].shape == (3, 1, 64, 64)
        torch.testing.assert_close(out["matchability"], torch.sigmoid(out["matchability_logits"]))
        assert out["flow"].abs().max() > 0 and out["matchability"].std() > 0
        halves = net.encode_pair(src, tgt)
        dec = net.decode(*halves)
        for k in out:
            torch.testing.assert_close(dec[k], out[k])
        torch.testing.assert_close(net.decode_flow(*halves), out["flow"])
        torch.testing.assert_close(net.decode_matchability(*halves), out["matchability_logits"])
        # encode_levels is batch-first: one pass over four images, sliced per image
        code, skips = net.encode_levels(torch.cat((src, tgt, tgt, src)))
        assert code.shape[-1] == 8 and [s.shape[-1] for s in skips] == [16, 32]
        lv = [t.split(3) for t in (code, *skips)]
        f = net.decode_flow(lv[0][2], lv[0][3], (lv[1][2], lv[2][2]), (lv[1][3], lv[2][3]))
        torch.testing.assert_close(f, net(tgt, src)["flow"])
        # any multiple of 16, same weights
        for size in (128, 192, 64):
            net.set_input_size(size)
            o = net(torch.rand(1, 3, size, size), torch.rand(1, 3, size, size))
            assert o["flow"].shape == (1, 2, size, size) and torch.isfinite(o["flow"]).all()


def test_bf16_autocast_channels_last_and_determinism(one_thread):
    net = _perturbed_net(image_size=64).eval()
    src, tgt = _translated_pair(8, 0, size=64)
    with torch.no_grad():
        ref = net(src, tgt)
        cl = net.to(memory_format=torch.channels_last)(
            src.contiguous(memory_format=torch.channels_last),
            tgt.contiguous(memory_format=torch.channels_last))
        for k in ref:
            torch.testing.assert_close(cl[k], ref[k], atol=1e-3, rtol=1e-3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(src, tgt)
    assert all(v.dtype == torch.float32 for v in low.values())
    # bf16 features: the flow of a clean translation stays within a fraction of a pixel
    inner = _interior(-8, 0, size=64, margin=12)
    assert (low["flow"] - ref["flow"]).norm(dim=1)[0][inner].median() < 0.25
    again = _perturbed_net(image_size=64).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(src, tgt)["flow"], ref["flow"], rtol=0, atol=0)


@pytest.mark.parametrize("kw", [dict(), dict(sift=False, norm="batch"),
                                dict(sift_levels=3, norm="instance", sift_input_stride=1),
                                dict(coarse_init="zero", local_argmax=True)])
def test_every_parameter_gets_a_gradient(kw, one_thread):
    """A flow loss + a matchability loss reach every parameter (no dead branch). The heads are
    perturbed first: a zero-initialised last layer passes no gradient back through itself."""
    net = _perturbed_net(image_size=64, **kw).train()
    g = torch.Generator().manual_seed(2)
    src, tgt = torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    out = net(src, tgt)
    target = torch.randn(2, 2, 64, 64, generator=g)
    loss = (out["flow"] - target).abs().mean() + torch.nn.functional.binary_cross_entropy(
        out["matchability"], torch.rand(2, 1, 64, 64, generator=g))
    loss.backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert not dead


def test_flops_count_the_convolutions_and_correlations():
    from cyclecorr.costvol import CostVolumeNet

    net = CostVolumeNet()
    f = net.flops_by_part()
    c1, c2, c3 = net.config.pyramid_channels
    # the pyramid by hand: two 3×3 convolutions per level at 64, 32, 16 pixels
    enc = 2 * 9 * (64 * 64 * (3 * c1 + c1 * c1) + 32 * 32 * (c1 * c2 + c2 * c2)
                   + 16 * 16 * (c2 * c3 + c3 * c3))
    assert f["encoder"] == enc
    assert f["correlation"] >= 2 * 256 * 256 * (c3 + 128)  # at least the global product
    assert net.flops_per_pair() == 2 * enc + f["correlation"] + f["decoder"]
    assert f["flow_decoder"] == f["match_decoder"] == f["correlation"] + f["decoder"]
    # the global correlation grows with the square of the pixel count, the rest linearly
    big = CostVolumeNet(image_size=256).flops_by_part()
    assert big["encoder"] == 4 * enc and big["correlation"] > 4 * f["correlation"]


@pytest.mark.parametrize("extra", [{}, {"local_argmax": True, "sift_levels": 3}])
def test_model_file_round_trip_builds_the_cost_volume_network(tmp_path, extra):
    """A trained cost-volume model file names its architecture and loads back (through the one
    network factory and the Matcher) to the same function, with or without the local soft-argmax
    refinement; a paper model file carries no arch."""
    import numpy as np

    from cyclecorr import Matcher
    from cyclecorr.checkpoint import load_model, read_metadata, save_model
    from cyclecorr.costvol import CostVolumeConfig, CostVolumeNet
    from cyclecorr.model import CorrespondenceNet, NetConfig, build_network

    torch.manual_seed(3)
    net = build_network({"arch": "costvol", "image_size": 64, "width": 0.5, **extra})
    assert isinstance(net, CostVolumeNet) and net.config == CostVolumeConfig(image_size=64,
                                                                               width=0.5, **extra)
    for p in net.parameters():  # non-zero heads, so the output depends on every weight
        p.data.add_(0.01 * torch.randn_like(p))
    save_model(tmp_path / "cv.safetensors", net)
    assert read_metadata(tmp_path / "cv.safetensors")["net"]["arch"] == "costvol"
    again, _ = load_model(tmp_path / "cv.safetensors")
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = net.eval()(x, y), again(x, y)
    assert torch.equal(a["flow"], b["flow"]) and torch.equal(a["matchability"], b["matchability"])
    m = Matcher.from_checkpoint(tmp_path / "cv.safetensors")
    img = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    assert isinstance(m.net, CostVolumeNet) and m.match(img, img)["flow"].shape == (50, 70, 2)
    save_model(tmp_path / "paper.safetensors", CorrespondenceNet(NetConfig(width=0.125)))
    assert "arch" not in read_metadata(tmp_path / "paper.safetensors")["net"]
    with pytest.raises(ValueError, match="unknown field"):
        build_network({"arch": "costvol", "skips": "corr"})
    with pytest.raises(ValueError, match="architecture"):
        build_network({"arch": "nosuch"})


def test_training_config_selects_the_architecture():
    from cyclecorr.costvol import CostVolumeConfig
    from cyclecorr.model import NetConfig
    from cyclecorr.train.config import load_config
    from cyclecorr.train.loop import _training_part

    cfg = load_config("costvol")
    assert cfg.arch == "costvol" and isinstance(cfg.network(), CostVolumeConfig)
    paper = load_config("cpu")
    assert paper.arch == "paper" and isinstance(paper.network(), NetConfig)
    # a paper run's configuration from before the architecture option resumes unchanged; the
    # cost-volume section does not count for it, and another architecture does
    old = paper.to_dict()
    old.pop("arch"), old.pop("costvol")
    assert _training_part(old) == _training_part(paper.to_dict())
    assert _training_part(load_config("cpu", ["costvol.width=2"]).to_dict()) == \
        _training_part(paper.to_dict())
    assert _training_part(load_config("cpu", ["arch=costvol"]).to_dict()) != \
        _training_part(paper.to_dict())
    # options added later count at their defaults in a run from before them, not otherwise
    cv = cfg.to_dict()
    older = json.loads(json.dumps(cv))
    for k in ("pair_weight", "supervised_truncation", "direct_weight"):
        older["loss"].pop(k)
    older["costvol"].pop("coarse_init")
    assert _training_part(older) == _training_part(cv)
    assert _training_part(older) != _training_part(
        load_config("costvol", ["loss.supervised_truncation=40"]).to_dict())
    with pytest.raises(ValueError, match="arch"):
        load_config("cpu", ["arch=nosuch"])


def test_zero_coarse_start_outputs_the_zero_flow_untrained():
    """With coarse_init="zero" an untrained network predicts the zero flow (as the paper
    network does) and matchability 0.5, while its layers have the same shapes as with "argmax";
    a trained head moves pixels."""
    from cyclecorr.costvol import CostVolumeConfig, CostVolumeNet

    torch.manual_seed(0)
    net = CostVolumeNet(CostVolumeConfig(image_size=64, coarse_init="zero")).eval()
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = net(x, y)
    assert float(out["flow"].abs().max()) == 0.0
    assert torch.allclose(out["matchability"], torch.full_like(out["matchability"], 0.5))
    other = CostVolumeNet(CostVolumeConfig(image_size=64))
    assert {k: v.shape for k, v in net.state_dict().items()} == \
        {k: v.shape for k, v in other.state_dict().items()}
    for p in net.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    with torch.no_grad():
        assert float(net(x, y)["flow"].abs().max()) > 0
    with pytest.raises(ValueError, match="coarse_init"):
        CostVolumeConfig(coarse_init="middle")


def test_local_soft_argmax_closed_forms_and_gradcheck(one_thread):
    """A window peaked at one displacement gives that displacement (sharp temperature); a flat
    window gives zero; the channel order is local_correlation's, so the soft-argmax of a
    feature map against its shifted copy is the shift; float64 gradcheck."""
    from cyclecorr.costvol import local_soft_argmax

    r = 2
    corr = torch.zeros(1, 25, 3, 4, dtype=torch.float64)
    corr[:, (1 + r) * 5 + (-2 + r)] = 1.0  # dy = 1, dx = -2
    d = local_soft_argmax(corr, r, 100.0)
    assert torch.allclose(d[:, 0], torch.full_like(d[:, 0], -2.0), atol=1e-6)
    assert torch.allclose(d[:, 1], torch.full_like(d[:, 1], 1.0), atol=1e-6)
    assert float(local_soft_argmax(torch.zeros(2, 25, 3, 3), r, 5.0).abs().max()) < 1e-6
    f = torch.nn.functional.normalize(
        torch.randn(1, 16, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0)),
        dim=1)
    shifted = torch.roll(f, shifts=(1, -2), dims=(2, 3))  # shifted(y, x) = f(y - 1, x + 2)
    d = local_soft_argmax(local_correlation(f, shifted, r), r, 50.0)
    inner = d[0, :, 3:-3, 3:-3]
    assert torch.allclose(inner[0], torch.full_like(inner[0], -2.0), atol=1e-3)
    assert torch.allclose(inner[1], torch.full_like(inner[1], 1.0), atol=1e-3)
    c = torch.randn(1, 9, 2, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c, t: local_soft_argmax(c, 1, t), (c, t))
    with pytest.raises(ValueError, match=r"\(B, 9, H, W\)"):
        local_soft_argmax(torch.zeros(1, 25, 2, 2), 1, 1.0)


def test_local_argmax_refinement_locks_onto_a_sub_cell_shift_untrained(one_thread):
    """With ``local_argmax`` the refinement levels move each pixel to its best local match
    before anything is learnt: from the zero coarse start, a 6-px translation (less than one
    1/8 cell) is recovered over the interior, where the plain network outputs the zero flow.
    At gate 0 the option changes nothing (the decoders' heads start at zero)."""
    from cyclecorr.costvol import CostVolumeConfig, CostVolumeNet

    torch.manual_seed(0)
    src, tgt = _translated_pair(-6, 0)  # flow +6 in x
    inner = _interior(-6, 0)
    plain = CostVolumeNet(CostVolumeConfig(coarse_init="zero")).eval()
    lock = CostVolumeNet(CostVolumeConfig(coarse_init="zero", local_argmax=True,
                                          sift_levels=3)).eval()
    off = CostVolumeNet(CostVolumeConfig(coarse_init="zero", local_argmax=True,
                                         argmax_gate=0.0)).eval()
    with torch.no_grad():
        f_plain, f_lock, f_off = (n(src, tgt)["flow"][0] for n in (plain, lock, off))
    assert float(f_plain.abs().max()) == 0.0 and float(f_off.abs().max()) == 0.0
    err = (f_lock - torch.tensor([6.0, 0.0]).view(2, 1, 1)).norm(dim=0)[inner]
    assert err.median() < 0.5 and (err < 1).float().mean() > 0.8
    with pytest.raises(ValueError, match="local_argmax"):
        CostVolumeConfig(local_argmax=1)
