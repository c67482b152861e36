"""The paper network's layer list and shapes; hand-computed loss values (the tiny-network cycle
fit on an affine quartet lives in tests/test_train.py)."""
from __future__ import annotations

import math

import pytest
import torch

from cyclecorr.losses import (
    CycleLossConfig,
    compose_cycle,
    cycle_loss,
    cycle_objective,
    flow_regression_loss,
    matchability_loss,
    truncated_flow_loss,
)
from cyclecorr.model import PAPER_LAYERS, CorrespondenceNet, NetConfig, build_network


def test_build_network_from_a_config_or_its_dict():
    cfg = NetConfig(width=0.25, image_size=32, norm="batch")
    torch.manual_seed(3)
    a = build_network(cfg)
    torch.manual_seed(3)
    b = build_network({**cfg.to_dict(), "arch": "paper"})  # a model file's "net" metadata
    assert type(a) is CorrespondenceNet and a.config == b.config == cfg
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert build_network().config == NetConfig()
    with pytest.raises(ValueError, match="unknown network architecture 'nosuch'"):
        build_network({"arch": "nosuch"})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['depth'\]"):
        build_network({"width": 0.5, "depth": 3})
    with pytest.raises(TypeError, match="NetConfig, a CostVolumeConfig or a dict"):
        build_network(0.5)


def test_default_network_is_papers_table():
    net = CorrespondenceNet()
    assert net.layer_table() == PAPER_LAYERS
    convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert len(convs) == 8 + 9 + 9
    assert all(m.kernel_size == (3, 3) for m in convs)
    # ReLU after every layer except the last of each decoder
    for head in (net.flow_decoder, net.match_decoder):
        assert not isinstance(list(head)[-1], torch.nn.ReLU)
    assert sum(isinstance(m, torch.nn.ReLU) for m in net.modules()) == 8 + 8 + 8


@pytest.mark.parametrize("size", [128, 64])
def test_output_shapes_and_ranges(size):
    torch.manual_seed(0)
    net = CorrespondenceNet(NetConfig(image_size=size, width=0.5))
    for p in net.parameters():  # non-zero heads so the range check means something
        torch.nn.init.normal_(p, std=0.05)
    x, y = torch.rand(2, 3, size, size), torch.rand(2, 3, size, size)
    out = net(x, y)
    assert out["flow"].shape == (2, 2, size, size)
    assert out["matchability"].shape == (2, 1, size, size)
    m = out["matchability"]
    assert torch.all((m >= 0) & (m <= 1)) and m.std() > 0
    assert torch.allclose(m, torch.sigmoid(out["matchability_logits"]))


def test_untrained_network_predicts_zero_flow_and_half_matchability():
    net = CorrespondenceNet(NetConfig(image_size=32, width=0.25))
    out = net(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    assert out["flow"].abs().max() == 0
    assert torch.allclose(out["matchability"], torch.full_like(out["matchability"], 0.5))


def test_set_input_size_runs_the_same_weights_at_another_size():
    torch.manual_seed(1)
    net = CorrespondenceNet(NetConfig(image_size=32, width=0.25)).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    ref = net(x, y)["flow"]
    assert net.set_input_size(48) is net
    out = net(torch.rand(2, 3, 48, 48), torch.rand(2, 3, 48, 48))
    assert out["flow"].shape == (2, 2, 48, 48) and out["flow"].abs().max() > 0
    with pytest.raises(ValueError, match=r"\(B, 3, 48, 48\), got \(1, 3, 32, 32\)"):
        net(x, y)  # the check follows the new size
    net.set_input_size(32)
    assert torch.equal(net(x, y)["flow"], ref)  # same weights, same answer back at 32
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="multiple of 16, got 40"):
        net.set_input_size(40)


def test_transposed_conv_bias_gradient_path_matches_the_stock_operator():
    """The CPU training path of the decoder's transposed convolutions (own bias gradient) gives
    the stock operator's output and all three gradients, in float64 gradcheck and in float32
    channels-last with an incoming gradient in the other layout."""
    from cyclecorr.model import _DeconvBiasGrad

    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: _DeconvBiasGrad.apply(x, w, b, (2, 2), (1, 1), (1, 1)), (x, w, b))
    cl = torch.channels_last
    x = torch.randn(3, 8, 6, 6).contiguous(memory_format=cl).requires_grad_()
    m = torch.nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
    m = m.to(memory_format=cl)
    g = torch.randn(3, 4, 12, 12)  # NCHW, as a loss hands it back
    ref = m(x)
    gref = torch.autograd.grad(ref, (x, m.weight, m.bias), g)
    out = _DeconvBiasGrad.apply(x, m.weight, m.bias, m.stride, m.padding, m.output_padding)
    got = torch.autograd.grad(out, (x, m.weight, m.bias), g)
    assert torch.equal(out, ref)
    for a, r in zip(got, gref):
        assert torch.allclose(a, r, rtol=1e-5, atol=1e-5)


def test_network_takes_the_bias_gradient_path_only_when_training_on_cpu():
    torch.manual_seed(2)
    net = CorrespondenceNet(NetConfig(image_size=32, width=0.25))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    stock = CorrespondenceNet(NetConfig(image_size=32, width=0.25))
    stock.load_state_dict(net.state_dict())
    for m in stock.modules():
        if isinstance(m, torch.nn.ConvTranspose2d):
            m.__class__ = torch.nn.ConvTranspose2d
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    deconv = [m for m in net.flow_decoder if isinstance(m, torch.nn.ConvTranspose2d)][0]
    seen = []
    hook = deconv.register_forward_hook(lambda m, i, o: seen.append(type(o.grad_fn).__name__))
    out, ref = net(x, y), stock(x, y)
    (out["flow"].square().mean() + out["matchability"].mean()).backward()
    (ref["flow"].square().mean() + ref["matchability"].mean()).backward()
    assert "_DeconvBiasGrad" in seen[0]
    for (k, p), q in zip(net.named_parameters(), stock.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), k
    with torch.no_grad():
        net(x, y)
    assert "_DeconvBiasGrad" not in str(seen[-1])  # inference: the stock operator
    assert set(net.state_dict()) == set(stock.state_dict())
    hook.remove()
    # under CPU bf16 autocast the layer computes in bf16 like the stock one (the network's
    # outputs are cast back to float32; gradients reach the float32 parameters)
    for m in (net, stock):
        m.zero_grad()
        dts = []
        layer = [d for d in m.flow_decoder if isinstance(d, torch.nn.ConvTranspose2d)][0]
        h = layer.register_forward_hook(lambda mod, i, o, dts=dts: dts.append(o.dtype))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x, y)
        h.remove()
        assert dts == [torch.bfloat16] and out["flow"].dtype == torch.float32
        out["flow"].square().mean().backward()
    for (k, p), q in zip(net.named_parameters(), stock.parameters()):
        if q.grad is not None:
            assert p.grad.dtype == torch.float32
            assert torch.allclose(p.grad, q.grad, rtol=0.05, atol=1e-3), k


def test_bad_input_shape_named():
    net = CorrespondenceNet(NetConfig(image_size=32, width=0.25))
    with pytest.raises(ValueError, match=r"\(1, 3, 30, 30\)"):
        net(torch.rand(1, 3, 30, 30), torch.rand(1, 3, 30, 30))
    with pytest.raises(ValueError, match="multiple of 16"):
        NetConfig(image_size=100)


def test_truncated_flow_loss_hand_computed():
    pred = torch.zeros(1, 2, 1, 3)
    gt = torch.tensor([[[[3.0, 20.0, 1.0]], [[4.0, 0.0, 1.0]]]])  # |d|^2 = 25, 400, 2
    mask = torch.tensor([[[[1.0, 1.0, 0.0]]]])
    loss, m = truncated_flow_loss(pred, gt, mask, truncation=15.0, reduction="sum")
    assert loss.item() == pytest.approx(25 + 225)  # second capped at T^2, third masked
    assert m["truncated"] == pytest.approx(0.5)
    assert m["epe"] == pytest.approx((5 + 20) / 2)
    loss_mean, _ = truncated_flow_loss(pred, gt, mask, truncation=15.0, reduction="mean")
    assert loss_mean.item() == pytest.approx(125.0)
    loss_big, _ = truncated_flow_loss(pred, gt, mask, truncation=100.0)
    assert loss_big.item() == pytest.approx(425.0)  # truncation inactive


def test_truncated_loss_gradient_is_zero_beyond_cap():
    pred = torch.zeros(1, 2, 1, 2, requires_grad=True)
    gt = torch.tensor([[[[30.0, 1.0]], [[0.0, 0.0]]]])
    loss, _ = truncated_flow_loss(pred, gt, None, truncation=15.0)
    loss.backward()
    assert pred.grad[0, 0, 0, 0] == 0 and pred.grad[0, 0, 0, 1] == pytest.approx(-2.0)


def test_matchability_bce_hand_computed():
    p = torch.tensor([0.8, 0.3]).view(1, 1, 1, 2)
    t = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    loss, m = matchability_loss(p, t, reduction="sum")
    assert loss.item() == pytest.approx(-math.log(0.8) - math.log(0.7), rel=1e-5)
    assert m["match_acc"] == 1.0


def _const_flow(b, h, w):
    """A maker of constant (B, 2, H, W) flows: ``const(dx, dy)``."""
    def const(dx, dy):
        f = torch.zeros(b, 2, h, w)
        f[:, 0], f[:, 1] = dx, dy
        return f
    return const


def test_cycle_composition_of_translations():
    b, h, w = 1, 20, 20
    const = _const_flow(b, h, w)

    flow, match = compose_cycle(const(1, 0), const(2, 1), const(-1, 1), torch.ones(b, 1, h, w))
    assert torch.allclose(flow[..., 5:15, 5:15], const(2, 2)[..., 5:15, 5:15])
    assert torch.all(match[..., :, w - 1:] == 0) and torch.all(match[..., :, :w - 1] == 1)
    gt_match = torch.ones(b, 1, h, w)
    loss, metrics = cycle_loss(const(1, 0), const(2, 1), const(-1, 1), torch.ones(b, 1, h, w),
                               const(2, 2), gt_match,
                               CycleLossConfig(reduction="mean", match_weight=0.0))
    assert metrics["epe"] < 0.2  # only the border rows/columns differ (border padding)


def test_leg_prior_adds_the_hand_computed_term_and_legs_are_reported():
    b, h, w = 2, 8, 8
    const = _const_flow(b, h, w)
    match = torch.ones(b, 1, h, w)
    gt_match = torch.zeros(b, 1, h, w)
    gt_match[..., :4] = 1  # half the pixels of s1 are matchable
    args = (const(3, 4), const(0, 0), const(-1, 0), match, const(2, 4), gt_match)
    base, m0 = cycle_loss(*args, CycleLossConfig(reduction="sum"))
    loss, m1 = cycle_loss(*args, CycleLossConfig(reduction="sum", leg_weight=0.5))
    # s1→r1: |(3,4)|² = 25 on the 32 matchable pixels; r2→s2: |(−1,0)|² = 1 on all 64 pixels
    assert m1["loss_leg"] == pytest.approx(25 * 32 + 1 * 64)
    assert float(loss - base) == pytest.approx(0.5 * (25 * 32 + 64), rel=1e-5)
    assert "loss_leg" not in m0
    assert m0["leg_s1r1"] == pytest.approx(5.0) and m0["leg_r1r2"] == 0.0
    assert m0["leg_r2s2"] == pytest.approx(1.0)
    # truncation caps the prior too (T = 2 → at most 4 per pixel)
    _, m2 = cycle_loss(*args, CycleLossConfig(reduction="sum", leg_weight=1.0, truncation=2.0))
    assert m2["loss_leg"] == pytest.approx(4 * 32 + 1 * 64)
    with pytest.raises(ValueError, match="leg_weight"):
        CycleLossConfig(leg_weight=-1)


def test_cycle_objective_is_the_cycle_plus_the_hand_computed_self_warp_term():
    b, h, w = 2, 8, 8
    const = _const_flow(b, h, w)
    pred = {"flow_s1r1": const(1, 0), "flow_r1r2": const(0, 2), "flow_r2s2": const(0, 0),
            "match_r1r2": torch.full((b, 1, h, w), 0.7), "flow_warp": const(3, 0)}
    batch = {"flow_s1s2": const(1, 2), "match_s1s2": torch.ones(b, 1, h, w),
             "flow_warp": const(0, 4), "match_warp": torch.ones(b, 1, h, w)}
    args = (pred["flow_s1r1"], pred["flow_r1r2"], pred["flow_r2s2"], pred["match_r1r2"],
            batch["flow_s1s2"], batch["match_s1s2"])
    plain = CycleLossConfig(reduction="sum")
    l0, m0 = cycle_objective(pred, batch, plain)
    ref, mref = cycle_loss(*args, plain)
    assert torch.equal(l0, ref) and m0 == mref  # without the term: the paper's objective
    cfg = CycleLossConfig(reduction="sum", warp_weight=2.0, truncation=4.0)
    loss, m = cycle_objective(pred, batch, cfg)
    base, _ = cycle_loss(*args, cfg)
    # warp: |(3,0) − (0,4)|² = 25, capped at T² = 16, on all 64 pixels of each pair
    assert m["loss_warp"] == pytest.approx(16 * 64)
    assert float(loss - base) == pytest.approx(2.0 * 16 * 64, rel=1e-6)
    assert m["loss"] == pytest.approx(float(loss)) and m["warp_epe"] == pytest.approx(5.0)
    assert m["warp_truncated"] == 1.0
    # its own truncation: T = 6 leaves the warp term uncapped (25 < 36) and its gradient alive,
    # the cycle term unchanged
    wide = CycleLossConfig(reduction="sum", warp_weight=2.0, truncation=4.0,
                           supervised_truncation=6.0)
    loss_w, m_w = cycle_objective(pred, batch, wide)
    assert m_w["loss_warp"] == pytest.approx(25 * 64) and m_w["warp_truncated"] == 0.0
    assert float(loss_w - base) == pytest.approx(2.0 * 25 * 64, rel=1e-6)
    for c, alive in ((cfg, False), (wide, True)):
        fw = pred["flow_warp"].clone().requires_grad_(True)
        cycle_objective({**pred, "flow_warp": fw}, batch, c)[0].backward()
        assert bool(fw.grad.abs().sum() > 0) == alive
    with pytest.raises(ValueError, match="supervised_truncation"):
        CycleLossConfig(supervised_truncation=-1.0)
    del batch["match_warp"]
    with pytest.raises(ValueError, match=r"missing \['match_warp'\]"):
        cycle_objective(pred, batch, cfg)


def test_flow_regression_loss_hand_computed():
    const = _const_flow(1, 4, 4)
    valid = torch.zeros(1, 1, 4, 4)
    valid[..., :2] = 1  # half the pixels count
    loss, m = flow_regression_loss(const(30, 40), const(0, 0), valid, reduction="sum")
    assert float(loss) == pytest.approx(2500 * 8)  # no truncation: |(30, 40)|² on 8 pixels
    assert m["loss"] == pytest.approx(2500 * 8) and m["epe"] == pytest.approx(50.0)
    loss, _ = flow_regression_loss(const(30, 40), const(0, 0), valid, reduction="mean")
    assert float(loss) == pytest.approx(2500)


def test_flops_by_part_counts_the_encoder_in_closed_form():
    """The encoder is a chain of 3×3 convolutions: its FLOPs are Σ 2·9·c_in·c_out·res² over the
    layer table; a pair's forward is two encodings plus both decoders."""
    from cyclecorr.model import CorrespondenceNet, NetConfig

    for cfg in (NetConfig(), NetConfig(width=0.5, image_size=64)):
        net = CorrespondenceNet(cfg)
        f = net.flops_by_part()
        c_in, expected = 3, 0
        for c_out, res in net.layer_table()["encoder"]:
            expected += 2 * 9 * c_in * c_out * res * res
            c_in = c_out
        assert f["encoder"] == expected
        assert f["flow_decoder"] > 0 and f["match_decoder"] > 0
        assert net.flops_per_pair() == 2 * f["encoder"] + f["flow_decoder"] + f["match_decoder"]
