"""``NetConfig.skips="corr"``: the local correlation (closed form, both kernels, gradcheck), the
zero start that lets a trained paper network grow skips without changing its output, and the
training views (CycleModule / FlowModule) with skips."""
from __future__ import annotations

import pytest
import torch

from cyclecorr._corr import correlation, correlation_reference
from cyclecorr.checkpoint import load_model, load_weights, save_model
from cyclecorr.model import CorrespondenceNet, NetConfig, local_correlation
from cyclecorr.train.modules import CycleModule, FlowModule

KERNELS = [correlation, correlation_reference]


def _shifted(a, dx, dy):
    """b with b(x+dx, y+dy) = a(x, y) (zeros where nothing lands)."""
    b = torch.zeros_like(a)
    h, w = a.shape[-2:]
    b[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        a[..., max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return b


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.__name__)
@pytest.mark.parametrize("dx,dy", [(2, -1), (0, 0), (-3, 3)])
def test_correlation_of_a_translated_map_peaks_at_the_shift(kernel, dx, dy):
    torch.manual_seed(0)
    r, k = 3, 7
    a = torch.nn.functional.normalize(torch.rand(2, 6, 12, 14) + 0.05, dim=1)
    b = _shifted(a, dx, dy)
    c = kernel(a, b, r)
    assert c.shape == (2, k * k, 12, 14)
    inner = c[..., 3:-3, 3:-3]
    expected = (dy + r) * k + (dx + r)
    assert (inner.argmax(1) == expected).all()
    assert torch.allclose(inner[:, expected], torch.ones(()), atol=1e-5)  # unit vectors
    # a displacement that leaves the image reads nothing: the top-left pixel at (-3, -3)
    assert float(c[:, 0, 0, 0].abs().max()) == 0.0


def test_correlation_kernels_agree_and_pass_gradcheck():
    torch.manual_seed(1)
    a = torch.randn(2, 5, 9, 11, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 5, 9, 11, dtype=torch.float64, requires_grad=True)
    for r in (0, 1, 2):
        assert torch.allclose(correlation(a, b, r), correlation_reference(a, b, r), atol=1e-12)
    assert torch.autograd.gradcheck(lambda x, y: correlation(x, y, 2), (a, b))
    assert torch.autograd.gradcheck(lambda x, y: local_correlation(x, y, 1), (a, b))
    g = torch.randn(2, 25, 9, 11, dtype=torch.float64)
    ga, gb = torch.autograd.grad(correlation(a, b, 2), (a, b), g)
    ra, rb = torch.autograd.grad(correlation_reference(a, b, 2), (a, b), g)
    assert torch.allclose(ga, ra) and torch.allclose(gb, rb)


def test_correlation_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match=r"\(1, 2, 4, 4\).*\(1, 2, 4, 5\)"):
        correlation(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 5), 1)
    with pytest.raises(ValueError, match="skips"):
        NetConfig(skips="unet")
    with pytest.raises(ValueError, match="skip_radius"):
        NetConfig(skips="corr", skip_radius=-1)


def _randomise(net, scale=0.05):
    """Give every zero-started layer (the heads' last convs, the skips) random weights."""
    torch.manual_seed(7)
    with torch.no_grad():
        for head in (net.flow_decoder, net.match_decoder):
            convs = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
            last = [m for m in head if isinstance(m, convs)][-1]
            last.weight.normal_(0, scale)
        for m in net.flow_skips:
            m.weight.normal_(0, scale)
            m.bias.normal_(0, scale)
    return net


def test_default_network_has_no_skip_layers():
    net = CorrespondenceNet()
    assert not any(k.startswith("flow_skips") for k in net.state_dict())
    assert net.grown_keys() == [] and "flow_skips" not in net.flops_by_part()


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_a_paper_network_grows_skips_without_changing_its_output(tmp_path, norm):
    torch.manual_seed(0)
    plain = _randomise(CorrespondenceNet(NetConfig(width=0.25, image_size=64, norm=norm)))
    path = tmp_path / "plain.safetensors"
    save_model(path, plain)
    grown = CorrespondenceNet(NetConfig(width=0.25, image_size=64, norm=norm, skips="corr"))
    with pytest.raises(ValueError, match="plain.safetensors.*missing.*flow_skips"):
        load_weights(grown, path)  # inference loading: every tensor must be there
    keys = load_weights(grown, path, grow=True)
    # at input 64 the skips enter at 8, 16 and 32 px: a weight and a bias each
    assert keys == grown.grown_keys() and len(keys) == 6
    x, y = torch.rand(3, 3, 64, 64), torch.rand(3, 3, 64, 64)
    for mode in ("train", "eval"):
        getattr(plain, mode)()
        getattr(grown, mode)()
        with torch.no_grad():
            a, b = plain(x, y), grown(x, y)
        assert float(a["flow"].abs().mean()) > 1e-3  # not a trivially zero output
        assert torch.allclose(a["flow"], b["flow"], atol=1e-6)
        assert torch.allclose(a["matchability"], b["matchability"], atol=1e-6)
    # a file with some skip layers but not all is no zero start
    half = {k: v for k, v in grown.state_dict().items() if k != "flow_skips.0.bias"}
    from safetensors.torch import save_file
    save_file(half, str(tmp_path / "half.safetensors"))
    with pytest.raises(ValueError, match="half.safetensors.*some of the network's skip layers"):
        load_weights(CorrespondenceNet(grown.config), tmp_path / "half.safetensors", grow=True)


def test_skips_learn_and_their_model_file_round_trips(tmp_path):
    torch.manual_seed(0)
    net = CorrespondenceNet(NetConfig(width=0.25, image_size=64, skips="corr", skip_radius=2))
    with torch.no_grad():  # a trained-like flow head, so that gradients reach the skips
        last = [m for m in net.flow_decoder if isinstance(m, torch.nn.Conv2d)][-1]
        last.weight.normal_(0, 0.05)
    x = torch.rand(2, 3, 64, 64)
    y = torch.roll(x, shifts=(2, 3), dims=(2, 3))
    target = torch.zeros(2, 2, 64, 64)
    target[:, 0], target[:, 1] = 3.0, 2.0
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    losses = []
    for _ in range(3):
        loss = (net(x, y)["flow"] - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        assert all(float(p.grad.abs().sum()) > 0 for p in net.flow_skips.parameters())
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert all(float(m.weight.detach().abs().max()) > 0 for m in net.flow_skips)
    save_model(tmp_path / "m.safetensors", net)
    back, meta = load_model(tmp_path / "m.safetensors")
    assert meta["net"]["skips"] == "corr" and meta["net"]["skip_radius"] == 2
    net.eval()
    assert torch.equal(back(x, y)["flow"], net(x, y)["flow"])


def test_training_views_with_skips_compute_the_networks_pairs():
    torch.manual_seed(3)
    net = _randomise(CorrespondenceNet(NetConfig(width=0.25, image_size=32, skips="corr"))).eval()
    s1, r1, r2, s2 = (torch.rand(2, 3, 32, 32) for _ in range(4))
    with torch.no_grad():
        out = CycleModule(net)(s1, r1, r2, s2, r2, r1)
        for key, a, b in (("s1r1", s1, r1), ("r1r2", r1, r2), ("r2s2", r2, s2), ("warp", r2, r1)):
            assert torch.allclose(out[f"flow_{key}"], net(a, b)["flow"], atol=1e-5), key
        assert torch.allclose(out["match_r1r2"], net(r1, r2)["matchability"], atol=1e-6)
        flow = FlowModule(net)(s1, r2)["flow"]
        assert torch.allclose(flow, net(s1, r2)["flow"], atol=1e-5)
    # DDP wraps FlowModule: the skips must be among its parameters
    names = {n for n, _ in FlowModule(net).named_parameters()}
    assert any(n.startswith("flow_skips.") for n in names)
    with pytest.raises(ValueError, match="needs 3 skip features"):
        net.decode_flow(*net.encode_levels(s1)[0].chunk(2))


def test_skip_layers_get_their_own_learning_rate(tmp_path):
    import json

    from safetensors import safe_open

    from cyclecorr.train.config import load_config
    from cyclecorr.train.loop import _param_groups, train

    cfg = load_config("smoke", ["net.skips=corr", "stage1.iterations=0", "stage2.iterations=2",
                                "stage2.optim.skips_lr_mult=10", "logging.checkpoint_every=1"])
    net = CorrespondenceNet(cfg.net)
    groups = _param_groups(net, cfg.stage2.optim)
    assert [len(g["params"]) for g in groups] == [len(list(net.parameters())) - 6, 6]
    assert groups[1]["params"] == list(net.flow_skips.parameters())
    assert len(_param_groups(CorrespondenceNet(), cfg.stage2.optim)) == 1  # nothing to scale
    train(cfg, tmp_path / "run")
    ck = tmp_path / "run" / "checkpoints" / "stage2-00000002.optim.safetensors"
    with safe_open(str(ck), framework="pt") as f:
        saved = json.loads(f.metadata()["cyclecorr_optim"])["param_groups"]
    assert saved[1]["lr_mult"] == 10.0
    assert saved[1]["lr"] == pytest.approx(10 * saved[0]["lr"]) and saved[0]["lr"] > 0
    with pytest.raises(ValueError, match="skips_lr_mult"):
        load_config("smoke", ["stage2.optim.skips_lr_mult=0"])
