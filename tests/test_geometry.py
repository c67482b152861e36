"""Closed-form tests of cyclecorr.geometry: translations, affine maps, identity, gradcheck."""
from __future__ import annotations

import pytest
import torch

from cyclecorr.geometry import (
    affine_flow,
    compose_flow,
    compose_matchability,
    inside_mask,
    pixel_grid,
    resample_flow,
    sample,
    transfer_keypoints,
    warp,
)

H, W = 24, 32


def const_flow(dx, dy, h=H, w=W, dtype=torch.float64):
    f = torch.zeros(1, 2, h, w, dtype=dtype)
    f[:, 0] = dx
    f[:, 1] = dy
    return f


def affine(a11, a12, a21, a22, tx, ty, dtype=torch.float64):
    return torch.tensor([[a11, a12, tx], [a21, a22, ty]], dtype=dtype)


def interior(margin, h=H, w=W):
    m = torch.zeros(1, 1, h, w, dtype=torch.bool)
    m[..., margin:h - margin, margin:w - margin] = True
    return m


def test_pixel_grid_convention():
    g = pixel_grid(3, 4)
    assert g.shape == (1, 2, 3, 4)
    assert g[0, 0, 2, 3] == 3 and g[0, 1, 2, 3] == 2  # channel 0 = x, channel 1 = y


def test_sample_integer_points_reads_exact_pixels():
    field = torch.arange(H * W, dtype=torch.float64).view(1, 1, H, W)
    pts = torch.tensor([[5.0, 7.0], [0.0, 0.0], [W - 1.0, H - 1.0]], dtype=torch.float64)
    out = sample(field, pts.T.reshape(1, 2, 3, 1))
    expect = torch.tensor([7 * W + 5, 0, H * W - 1], dtype=torch.float64)
    assert torch.allclose(out.flatten(), expect)


def test_sample_bilinear_midpoint():
    field = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    field[0, 0] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    pt = torch.tensor([0.5, 0.5], dtype=torch.float64).view(1, 2, 1, 1)
    assert sample(field, pt).item() == pytest.approx(1.5)


def test_warp_translation_matches_shifted_image():
    torch.manual_seed(0)
    img_b = torch.rand(1, 3, H, W, dtype=torch.float64)
    out = warp(img_b, const_flow(3, -2))
    # out(x, y) = b(x + 3, y - 2)
    assert torch.allclose(out[..., 2:, :W - 3], img_b[..., :H - 2, 3:])
    # outside the image reads zeros with padding="zeros"
    assert torch.all(out[..., :, W - 2:] == 0)


def test_compose_two_translations():
    f = compose_flow(const_flow(2.5, -1.0), const_flow(-4.0, 3.0))
    m = interior(6)
    assert torch.allclose(f[:, 0:1][m], torch.full_like(f[:, 0:1][m], -1.5))
    assert torch.allclose(f[:, 1:2][m], torch.full_like(f[:, 1:2][m], 2.0))


def test_compose_with_identity_is_identity():
    torch.manual_seed(1)
    f = torch.randn(2, 2, H, W, dtype=torch.float64) * 3
    zero = torch.zeros_like(f)
    assert torch.allclose(compose_flow(f, zero), f)
    assert torch.allclose(compose_flow(zero, f), f)


def test_compose_two_affine_maps_equals_product():
    a = affine(1.05, 0.1, -0.05, 0.95, 1.0, -0.5)
    b = affine(0.9, -0.08, 0.06, 1.1, -0.7, 1.2)
    flow_ab, flow_bc = affine_flow(a, H, W), affine_flow(b, H, W)
    # q_c = B(A p): composed matrix
    A3 = torch.cat([a, torch.tensor([[0, 0, 1.0]], dtype=a.dtype)])
    B3 = torch.cat([b, torch.tensor([[0, 0, 1.0]], dtype=b.dtype)])
    expect = affine_flow((B3 @ A3)[:2], H, W)
    got = compose_flow(flow_ab, flow_bc)
    # the affine flow is linear in p, so bilinear reading is exact wherever A p stays inside
    q = pixel_grid(H, W, dtype=torch.float64) + flow_ab
    ok = inside_mask(q, H, W).bool().expand(-1, 2, -1, -1)
    assert ok.float().mean() > 0.6
    assert torch.allclose(got[ok], expect[ok], atol=1e-9)


def test_round_trip_inverse_affine_is_zero():
    a = affine(1.1, 0.05, -0.03, 0.92, 1.5, -1.0)
    A3 = torch.cat([a, torch.tensor([[0, 0, 1.0]], dtype=a.dtype)])
    a_inv = torch.linalg.inv(A3)[:2]
    f = compose_flow(affine_flow(a, H, W), affine_flow(a_inv, H, W))
    m = interior(5).expand(-1, 2, -1, -1)
    assert f[m].abs().max() < 1e-9


def test_matchability_zero_where_flow_leaves_image():
    match_bc = torch.ones(1, 1, H, W, dtype=torch.float64)
    flow = const_flow(10.0, 0.0)
    m = compose_matchability(None, match_bc, flow)
    assert torch.all(m[..., :, W - 10:] == 0)  # x + 10 > W - 1
    assert torch.all(m[..., :, :W - 10] == 1)
    # explicit match_ab multiplies
    half = torch.full_like(match_bc, 0.5)
    assert torch.allclose(compose_matchability(half, match_bc, flow), 0.5 * m)


def test_matchability_reads_target_map():
    match_bc = torch.zeros(1, 1, H, W, dtype=torch.float64)
    match_bc[..., :, 10:] = 1.0
    m = compose_matchability(None, match_bc, const_flow(4.0, 0.0))
    assert torch.all(m[..., :, 6:W - 4] == 1)
    assert torch.all(m[..., :, :6] == 0)


def test_transfer_keypoints_reads_flow_bilinearly():
    a = affine(1.0, 0.0, 0.0, 1.0, 2.0, -3.0)
    flow = affine_flow(a, H, W)[0]
    kps = torch.tensor([[4.25, 5.5], [10.0, 12.75]], dtype=torch.float64)
    out = transfer_keypoints(kps, flow)
    assert torch.allclose(out, kps + torch.tensor([2.0, -3.0], dtype=torch.float64))
    a2 = affine(1.2, 0.1, 0.0, 0.9, 0.0, 0.0)
    out2 = transfer_keypoints(kps, affine_flow(a2, H, W))
    expect = kps @ a2[:, :2].T
    assert torch.allclose(out2, expect, atol=1e-9)


def test_resample_flow_identity_between_sizes():
    # zero flow between two same-size 16x16 resized images of a 40x30 source and 20x60 target:
    # every source point maps to the same relative position in the target
    flow = torch.zeros(1, 2, 16, 16, dtype=torch.float64)
    out = resample_flow(flow, (30, 40), (60, 20))
    grid = pixel_grid(30, 40, dtype=torch.float64)
    q = grid + out
    rel_src = (grid + 0.5) / torch.tensor([40.0, 30.0], dtype=torch.float64).view(1, 2, 1, 1)
    rel_tgt = (q + 0.5) / torch.tensor([20.0, 60.0], dtype=torch.float64).view(1, 2, 1, 1)
    assert torch.allclose(rel_src, rel_tgt, atol=1e-9)


def test_rescale_points_maps_edges_and_centres_and_round_trips():
    import numpy as np

    from cyclecorr.geometry import rescale_points

    # a 40×30 image resized to 128×128: its outer edges (−0.5, W − 0.5) land on the new edges,
    # the image centre on the new centre; NaN stays NaN; numpy and torch agree
    scale = np.array([128 / 40, 128 / 30])
    pts = np.array([[-0.5, -0.5], [39.5, 29.5], [19.5, 14.5], [np.nan, 3.0]])
    out = rescale_points(pts, scale)
    assert np.allclose(out[:3], [[-0.5, -0.5], [127.5, 127.5], [63.5, 63.5]])
    assert np.isnan(out[3, 0]) and np.isfinite(out[3, 1])
    back = rescale_points(out, 1 / scale)
    assert np.allclose(back[:3], pts[:3])
    t = rescale_points(torch.from_numpy(pts), torch.from_numpy(scale))
    assert torch.allclose(t[:3], torch.from_numpy(out[:3]))


@pytest.mark.parametrize("bad", [torch.zeros(2, H, W), torch.zeros(1, 3, H, W)])
def test_shape_errors_name_the_shape(bad):
    with pytest.raises(ValueError, match=r"\(.*\)"):
        compose_flow(bad, const_flow(0, 0))


def test_bad_padding_rejected():
    with pytest.raises(ValueError, match="padding"):
        warp(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 4, 4), padding="reflect")


def test_gradcheck_warp_and_compose():
    torch.manual_seed(2)
    h, w = 6, 7
    img = torch.rand(1, 2, h, w, dtype=torch.float64, requires_grad=True)
    # keep sample points away from integer positions (bilinear is not differentiable there)
    flow = (torch.rand(1, 2, h, w, dtype=torch.float64) * 2 - 1 + 0.37).requires_grad_()
    assert torch.autograd.gradcheck(lambda i, f: warp(i, f, "border"), (img, flow))
    flow2 = (torch.rand(1, 2, h, w, dtype=torch.float64) * 2 - 1 + 0.21).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: compose_flow(a, b), (flow, flow2))
    match = torch.rand(1, 1, h, w, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, f: compose_matchability(None, m, f * 0.3),
                                    (match, flow))


def test_dtype_and_batch_follow_inputs():
    f = torch.zeros(3, 2, 5, 6, dtype=torch.float32)
    out = compose_flow(f, f)
    assert out.dtype == torch.float32 and out.shape == (3, 2, 5, 6)


def _inverse_affine(a: torch.Tensor) -> torch.Tensor:
    lin = torch.linalg.inv(a[:, :2])
    return torch.cat((lin, -lin @ a[:, 2:]), 1)


def test_invert_flow_of_an_affine_map_is_the_inverse_map():
    """Away from where the preimage leaves b (the splat is one-sided there) the splatted inverse
    of an affine flow is the inverse affine flow; where nothing lands the weight is 0."""
    from cyclecorr.geometry import invert_flow

    a = torch.tensor([[1.1, 0.1, 3.0], [-0.05, 0.95, -2.0]], dtype=torch.float64)
    flow_ba = affine_flow(a, 40, 50)  # b-pixel x lands at A x + t in a
    exact = affine_flow(_inverse_affine(a), 40, 50)
    inv, weight = invert_flow(flow_ba, 2.0)
    pre = pixel_grid(40, 50, dtype=torch.float64) + exact  # each a-pixel's preimage in b
    interior = ((pre[0, 0] > 7) & (pre[0, 0] < 42) & (pre[0, 1] > 7) & (pre[0, 1] < 32))
    assert interior.sum() > 800
    assert (inv - exact)[0, :, interior].abs().max() < 0.02
    # a shift by +10 px in x: a's first 4 columns are more than 3σ from any landing point
    inv, weight = invert_flow(torch.full((1, 2, 20, 30), 0.0).index_fill_(1, torch.tensor([0]),
                                                                          10.0), 2.0)
    assert (weight[0, 0, :, :4] == 0).all() and (inv[0, :, :, :4] == 0).all()
    torch.testing.assert_close(inv[0, 0, 6:-6, 16:-6], torch.full((8, 8), -10.0))
    # a of another size than b
    inv, weight = invert_flow(torch.zeros(2, 2, 10, 12), 1.0, size_a=(14, 9))
    assert inv.shape == (2, 2, 14, 9) and (weight[:, 0, 12:] == 0).all()  # ≥ 3σ below b
    assert (weight[:, 0, :11] > 0).all()
    with pytest.raises(ValueError, match="sigma"):
        invert_flow(torch.zeros(1, 2, 4, 4), 0.0)
    nan = torch.zeros(1, 2, 4, 4)
    nan[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        invert_flow(nan, 1.0)


def test_bidirectional_flow_averages_only_where_the_directions_agree():
    from cyclecorr.geometry import bidirectional_flow

    def shift(dx, dy, h=24, w=24):
        return torch.tensor([dx, dy], dtype=torch.float64).view(1, 2, 1, 1).expand(1, 2, h, w)

    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    # forward says +3.5 px, reverse says the match is at +2.5: within tau, the mean +3.0
    out = bidirectional_flow(shift(3.5, 0.0), shift(-2.5, 0.0), tau=2.0, sigma=1.5)
    torch.testing.assert_close(out[inner], shift(3.0, 0.0)[inner])
    # the same two estimates beyond tau: the forward flow is kept
    out = bidirectional_flow(shift(3.5, 0.0), shift(-2.5, 0.0), tau=0.5, sigma=1.5)
    torch.testing.assert_close(out, shift(3.5, 0.0).clone())
    # two exact inverses: unchanged (away from the borders, where the splat is one-sided); where
    # the reverse flow sends nothing (columns more than 3σ right of x = 23 − 8), the forward flow
    fwd = shift(8.0, -2.0)
    out = bidirectional_flow(fwd, shift(-8.0, 2.0), tau=1.0, sigma=1.0)
    torch.testing.assert_close(out[..., 6:-6, 3:12], fwd[..., 6:-6, 3:12])
    torch.testing.assert_close(out[..., 19:], fwd[..., 19:])
    with pytest.raises(ValueError, match="tau"):
        bidirectional_flow(shift(0, 0), shift(0, 0), tau=-1.0, sigma=1.0)


def test_invert_flow_spread_separates_two_parts_landing_on_one_place():
    """Two halves of b landing on the same columns of a (a fold): the splat's mean is no match
    and its spread is the halves' distance; one smooth piece spreads by ≈ σ√2; gating the two
    directions' mean by the spread keeps the forward flow at the fold."""
    from cyclecorr.geometry import bidirectional_flow, invert_flow

    h, w, sigma = 16, 40, 1.5
    flow_ba = torch.zeros(1, 2, h, w, dtype=torch.float64)
    flow_ba[0, 0, :, :20], flow_ba[0, 0, :, 20:] = 10.0, -10.0  # both halves land on 10 … 29
    inner = (slice(None), slice(None), slice(5, -5), slice(16, 24))
    inv, weight, spread = invert_flow(flow_ba, sigma, spread=True)
    torch.testing.assert_close(inv[inner], torch.zeros_like(inv[inner]))  # the mean: p itself
    assert (spread[inner] > 9.5).all() and (spread[inner] < 10.5).all()
    one = flow_ba.clone()
    one[0, 0, :, 20:] = 60.0  # the right half lands beyond a's frame: one piece at x + 10
    inv, weight, spread = invert_flow(one, sigma, spread=True)
    torch.testing.assert_close(inv[inner], torch.full_like(inv[inner], -10.0).index_fill_(
        1, torch.tensor([1]), 0.0))
    assert (spread[inner] - sigma * 2 ** 0.5).abs().max() < 0.1 * sigma
    assert (weight[..., :6] == 0).all() and (spread[..., :6] == 0).all()  # nothing landed
    # the two directions: the forward flow (−10) and the fold's inverse (0) lie within τ = 12 —
    # averaged to −5 unless the spread gate sees the fold
    fwd = torch.zeros(1, 2, h, w, dtype=torch.float64)
    fwd[:, 0] = -10.0
    mixed = bidirectional_flow(fwd, flow_ba, tau=12.0, sigma=sigma)
    torch.testing.assert_close(mixed[inner][:, 0], torch.full_like(mixed[inner][:, 0], -5.0))
    gated = bidirectional_flow(fwd, flow_ba, tau=12.0, sigma=sigma, max_spread=3 * sigma)
    torch.testing.assert_close(gated[inner], fwd[inner])
    # where one piece lands the gate lets the mean through: −9 and −10 give −9.5
    out = bidirectional_flow(fwd + 1, one, 12.0, sigma, max_spread=3 * sigma)
    torch.testing.assert_close(out[inner][:, 0], torch.full_like(out[inner][:, 0], -9.5))


@pytest.mark.parametrize("spread", [False, True])
def test_splat_kernel_equals_the_pytorch_form(spread):
    """The numba splat (CPU, no gradient) and the PyTorch form give the same inverse, weight and
    spread in float64, for rough flows landing partly outside a frame of another size; a flow
    that needs a gradient takes the PyTorch form, and its gradient flows."""
    from cyclecorr._splat import splat_numba
    from cyclecorr.geometry import _splat_reference, invert_flow

    g = torch.Generator().manual_seed(3)
    flow = (torch.randn(3, 2, 20, 26, generator=g, dtype=torch.float64) * 2 +
            torch.tensor([15.0, -3.0], dtype=torch.float64).view(1, 2, 1, 1))
    for sigma, size in ((1.0, (20, 26)), (2.3, (17, 31))):
        den_n, mean_n = splat_numba(flow, sigma, size, spread)
        den_r, mean_r = _splat_reference(flow, sigma, size, spread)
        assert den_n.dtype == torch.float64 and mean_n.shape == (3, 3 if spread else 2, *size)
        assert (den_n > 0).float().mean() > 0.4 and (den_n[..., 0] == 0).all()  # a's left edge
        torch.testing.assert_close(den_n, den_r, rtol=1e-12, atol=1e-12)
        hit = (den_r > 0).expand_as(mean_r)
        torch.testing.assert_close(mean_n[hit], mean_r[hit], rtol=1e-10, atol=1e-9)
        assert (mean_n[~hit] == 0).all()
    plain = invert_flow(flow, 1.5, spread=spread)
    leaf = flow.clone().requires_grad_(True)
    graded = invert_flow(leaf, 1.5, spread=spread)
    for a, b in zip(plain, graded):  # the spread: a square root of a difference near 0
        torch.testing.assert_close(a, b.detach(), rtol=1e-9, atol=1e-6)
    graded[0].sum().backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0
    # float32 in, float32 out
    f32 = invert_flow(flow.float(), 1.5, spread=spread)
    assert all(t.dtype == torch.float32 for t in f32)
    torch.testing.assert_close(f32[0], plain[0].float(), rtol=1e-4, atol=1e-4)
