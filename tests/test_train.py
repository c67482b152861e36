"""Training room: configuration, data order, augmentation, one step of each stage, the affine
cycle overfit, checkpoint round trip, the smoke run and the CLI. (Over 600 lines: the training
room's unit and end-to-end tests in one file, sharing the tiny-network and quartet fixtures.)"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cyclecorr.geometry import warp
from cyclecorr.losses import CycleLossConfig
from cyclecorr.model import NetConfig, build_network
from cyclecorr.train.config import AugmentConfig, TrainConfig, list_presets, load_config
from cyclecorr.train.data import (
    StepBatchSampler,
    SyntheticQuartets,
    collate,
    global_batch,
    hflip_quartet,
    rank_slice,
)
from cyclecorr.train.modules import CycleModule, FlowModule
from cyclecorr.train.state import load_checkpoint_pointer, restore_checkpoint, save_checkpoint
from cyclecorr.train.steps import cycle_step_loss, stage1_step_loss

torch.set_num_threads(1)


def _aug(**kw) -> AugmentConfig:
    """Augmentation off except what ``kw`` turns on."""
    return AugmentConfig(**{"hflip": 0.0, **kw})


# ------------------------------------------------------------------ configuration

def test_presets_load_and_roundtrip():
    names = list_presets()
    assert {"paper", "cpu", "demo", "smoke"} <= set(names)
    for name in names:
        cfg = load_config(name)
        again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again.to_dict() == cfg.to_dict()
    paper = load_config("paper")
    assert (paper.stage1.batch_size, paper.stage2.batch_size) == (40, 10)
    assert paper.stage2.optim.lr == 1e-3 and paper.stage2.optim.decay_every == 50_000
    assert paper.stage2.iterations == 200_000 and paper.loss.truncation == 15
    assert paper.stage2.optim.lr_at(49_999) == 1e-3 and paper.stage2.optim.lr_at(50_000) == 5e-4


def test_overrides_and_errors(tmp_path):
    cfg = load_config("smoke", ["stage2.batch_size=6", "net.width=0.25", "augment.hflip=0",
                                "stage2.optim.betas=[0.8, 0.9]"])
    assert cfg.stage2.batch_size == 6 and cfg.net.width == 0.25 and cfg.augment.hflip == 0.0
    assert cfg.stage2.optim.betas == (0.8, 0.9)
    with pytest.raises(ValueError, match="unknown key"):
        load_config("smoke", ["stage2.batchsize=6"])
    with pytest.raises(ValueError, match="expected an integer"):
        load_config("smoke", ["stage2.batch_size=many"])
    bad = tmp_path / "bad.json"
    bad.write_text('{"net": {"widht": 1}}')
    with pytest.raises(ValueError, match="bad.json.*widht"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match="unknown preset"):
        load_config("no-such-preset")


# ------------------------------------------------------------------ data order / augmentation

def test_batch_order_is_pure_and_ranks_partition():
    a = [global_batch(10, 4, seed=3, step=t) for t in range(6)]
    b = [global_batch(10, 4, seed=3, step=t) for t in range(6)]
    assert a == b
    assert a != [global_batch(10, 4, seed=4, step=t) for t in range(6)]
    # each epoch visits every item once: steps 0..4 cover items 0..19 = two epochs
    stream = sum(a[:5], [])
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    # resuming at step 3 gives the same batches as the uninterrupted stream
    s_full = list(StepBatchSampler(10, 4, 3, 0, 6))
    s_res = list(StepBatchSampler(10, 4, 3, 3, 6))
    assert s_full[3:] == s_res
    # two ranks take disjoint halves of the same global batch
    r0 = list(StepBatchSampler(10, 4, 3, 0, 6, rank=0, world=2))
    r1 = list(StepBatchSampler(10, 4, 3, 0, 6, rank=1, world=2))
    assert [x + y for x, y in zip(r0, r1)] == s_full
    with pytest.raises(ValueError, match="not divisible"):
        rank_slice(5, 0, 2)


def test_synthetic_quartet_flow_is_exact_and_flip_consistent():
    q = SyntheticQuartets(2, 32, seed=0)[1]
    assert q["s1"].shape == (3, 32, 32) and q["flow_s1s2"].shape == (2, 32, 32)
    assert q["match_s1s2"].shape == (1, 32, 32) and 0.1 < float(q["match_s1s2"].mean()) < 1
    for qq in (q, hflip_quartet(q)):
        m = qq["match_s1s2"][None]
        err = ((warp(qq["s2"][None], qq["flow_s1s2"][None]) - qq["s1"][None]).abs() * m).sum()
        err = float(err / m.sum() / 3)
        assert err < 0.03, err  # s2 sampled along the true flow reproduces s1 on the object
    f = hflip_quartet(q)
    assert torch.allclose(f["flow_s1s2"][0], -q["flow_s1s2"][0].flip(-1))
    assert torch.allclose(hflip_quartet(f)["r1"], q["r1"])


# ------------------------------------------------------------------ one step of each stage

def _tiny_net(seed=0, size=32):
    torch.manual_seed(seed)
    return build_network(NetConfig(width=0.125, image_size=size))


def test_stage1_step_decreases_loss():
    ds = SyntheticQuartets(4, 32, seed=5)
    items = [ds[i] for i in range(2)]
    batch = {"src": torch.stack([q["s1"] for q in items]),
             "tgt": torch.stack([q["s2"] for q in items]),
             "flow": torch.stack([q["flow_s1s2"] for q in items])}
    net = _tiny_net()
    model = FlowModule(net)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    before, _ = stage1_step_loss(model, batch)
    opt.zero_grad()
    before.backward()
    assert all(p.grad is None for p in net.match_decoder.parameters())  # stage 1: flow only
    opt.step()
    after, _ = stage1_step_loss(model, batch)
    assert float(after.detach()) < float(before.detach())


def test_cycle_step_decreases_loss_and_module_matches_steps():
    ds = SyntheticQuartets(4, 32, seed=6)
    batch = collate([ds[i] for i in range(2)])
    net = _tiny_net(1)
    cfg = CycleLossConfig(truncation=3.75)
    l_plain, _ = cycle_step_loss(net, batch, cfg)
    model = CycleModule(net)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    before, m = cycle_step_loss(model, batch, cfg)
    assert torch.allclose(before, l_plain)  # the DDP view computes the same objective
    assert set(m) >= {"loss", "loss_flow", "loss_match", "epe"}
    opt.zero_grad()
    before.backward()
    opt.step()
    after, _ = cycle_step_loss(model, batch, cfg)
    assert float(after.detach()) < float(before.detach())


def test_bf16_training_step_keeps_flows_and_losses_float32_and_learns(tmp_path):
    from cyclecorr.matcher import precision_context
    from cyclecorr.train.loop import train

    ds = SyntheticQuartets(4, 32, seed=6)
    batch = collate([ds[i] for i in range(2)])
    net = _tiny_net(1)
    for head in (net.flow_decoder, net.match_decoder):  # non-zero outputs (they start at zero)
        torch.nn.init.normal_(head[-1].weight, std=0.05)
    cfg = CycleLossConfig(truncation=3.75)
    ref, _ = cycle_step_loss(net, batch, cfg)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    with precision_context(torch.device("cpu"), "bf16"):
        out = net(batch["s1"], batch["r1"])
        before, _ = cycle_step_loss(net, batch, cfg)
    assert out["flow"].dtype == out["matchability_logits"].dtype == torch.float32
    assert before.dtype == torch.float32 and before.item() != ref.item()  # bf16 was used
    assert before.item() == pytest.approx(ref.item(), rel=0.05)
    opt.zero_grad()
    before.backward()
    assert all(p.grad.dtype == torch.float32 for p in net.parameters() if p.grad is not None)
    opt.step()
    with precision_context(torch.device("cpu"), "bf16"):
        after, _ = cycle_step_loss(net, batch, cfg)
    assert after.item() < before.item()
    res = train(load_config("smoke", ["runtime.precision=bf16"]), tmp_path / "run")
    from cyclecorr.checkpoint import load_model
    _, meta = load_model(res.final_model)
    assert meta["train_config"]["runtime"]["precision"] == "bf16"
    with pytest.raises(ValueError, match="runtime.precision must be"):
        load_config("smoke", ["runtime.precision=fp16"]).validate()


def test_cycle_module_decodes_matchability_of_the_real_pair_only():
    """Flows of the three legs (and the self-warp pair) and the r1→r2 matchability equal the
    plain network's outputs on those pairs; the matchability decoder sees only the B real pairs."""
    ds = SyntheticQuartets(3, 32, seed=2)
    batch = collate([ds[i] for i in range(3)])
    net = _tiny_net(5).eval()  # eval: batch norm uses running statistics, pairs are independent
    seen = []
    hook = net.match_decoder.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    with torch.no_grad():
        out = CycleModule(net)(batch["s1"], batch["r1"], batch["r2"], batch["s2"],
                               batch["r2"], batch["r1"])
        assert seen == [3]
        hook.remove()
        for key, a, b in (("s1r1", "s1", "r1"), ("r1r2", "r1", "r2"), ("r2s2", "r2", "s2")):
            ref = net(batch[a], batch[b])
            assert torch.allclose(out[f"flow_{key}"], ref["flow"], atol=1e-5), key
        ref = net(batch["r1"], batch["r2"])
        assert torch.allclose(out["match_r1r2"], ref["matchability"], atol=1e-6)
        assert torch.allclose(out["flow_warp"], net(batch["r2"], batch["r1"])["flow"], atol=1e-5)


def test_cycle_loss_driven_near_zero_on_affine_quartet():
    """One quartet whose three flows are known affine maps: the composed cycle learns the
    renderer flow (the flow loss falls by >95 %, EPE well under a pixel) in a few seconds."""
    q = SyntheticQuartets(1, 32, seed=1)[0]
    batch = collate([q])
    net = _tiny_net(0)
    model = CycleModule(net)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    cfg = CycleLossConfig(truncation=8, reduction="mean")
    first = None
    for _ in range(250):
        loss, m = cycle_step_loss(model, batch, cfg)
        first = first or m
        opt.zero_grad()
        loss.backward()
        opt.step()
    loss, m = cycle_step_loss(model, batch, cfg)
    assert first["epe"] > 1.0
    assert m["loss_flow"] < 0.05 * first["loss_flow"], (first, m)
    assert m["epe"] < 0.35, m
    assert m["loss_match"] < first["loss_match"]


# ------------------------------------------------------------------ checkpoints

def test_code_version_is_the_one_the_process_started_with(monkeypatch, tmp_path):
    """A commit or an edit while a run trains must not relabel its later checkpoints."""
    from cyclecorr.train import state

    answers = iter(["0.1.0+git.aaaa", "0.1.0+git.bbbb-dirty"])
    monkeypatch.setattr(state, "_CODE_VERSION", None)
    monkeypatch.setattr(state, "_describe_code", lambda: next(answers))
    assert state.code_version() == "0.1.0+git.aaaa"
    net = _tiny_net(2)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    save_checkpoint(tmp_path, net, opt, stage=2, step=1, config={}, manifest_sha256="abc")
    assert load_checkpoint_pointer(tmp_path)["code_version"] == "0.1.0+git.aaaa"


def test_checkpoint_roundtrip(tmp_path):
    from cyclecorr.checkpoint import load_model

    net = _tiny_net(2)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    batch = collate([SyntheticQuartets(1, 32)[0]])
    loss, _ = cycle_step_loss(CycleModule(net), batch, CycleLossConfig())
    loss.backward()
    opt.step()
    save_checkpoint(tmp_path, net, opt, stage=2, step=7, config={"a": 1}, manifest_sha256="abc")
    ptr = load_checkpoint_pointer(tmp_path)
    assert (ptr["stage"], ptr["step"], ptr["data_manifest_sha256"]) == (2, 7, "abc")
    assert ptr["code_version"].startswith("0.")
    net2 = _tiny_net(3)
    opt2 = torch.optim.Adam(net2.parameters(), 1e-3)
    restore_checkpoint(tmp_path, ptr, net2, opt2)
    for (k, a), b in zip(net.state_dict().items(), net2.state_dict().values()):
        assert torch.equal(a, b), k
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for pid, st in s1["state"].items():
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(s2["state"][pid][k])), (pid, k)
    # a channels-last network gets its moments back in its own layout (CUDA's fused Adam
    # refuses moments whose strides differ from the parameter's)
    net3 = _tiny_net(4).to(memory_format=torch.channels_last)
    opt3 = torch.optim.Adam(net3.parameters(), 1e-3)
    restore_checkpoint(tmp_path, ptr, net3, opt3)
    convs = [p for p in net3.parameters() if p.dim() == 4 and p.shape[1] > 1]
    assert convs and all(not p.is_contiguous() for p in convs)
    for p in net3.parameters():
        for k in ("exp_avg", "exp_avg_sq"):
            assert opt3.state[p][k].stride() == p.stride(), k
    for p, q in zip(net.parameters(), net3.parameters()):
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[p][k], opt3.state[q][k]), k
    loaded, meta = load_model(tmp_path / "last.safetensors")
    assert meta["step"] == 7 and meta["stage"] == 2 and meta["train_config"] == {"a": 1}
    # a damaged checkpoint file is reported by name
    f = tmp_path / ptr["model_file"]
    f.write_bytes(f.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ValueError, match=f.name):
        load_checkpoint_pointer(tmp_path)


# ------------------------------------------------------------------ runs

def test_smoke_run_writes_everything_and_refuses_overwrite(tmp_path):
    from cyclecorr.checkpoint import load_model
    from cyclecorr.train.loop import train

    cfg = load_config("smoke", ["validation.every=3", "validation.pictures=true"])
    res = train(cfg, tmp_path / "run")
    run = tmp_path / "run"
    assert res.stages_done == [1, 2] and res.final_model == run / "final.safetensors"
    net, meta = load_model(res.final_model)
    assert meta["train_config"]["name"] == "smoke" and len(meta["data_manifest_sha256"]) == 64
    # each stage's end model is kept (the stage-1 row of the evaluation needs it)
    for stage in (1, 2):
        _, m = load_model(run / f"stage{stage}.safetensors")
        assert m["stage"] == stage and m["step"] == cfg.to_dict()[f"stage{stage}"]["iterations"]
    recs = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if "loss" in r]
    assert [r["global_step"] for r in train_recs] == [2, 4, 6, 8, 10, 12]
    assert any(r.get("event") == "validation" and "cycle_epe" in r for r in recs)
    assert sorted(p.name for p in (run / "pictures").glob("*.png"))[:1] == ["stage1-00000003.png"]
    assert json.loads((run / "config.json").read_text()) == cfg.to_dict()
    card = (run / "MODEL_CARD.md").read_text()
    assert "never trained on" in card and meta["data_manifest_sha256"] in card
    assert "stage 1 (regressing the renderer's flow)" in card  # the smoke preset's targets
    assert "| 2 | 6 |" in card  # the last validation row (stage 2, step 6)
    assert "initial weights: random" in card
    with pytest.raises(ValueError, match="--resume"):
        train(cfg, run)


def test_cli_train(tmp_path, capsys):
    from cyclecorr.cli import main

    out = tmp_path / "cli"
    rc = main(["train", "--preset", "smoke", "--out", str(out), "--set", "stage1.iterations=2",
               "stage2.iterations=2", "--no-progress"])
    assert rc == 0
    assert (out / "final.safetensors").is_file()
    text = capsys.readouterr().out
    assert str(out) in text
    from cyclecorr._runtime import cpu_has_bf16
    # the hint names the option exactly where the CPU has bf16 units (and the run is float32)
    assert ("runtime.precision=bf16" in text) == cpu_has_bf16()
    rc = main(["train", "--preset", "smoke", "--out", str(out), "--set", "stage2.iterations=3",
               "--resume", "--no-progress"])
    assert rc == 2  # another configuration than the run's: refused with a message
    assert "another configuration" in capsys.readouterr().err


@pytest.mark.parametrize("category", ["car", "chair", "aeroplane"])
def test_shipped_model_loads_with_matcher(category):
    import numpy as np

    from cyclecorr.checkpoint import shipped_model_path
    from cyclecorr.matcher import Matcher

    try:
        shipped_model_path(category)
    except FileNotFoundError:
        pytest.skip(f"no shipped {category} model (cyclecorr/weights/{category}.safetensors)")
    m = Matcher.from_checkpoint(device="cpu", category=category)
    # the file is the category's: its training configuration names it, and its card is beside it
    assert m.meta["train_config"]["category"] == category
    assert shipped_model_path(category).with_suffix(".md").is_file()
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    b = rng.integers(0, 255, (70, 60, 3), dtype=np.uint8)
    out = m.match(a, b)
    assert out["flow"].shape == (90, 120, 2) and out["matchability"].shape == (90, 120)
    assert np.isfinite(out["flow"]).all()
    assert ((out["matchability"] >= 0) & (out["matchability"] <= 1)).all()
    kps = m.transfer_keypoints(a, b, np.array([[10.0, 20.0], [50.0, 60.0]]))
    assert kps.shape == (2, 2)


def test_quartets_resampled_to_the_network_size_stay_consistent():
    from cyclecorr.train.run_data import ResizedQuartets

    big = SyntheticQuartets(1, 64, seed=4)
    small = ResizedQuartets(big, 32)[0]
    q = big[0]
    assert small["s1"].shape == (3, 32, 32) and small["flow_s1s2"].shape == (2, 32, 32)
    assert set(small["match_s1s2"].unique().tolist()) <= {0.0, 1.0}
    # flows are in the new pixels: about half as long
    ratio = small["flow_s1s2"].abs().mean() / q["flow_s1s2"].abs().mean()
    assert 0.45 < float(ratio) < 0.55
    m = small["match_s1s2"][None]
    err = ((warp(small["s2"][None], small["flow_s1s2"][None]) - small["s1"][None]).abs() * m)
    still = ((small["s2"][None] - small["s1"][None]).abs() * m)
    assert float(err.sum()) < 0.3 * float(still.sum())


def test_render_background_replaced_only_off_the_object_and_deterministic():
    from cyclecorr.train.data import AugmentedDataset, render_background_mask

    q = SyntheticQuartets(2, 32, seed=3)[0]
    s1 = torch.zeros(3, 32, 32)
    s1[:, 8:24, 10:20] = 0.4  # the object; the rest is the renders' black background
    q = {**q, "s1": s1, "s2": s1.clone()}
    ds = AugmentedDataset([q], seed=0, keys=tuple(q), augment=_aug(render_background=1.0))
    a, again = ds[(0, 5, 0)], ds[(0, 5, 0)]
    obj = ~render_background_mask(s1)
    assert torch.equal(a["s1"] * obj, s1 * obj)  # object pixels untouched
    assert float(a["s1"][~obj.expand(3, -1, -1)].std()) > 0.05  # textured background
    assert not torch.equal(a["s1"], a["s2"])  # each render its own texture
    assert torch.equal(a["s1"], again["s1"])  # a pure function of (seed, step, position)
    assert not torch.equal(a["s1"], ds[(0, 6, 0)]["s1"])
    for k in ("r1", "r2", "flow_s1s2", "match_s1s2"):
        assert torch.equal(a[k], q[k])
    off = AugmentedDataset([q], seed=0, keys=tuple(q), augment=_aug())[(0, 5, 0)]
    assert torch.equal(off["s1"], s1)


def _h(m):
    full = torch.eye(3, dtype=m.dtype)
    full[:2] = m
    return full


def test_zoom_flow_follows_the_two_reframings_exactly():
    """Synthetic quartets have affine ground truth: after re-framing side 1 by A1 and side 2 by
    A2 (new pixel -> old pixel) the flow s1 -> s2 must be the affine map A2^-1 G A1."""
    from cyclecorr.geometry import affine_flow, pixel_grid
    from cyclecorr.train.data import random_zoom, zoom_item

    S = 48
    q = SyntheticQuartets(3, S, seed=5)[1]
    g = torch.Generator().manual_seed(0)
    a1 = random_zoom(g, S, (0.6, 1.3), 0.15, 0.1)
    a2 = random_zoom(g, S, (0.6, 1.3), 0.15, 0.1)
    assert not torch.allclose(a1, a2)
    z = zoom_item(q, (a1, a2))
    full = (torch.linalg.inv(_h(a2)) @ _h(q["affine_s1s2"]) @ _h(a1))[:2]
    want = affine_flow(full, S, S)[0]
    m = z["match_s1s2"].bool()[0]
    assert int(m.sum()) > 100
    assert float((z["flow_s1s2"] - want).abs().amax(dim=0)[m].max()) < 1e-3
    # matchable only where the new match lies inside the image
    q_new = pixel_grid(S, S)[0] + want
    inside = (q_new >= 0).all(0) & (q_new <= S - 1).all(0)
    assert not bool((m & ~inside).any())
    # the renders follow their photos: r1 is re-framed by the same map as s1
    assert torch.allclose(z["r1"], warp(q["r1"][None], affine_flow(a1, S, S), "border")[0])
    assert torch.allclose(z["s2"], warp(q["s2"][None], affine_flow(a2, S, S), "zeros")[0])
    # the content moves with the flow: s2 warped back by the new flow matches the new s1
    err = ((warp(z["s2"][None], z["flow_s1s2"][None]) - z["s1"][None]).abs() * m).sum()
    still = ((z["s2"][None] - z["s1"][None]).abs() * m).sum()
    assert float(err) < 0.5 * float(still)


def test_zoom_identity_translation_and_pairs():
    from cyclecorr.train.data import AugmentedDataset, zoom_item

    S = 32
    q = SyntheticQuartets(2, S, seed=2)[0]
    eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    same = zoom_item(q, (eye, eye))
    for k in ("s1", "s2", "r1", "r2", "flow_s1s2"):
        assert torch.allclose(same[k], q[k], atol=1e-5), k
    # a valid pixel next to an invalid one is dropped (bilinear support), never added
    assert not bool((same["match_s1s2"] > q["match_s1s2"]).any())
    # side 2 shown 5 px further right: its new pixel p is old pixel p - 5, flows grow by +5 in x
    shift = torch.tensor([[1.0, 0, -5.0], [0, 1.0, 0]])
    moved = zoom_item(q, (eye, shift))
    m = moved["match_s1s2"].bool()[0]
    d = moved["flow_s1s2"] - q["flow_s1s2"]
    assert torch.allclose(d[0][m], torch.full_like(d[0][m], 5.0), atol=1e-4)
    assert torch.allclose(d[1][m], torch.zeros_like(d[1][m]), atol=1e-4)
    # stage-1 pairs: src/tgt/flow/valid follow the same rule
    pair = {"src": q["s1"], "tgt": q["s2"], "flow": q["flow_s1s2"], "valid": q["match_s1s2"]}
    zp = zoom_item(pair, (eye, shift))
    assert torch.allclose(zp["flow"], moved["flow_s1s2"]) and torch.equal(zp["valid"],
                                                                         moved["match_s1s2"])
    # in the dataset: deterministic per (seed, step, position), off by default
    ds = AugmentedDataset([q], seed=0, keys=tuple(q), augment=_aug(zoom=1.0))
    a = ds[(0, 3, 1)]
    assert torch.equal(a["flow_s1s2"], ds[(0, 3, 1)]["flow_s1s2"])
    assert not torch.equal(a["flow_s1s2"], ds[(0, 4, 1)]["flow_s1s2"])
    assert not torch.equal(a["r2"], q["r2"])
    off = AugmentedDataset([q], seed=0, keys=tuple(q), augment=_aug())[(0, 3, 1)]
    assert torch.equal(off["flow_s1s2"], q["flow_s1s2"])
    with pytest.raises(ValueError, match="zoom_min"):
        load_config("smoke", ["augment.zoom=0.5", "augment.zoom_min=1.5"])
    with pytest.raises(ValueError, match="augment.zoom must"):
        load_config("smoke", ["augment.zoom=2"])


def test_zoom_texture_fill_only_changes_photo_pixels_outside_their_old_frame():
    from cyclecorr.train.data import AugmentedDataset, zoom_item

    S = 32
    q = SyntheticQuartets(2, S, seed=3)[0]
    half = torch.tensor([[2.0, 0, -15.5], [0, 2.0, -15.5]])  # shrink ×0.5 about the centre
    b = zoom_item(q, (half, half))
    t = zoom_item(q, (half, half), fill="texture", g=torch.Generator().manual_seed(1))
    # the old frame maps to new pixels [7.75, 23.25]: inside it both fills agree, outside only the
    # photos differ (the renders keep their black background), and the labels do not change
    inner = (slice(None), slice(9, 23), slice(9, 23))
    outer = (slice(None), slice(0, 6), slice(None))
    for k in ("r1", "r2"):
        assert torch.allclose(t[k][inner], b[k][inner], atol=1e-6), k
        assert float((t[k][outer] - b[k][outer]).abs().mean()) > 0.05, k
        assert float(t[k][outer].std()) > 0.01 and 0 <= float(t[k].min()) <= float(t[k].max()) <= 1
    assert not torch.equal(t["r1"][outer], t["r2"][outer])  # one texture per image
    for k in ("s1", "s2", "flow_s1s2", "match_s1s2"):
        assert torch.equal(t[k], b[k]), k
    assert float(t["s1"][outer].abs().max()) == 0.0
    with pytest.raises(ValueError, match="fill"):
        zoom_item(q, (half, half), fill="mirror")
    with pytest.raises(ValueError, match="generator"):
        zoom_item(q, (half, half), fill="texture")
    ds = AugmentedDataset([q], seed=0, keys=tuple(q),
                          augment=_aug(zoom=1.0, zoom_fill="texture"))
    assert torch.equal(ds[(0, 2, 0)]["r1"], ds[(0, 2, 0)]["r1"])
    with pytest.raises(ValueError, match="zoom_fill"):
        load_config("smoke", ["augment.zoom_fill=mirror"])
    assert load_config("smoke", ["augment.zoom_fill=texture"]).augment.zoom_fill == "texture"


def test_init_starts_from_a_model_file_and_bad_files_are_named(tmp_path):
    from cyclecorr.checkpoint import load_model, save_model
    from cyclecorr.train.loop import train

    cfg = load_config("smoke")
    torch.manual_seed(11)
    src = build_network(cfg.net)
    for p in src.parameters():
        p.data.normal_(0, 0.01)
    save_model(tmp_path / "init.safetensors", src)
    zero = load_config("smoke", [f"init={tmp_path / 'init.safetensors'}", "stage1.iterations=0",
                                 "stage2.iterations=0"])
    res = train(zero, tmp_path / "run0")
    net, _ = load_model(res.final_model)
    for (k, a), b in zip(src.state_dict().items(), net.state_dict().values()):
        assert torch.equal(a, b), k
    from cyclecorr.checkpoint import file_sha256

    card = (tmp_path / "run0" / "MODEL_CARD.md").read_text()
    assert file_sha256(tmp_path / "init.safetensors") in card  # the card names its starting point
    bad = load_config("smoke", [f"init={tmp_path / 'missing.safetensors'}"])
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        train(bad, tmp_path / "run1")
    other = build_network(NetConfig(width=0.25, image_size=32))
    save_model(tmp_path / "wide.safetensors", other)
    wrong = load_config("smoke", [f"init={tmp_path / 'wide.safetensors'}"])
    with pytest.raises(ValueError, match="do not fit"):
        train(wrong, tmp_path / "run2")
    # the same plain weights into a network with skips: they start at zero, the rest is the file's
    grow = load_config("smoke", [f"init={tmp_path / 'init.safetensors'}", "net.skips=corr",
                                 "stage1.iterations=0", "stage2.iterations=0"])
    res = train(grow, tmp_path / "run3")
    net, meta = load_model(res.final_model)
    assert meta["net"]["skips"] == "corr"
    state = net.state_dict()
    for k, a in src.state_dict().items():
        assert torch.equal(a, state[k]), k
    assert net.grown_keys() and all(not state[k].any() for k in net.grown_keys())
    events = [json.loads(line) for line in (tmp_path / "run3" / "log.jsonl").open()]
    grown = [e for e in events if e.get("event") == "init_grown"]
    assert grown and grown[0]["zero_layers"] == net.grown_keys()


def test_sigterm_to_every_process_of_a_run_stops_it_gracefully(tmp_path):
    """``pkill -f`` reaches the DataLoader workers too: the run must still stop at an iteration
    boundary with a checkpoint (exit 130), not crash on a dead worker."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "cyclecorr.cli", "train", "--preset", "smoke", "--out", str(out),
           "--no-progress", "--set", "stage1.iterations=100000", "data.workers=2",
           "logging.checkpoint_every=100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "log.jsonl").is_file():
            time.sleep(0.2)
        time.sleep(3.0)  # training with its workers running
        os.killpg(proc.pid, signal.SIGTERM)  # the main process and both workers
        text = proc.communicate(timeout=120)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, text[-2000:]
    assert "stopped by SIGTERM" in text and "DataLoader worker" not in text
    ptr = json.loads((out / "last.json").read_text())
    assert ptr["stage"] == 1 and ptr["step"] > 0


def test_self_warp_pair_has_the_exact_flow_of_its_two_reframings():
    """A photo and its re-framed copy: with A1, A2 the two maps (new pixel -> old pixel), the
    flow must be A2^-1 A1 p - p; matchable only where the match lies inside the copy and the
    source pixel shows the photo; the copy's content follows the flow."""
    from cyclecorr.geometry import affine_flow, pixel_grid
    from cyclecorr.train.data import random_zoom, self_warp_pair

    S = 48
    img = SyntheticQuartets(2, S, seed=3)[0]["r1"]
    p = self_warp_pair(img, torch.Generator().manual_seed(7), (0.6, 1.3), 0.15, 0.1, "texture")
    g = torch.Generator().manual_seed(7)  # the same draws, to know the two maps
    a1 = random_zoom(g, S, (0.6, 1.3), 0.15, 0.1)
    a2 = random_zoom(g, S, (0.6, 1.3), 0.15, 0.1)
    want = affine_flow((torch.linalg.inv(_h(a2)) @ _h(a1))[:2], S, S)[0]
    m = p["match_warp"].bool()[0]
    assert int(m.sum()) > 200 and float(want.norm(dim=0).mean()) > 1.0  # a real displacement
    assert float((p["flow_warp"] - want).abs().amax(dim=0)[m].max()) < 1e-3
    q_new = pixel_grid(S, S)[0] + want
    inside = (q_new >= 0).all(0) & (q_new <= S - 1).all(0)
    shows_photo = (pixel_grid(S, S)[0] + affine_flow(a1, S, S)[0])
    on_photo = (shows_photo >= 0).all(0) & (shows_photo <= S - 1).all(0)
    assert not bool((m & ~(inside & on_photo)).any())
    err = ((warp(p["warp_tgt"][None], p["flow_warp"][None]) - p["warp_src"][None]).abs() * m).sum()
    still = ((p["warp_tgt"][None] - p["warp_src"][None]).abs() * m).sum()
    assert float(err) < 0.5 * float(still)
    with pytest.raises(ValueError, match=r"\(3, S, S\).*\(1, 48, 48\)"):
        self_warp_pair(img[:1], g)


def test_deformed_self_warp_keeps_the_exact_flow():
    """Bending the source of a self-warp pair by a smooth field d: the new flow must be
    d(p) + flow(p + d(p)), i.e. the content of the bent source found in the target where the
    original pair's flow says; checked against the closed-form affine flow of the two
    re-framings, and through the images (the copy's content follows the new flow)."""
    from cyclecorr.geometry import pixel_grid
    from cyclecorr.train.data import (
        deform_self_warp,
        random_zoom,
        self_warp_pair,
        smooth_deformation,
    )

    S = 48
    img = SyntheticQuartets(2, S, seed=3)[0]["r1"]
    pair = self_warp_pair(img, torch.Generator().manual_seed(7), (0.8, 1.2), 0.1, 0.1, "texture")
    same = deform_self_warp(pair, torch.Generator().manual_seed(1), 0.0, 4, 0.0)
    assert all(torch.equal(same[k], pair[k]) for k in pair)  # both off: unchanged
    bent = deform_self_warp(pair, torch.Generator().manual_seed(1), 4.0, 4, 0.0)
    d = smooth_deformation(torch.Generator().manual_seed(1), S, 4.0, 4)
    assert 2.0 < float(d.abs().max()) < 4.5 and float(d.abs().mean()) > 0.5
    g = torch.Generator().manual_seed(7)
    a1, a2 = (random_zoom(g, S, (0.8, 1.2), 0.1, 0.1) for _ in range(2))
    affine = (torch.linalg.inv(_h(a2)) @ _h(a1))[:2]
    q = pixel_grid(S, S)[0] + d  # where each bent source pixel shows the original source
    # the target shows that content at A q (A: original source pixel -> target pixel)
    want = torch.einsum("ij,jhw->ihw", affine[:, :2], q) + affine[:, 2:, None] - pixel_grid(S, S)[0]
    m = bent["match_warp"].bool()[0]
    assert int(m.sum()) > 0.4 * S * S and int(m.sum()) < int(pair["match_warp"].sum())
    assert float((bent["flow_warp"] - want).abs().amax(dim=0)[m].max()) < 1e-3
    assert not bool((m & ~((q >= 0).all(0) & (q <= S - 1).all(0))).any())
    err = ((warp(bent["warp_tgt"][None], bent["flow_warp"][None]) - bent["warp_src"][None]).abs()
           * m).sum()
    old = ((warp(bent["warp_tgt"][None], pair["flow_warp"][None]) - bent["warp_src"][None]).abs()
           * m).sum()
    assert float(err) < 0.5 * float(old)  # the old flow no longer fits the bent source
    assert torch.equal(bent["warp_tgt"], pair["warp_tgt"])
    lit = deform_self_warp(pair, torch.Generator().manual_seed(2), 0.0, 4, 0.3)
    assert torch.equal(lit["flow_warp"], pair["flow_warp"])
    assert not torch.equal(lit["warp_src"], pair["warp_src"])
    assert not torch.allclose(lit["warp_src"] - pair["warp_src"],
                              lit["warp_tgt"] - pair["warp_tgt"])
    with pytest.raises(ValueError, match="grid"):
        smooth_deformation(g, S, 1.0, 1)


def test_self_warp_stage1_pairs_are_each_photo_and_a_bent_reframed_copy_with_exact_flow():
    """``data.stage1_targets="self_warp"``: item 2i is quartet i's r1, 2i+1 its r2, paired with
    itself; augmented, the source is re-framed and bent and the flow stays exact: the target
    read at the flow gives back the source where the pair is matchable, and the identity flow
    does not. A config naming an unknown target is refused with the choices."""
    from cyclecorr.train.data import AugmentedDataset
    from cyclecorr.train.run_data import PhotoPairs

    q = SyntheticQuartets(3, 48, seed=3)
    pairs = PhotoPairs(q)
    assert len(pairs) == 6
    assert torch.equal(pairs[3]["src"], q[1]["r2"]) and torch.equal(pairs[3]["tgt"], q[1]["r2"])
    assert torch.equal(pairs[4]["src"], q[2]["r1"]) and float(pairs[4]["flow"].abs().max()) == 0
    ds = AugmentedDataset(pairs, 0, _aug(zoom=1.0, zoom_min=0.8, zoom_max=1.2, zoom_shift=0.1,
                                         zoom_fill="texture", warp_deform=4.0),
                          keys=("src", "tgt", "flow", "valid"), real_keys=("src", "tgt"),
                          render_keys=(), bend=True)
    plain = AugmentedDataset(pairs, 0, _aug(zoom=1.0, zoom_min=0.8, zoom_max=1.2, zoom_shift=0.1,
                                            zoom_fill="texture"),
                             keys=("src", "tgt", "flow", "valid"), real_keys=("src", "tgt"),
                             render_keys=())
    it, flat = ds[(0, 2, 1)], plain[(0, 2, 1)]
    assert torch.equal(it["tgt"], flat["tgt"])  # the bend touches the source side only
    assert not torch.equal(it["src"], flat["src"]) and not torch.equal(it["flow"], flat["flow"])
    m = it["valid"].bool()
    assert 0.3 * 48 * 48 < int(m.sum()) and float(it["flow"].norm(dim=0)[m[0]].mean()) > 1.0
    err = ((warp(it["tgt"][None], it["flow"][None]) - it["src"][None]).abs() * m).sum()
    still = ((it["tgt"][None] - it["src"][None]).abs() * m).sum()
    assert float(err) < 0.3 * float(still)
    with pytest.raises(ValueError, match="self_warp"):
        load_config("cpu", ["data.stage1_targets=warp"])


def test_warp_deformation_draws_leave_every_other_draw_alone():
    """Turning the deformation on changes the self-warp source and its flow, nothing else of
    an item (its own random stream), and stays a pure function of (seed, step, position)."""
    from cyclecorr.train.config import load_config
    from cyclecorr.train.data import AugmentedDataset

    kw = dict(zoom=1.0, zoom_min=0.7, zoom_max=1.3, zoom_fill="texture")
    plain = AugmentedDataset(SyntheticQuartets(4, 32, seed=6), 0, _aug(**kw), self_warp=True)
    bent = AugmentedDataset(SyntheticQuartets(4, 32, seed=6), 0,
                            _aug(warp_deform=3.0, warp_jitter=0.2, **kw), self_warp=True)
    a, b, b2 = plain[(1, 5, 0)], bent[(1, 5, 0)], bent[(1, 5, 0)]
    assert all(torch.equal(b[k], b2[k]) for k in b)
    for k in a:
        changed = not torch.equal(a[k], b[k])
        assert changed == (k in ("warp_src", "warp_tgt", "flow_warp", "match_warp")), k
    with pytest.raises(ValueError, match="warp_deform"):
        load_config("cpu", ["augment.warp_deform=-1"])


def test_cycle_step_with_self_warp_adds_the_weighted_pair_loss_in_one_pass():
    from cyclecorr.losses import truncated_flow_loss
    from cyclecorr.train.data import AugmentedDataset

    ds = AugmentedDataset(SyntheticQuartets(4, 32, seed=6), seed=0, self_warp=True,
                          augment=_aug(zoom_min=0.7, zoom_max=1.3, zoom_fill="texture"))
    items = [ds[(i, 3, i)] for i in range(2)]
    assert items[0]["warp_src"].shape == (3, 32, 32) and items[0]["match_warp"].shape == (1, 32, 32)
    again = ds[(0, 3, 0)]  # deterministic per (index, step, position)
    assert torch.equal(again["warp_tgt"], items[0]["warp_tgt"])
    batch = collate(items)
    net = _tiny_net(2)
    net.eval()
    base, _ = cycle_step_loss(net, batch, CycleLossConfig(truncation=3.75))
    cfg = CycleLossConfig(truncation=3.75, warp_weight=0.5)
    model = CycleModule(net)
    loss, m = cycle_step_loss(model, batch, cfg)
    direct = net(batch["warp_src"], batch["warp_tgt"])["flow"]
    l_w, _ = truncated_flow_loss(direct, batch["flow_warp"], batch["match_warp"], 3.75, "sum")
    l_w = l_w.detach()
    assert float(l_w) > 0 and torch.allclose(loss.detach(), base.detach() + 0.5 * l_w, rtol=1e-5)
    assert m["loss_warp"] == pytest.approx(float(l_w), rel=1e-5) and "warp_epe" in m
    del batch["match_warp"]
    with pytest.raises(ValueError, match="match_warp"):
        cycle_step_loss(model, batch, cfg)
    with pytest.raises(ValueError, match="warp_weight"):
        CycleLossConfig(warp_weight=-1)


def test_direct_term_scores_the_quartets_own_renders_in_the_same_pass():
    """loss.direct_weight adds direct_weight × (truncated flow loss + match_weight × BCE) of the
    network's own s1→s2 prediction against the renderer's flow and matchability, for both
    architectures and beside the self-warp pair (the decoded pairs keep their places)."""
    from cyclecorr.losses import matchability_loss, truncated_flow_loss
    from cyclecorr.model import build_network
    from cyclecorr.train.data import AugmentedDataset

    ds = AugmentedDataset(SyntheticQuartets(4, 32, seed=6), seed=0, self_warp=True,
                          augment=_aug(zoom_min=0.7, zoom_max=1.3, zoom_fill="texture"))
    batch = collate([ds[(i, 3, i)] for i in range(2)])
    for net in (_tiny_net(2), build_network({"arch": "costvol", "image_size": 32, "width": 0.5})):
        torch.manual_seed(0)
        for p in net.parameters():  # non-zero heads
            p.data.add_(0.01 * torch.randn_like(p))
        net.eval()
        base_cfg = CycleLossConfig(truncation=3.75, warp_weight=0.5, supervised_truncation=6.0,
                                   match_weight=2.0)
        cfg = CycleLossConfig(truncation=3.75, warp_weight=0.5, supervised_truncation=6.0,
                              direct_weight=0.25, match_weight=2.0)
        base, mb = cycle_step_loss(net, batch, base_cfg)
        loss, m = cycle_step_loss(net, batch, cfg)
        out = net(batch["s1"], batch["s2"])
        l_f, _ = truncated_flow_loss(out["flow"], batch["flow_s1s2"], batch["match_s1s2"], 6.0,
                                     "sum")
        l_m, _ = matchability_loss(out["matchability"], batch["match_s1s2"], "sum")
        term = float((l_f + 2.0 * l_m).detach())
        assert term > 0
        assert float(loss.detach()) == pytest.approx(float(base.detach()) + 0.25 * term, rel=1e-5)
        assert m["loss_direct"] == pytest.approx(term, rel=1e-5)
        assert m["loss_warp"] == pytest.approx(mb["loss_warp"], rel=1e-5)  # warp pair unchanged
        assert {"direct_epe", "direct_px5", "direct_match_acc"} <= set(m)
        loss.backward()
        assert all(p.grad is not None for p in net.parameters())
    with pytest.raises(ValueError, match="direct_weight"):
        CycleLossConfig(direct_weight=-1)


def test_texture_matrix_upsampling_equals_bicubic_interpolate():
    """The textures' separable-matmul upsampling reproduces F.interpolate(bicubic) (up- and
    down-sampling, square sizes) up to float rounding, with the same random draws."""
    import torch.nn.functional as F

    from cyclecorr.train.data import _texture

    def reference(g, size, scales):
        img = torch.zeros(1, 3, size, size)
        for i, s in enumerate(scales):
            noise = torch.rand(1, 3, s, s, generator=g)
            img = img + F.interpolate(noise, size=(size, size), mode="bicubic",
                                      align_corners=False) / (1.5 ** i)
        img = img - img.amin(dim=(2, 3), keepdim=True)
        return img / img.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)

    for size, scales in ((128, (4, 8, 16, 32)), (77, (2, 4, 8)), (5, (4, 8))):
        a = reference(torch.Generator().manual_seed(size), size, scales)
        b = _texture(torch.Generator().manual_seed(size), size, scales)
        assert b.shape == (1, 3, size, size)
        assert torch.allclose(a, b, atol=2e-6), (size, float((a - b).abs().max()))


_FAULTS_SCRIPT = """
import resource, sys
import torch
if sys.argv[1] == "keep":
    from cyclecorr._runtime import keep_freed_memory
    assert keep_freed_memory() is True
def cycle():  # a training step's pattern: large activations allocated, used, freed
    xs = [torch.ones(n) for n in (16 << 20, 8 << 20, 2 << 20)]
    del xs
for _ in range(5):
    cycle()
a = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    cycle()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - a)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator setting")
def test_keep_freed_memory_stops_page_faults_per_step():
    """runtime.keep_memory: re-allocating freed activations touches no new pages, where the
    default allocator maps each block above 32 MB afresh and faults all its pages in again."""
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, mode], check=True,
                             capture_output=True, text=True, cwd=Path(__file__).parent.parent)
        return int(out.stdout.split()[-1])

    pages = 3 * (26 << 20) * 4 // resource.getpagesize()  # three cycles of 26 Mi float32
    default, kept = faults("default"), faults("keep")
    assert default > pages // 2, default  # the control: the default allocator faults each time
    assert kept < pages // 20, kept


def test_code_version_names_the_sources(tmp_path):
    """code_version carries a digest of the package sources: equal trees give equal digests, one
    changed byte or a renamed file another, caches are ignored."""
    from cyclecorr.train.state import code_version, source_digest

    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "m.py").write_text("x = 1\n")
    (a / "sub" / "n.py").write_text("y = 2\n")
    d = source_digest(a)
    (a / "__pycache__").mkdir()
    (a / "__pycache__" / "m.py").write_text("cached")
    (a / "notes.txt").write_text("not a source")
    assert source_digest(a) == d
    (a / "sub" / "n.py").write_text("y = 3\n")
    assert source_digest(a) != d
    (a / "sub" / "n.py").write_text("y = 2\n")
    assert source_digest(a) == d
    (a / "sub" / "n.py").rename(a / "sub" / "o.py")
    assert source_digest(a) != d
    assert code_version().endswith(f"src.{source_digest()}")
