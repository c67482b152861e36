"""Render pairs across instances (two gsnet cars of one topology): prepared shards are a pure
function of the seed and their index (resume = uninterrupted), matchable pixels land on the other
car, and training adds the supervised pair term in the cycle's one pass."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from cyclecorr.data import DataError
from cyclecorr.data.render_pairs import (
    PAIR_KEYS,
    PairConfig,
    RenderPairDataset,
    prepare_render_pairs,
    topology_groups,
)


@pytest.fixture(scope="module")
def gsnet3(data_dir, tmp_path_factory):
    cad = tmp_path_factory.mktemp("gsnet3")
    for i in (0, 1, 2):
        os.symlink(data_dir / "cad" / "car" / "gsnet" / f"{i}.obj", cad / f"{i}.obj")
    return cad


@pytest.fixture(scope="module")
def pairs(gsnet3, tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs") / "p"
    s = prepare_render_pairs([gsnet3], out, 10, PairConfig(shard_size=4, size=64),
                             progress=False, log=lambda *_: None)
    return out, s


def test_prepared_pairs_read_back_and_land_on_the_other_car(pairs):
    out, s = pairs
    assert s["made"] == 10 and s["groups"] == [3]
    ds = RenderPairDataset(out, verify=True)
    assert len(ds) == 10
    man = json.loads((out / "manifest.json").read_text())
    from safetensors.numpy import load_file
    from scipy.ndimage import binary_dilation

    for sh in man["shards"]:
        t = load_file(str(out / sh["file"]))
        assert (t["model_src"] != t["model_tgt"]).all()  # two different cars per pair
        for k in range(len(t["src"])):
            m = t["match"][k] > 0
            assert m.mean() > 0.05 and (m <= (t["mask_src"][k] > 0)).all()
            ys, xs = np.nonzero(m)
            q = np.stack([xs + t["flow"][k, 0, ys, xs], ys + t["flow"][k, 1, ys, xs]], 1)
            qi = np.clip(np.rint(q).astype(int), 0, 63)
            near = binary_dilation(t["mask_tgt"][k] > 0)  # silhouette pixels: within a pixel
            assert near[qi[:, 1], qi[:, 0]].mean() > 0.995  # a matchable point lands on the car
    item = ds[7]
    assert set(item) == set(PAIR_KEYS)
    assert item["pair_src"].shape == (3, 64, 64) and item["flow_pair"].shape == (2, 64, 64)
    assert set(item["match_pair"].unique().tolist()) <= {0.0, 1.0}


def test_resume_regenerates_a_missing_shard_byte_for_byte(pairs, gsnet3):
    out, _ = pairs
    f = out / "pairs" / "pairs-00001.safetensors"
    before = f.read_bytes()
    f.unlink()
    s = prepare_render_pairs([gsnet3], out, 10, PairConfig(shard_size=4, size=64),
                             progress=False, log=lambda *_: None)
    assert s["made"] == 4 and f.read_bytes() == before
    again = prepare_render_pairs([gsnet3], out, 10, PairConfig(shard_size=4, size=64),
                                 progress=False, log=lambda *_: None)
    assert again["made"] == 0
    with pytest.raises(DataError, match="other parameters"):
        prepare_render_pairs([gsnet3], out, 10, PairConfig(shard_size=4, size=64, seed=1),
                             progress=False, log=lambda *_: None)


def test_models_without_a_shared_topology_are_refused(data_dir, tmp_path):
    cad = tmp_path / "cad"
    cad.mkdir()
    os.symlink(data_dir / "cad" / "car" / "gsnet" / "0.obj", cad / "0.obj")
    os.symlink(data_dir / "cad" / "pascal3d" / "car01.json", cad / "car01.json")
    assert topology_groups([str(cad / "0.obj"), str(cad / "car01.json")]) == []
    with pytest.raises(DataError, match="share a topology"):
        prepare_render_pairs([cad], tmp_path / "o", 4, progress=False, log=lambda *_: None)


def test_training_adds_the_pair_term_in_one_pass(pairs):
    """A cycle step with loss.pair_weight > 0 predicts the render pair with the quartets (one
    forward) and adds pair_weight × (flow loss + match_weight × BCE): the total equals the cycle
    step without it plus that term, for both architectures; the pairs ride in the augmented items
    deterministically; a configuration without data.render_pairs is refused."""
    from cyclecorr.losses import CycleLossConfig, matchability_loss, truncated_flow_loss
    from cyclecorr.model import build_network
    from cyclecorr.train.config import AugmentConfig, load_config
    from cyclecorr.train.data import AugmentedDataset, SyntheticQuartets, collate
    from cyclecorr.train.modules import CycleModule
    from cyclecorr.train.steps import cycle_step_loss

    out, _ = pairs
    rp = RenderPairDataset(out)
    aug = AugmentConfig(hflip=0.5, render_background=0.5)
    ds = AugmentedDataset(SyntheticQuartets(4, size=64, seed=0), 3, aug, pairs=rp)
    a, b = ds[(1, 5, 0)], ds[(1, 5, 0)]
    assert all(torch.equal(a[k], b[k]) for k in PAIR_KEYS)
    without = AugmentedDataset(SyntheticQuartets(4, size=64, seed=0), 3, aug)[(1, 5, 0)]
    assert all(torch.equal(a[k], without[k]) for k in without)  # other draws unchanged
    batch = collate([ds[(i, 2, i)] for i in range(2)])
    for net_cfg in ({"width": 0.25, "image_size": 64}, {"arch": "costvol", "image_size": 64,
                                                         "width": 0.5}):
        torch.manual_seed(0)
        net = build_network(net_cfg)
        for p in net.parameters():  # non-zero heads
            p.data.add_(0.01 * torch.randn_like(p))
        base = CycleLossConfig(truncation=7.5)
        with_pair = CycleLossConfig(truncation=7.5, pair_weight=0.5)
        l0, _ = cycle_step_loss(net, batch, base)
        l1, m1 = cycle_step_loss(net, batch, with_pair)
        pred = CycleModule(net)(batch["s1"], batch["r1"], batch["r2"], batch["s2"],
                                pair_src=batch["pair_src"], pair_tgt=batch["pair_tgt"])
        lf, _ = truncated_flow_loss(pred["flow_pair"], batch["flow_pair"], batch["match_pair"],
                                    7.5, "sum")
        lm, _ = matchability_loss(pred["match_pair"], batch["match_pair"], "sum")
        expected = float(l0.detach()) + 0.5 * float((lf + lm).detach())
        assert float(l1.detach()) == pytest.approx(expected, rel=1e-5)
        assert "loss_pair" in m1 and "pair_match_acc" in m1
        l1.backward()
        assert all(p.grad is not None for p in net.parameters())
    with pytest.raises(ValueError, match="render_pairs"):
        load_config("smoke", ["loss.pair_weight=1"])


def test_evaluation_only_models_are_refused_as_by_prepare(data_dir, tmp_path):
    """A chair folder holding a PASCAL3D+ chair (evaluation-only) is refused before anything is
    rendered, naming the model and the override; the CLI's override lets it past the rule."""
    from cyclecorr.cli import main

    cad = tmp_path / "cad"
    cad.mkdir()
    for i in (0, 1):  # a topology group, so only the rule can refuse
        os.symlink(data_dir / "cad" / "car" / "gsnet" / f"{i}.obj", cad / f"{i}.obj")
    os.symlink(data_dir / "cad" / "pascal3d" / "chair01.json", cad / "chair01.json")
    with pytest.raises(DataError, match="chair01.json.*evaluation-only|evaluation-only.*chair01"):
        prepare_render_pairs([cad], tmp_path / "o", 1, PairConfig(category="chair", size=32),
                             progress=False, log=lambda *_: None)
    assert not (tmp_path / "o" / "plan.json").exists()
    assert main(["prepare-pairs", "--cad", str(cad), "--out", str(tmp_path / "o2"), "--pairs",
                 "1", "--category", "chair", "--workers", "1", "--quiet",
                 "--allow-evaluation-models"]) == 0
    plan = json.loads((tmp_path / "o2" / "plan.json").read_text())
    assert any(m.endswith("chair01.json") for m in plan["models"])
