"""Stage-1 SIFT-flow pairs and the end-to-end demo (procedural meshes → quartets → training →
matching → pictures)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cyclecorr.geometry import warp
from cyclecorr.train.config import AugmentConfig
from cyclecorr.train.data import AugmentedDataset, SiftPairs, SyntheticQuartets, sample_stage1_pairs

torch.set_num_threads(1)


def test_stage1_pairs_are_fixed():
    p = sample_stage1_pairs(10, 50, seed=1, source="random")
    assert p == sample_stage1_pairs(10, 50, seed=1, source="random")
    assert all(i != j and a == "r1" and b == "r2" for i, a, j, b in p)
    q = sample_stage1_pairs(10, 10, 1)  # default: r1, r2 of one quartet, no repeats
    assert all(i == j for i, _, j, _ in q) and sorted(i for i, *_ in q) == list(range(10))
    with pytest.raises(ValueError, match="source"):
        sample_stage1_pairs(10, 5, 1, source="real")


def test_sift_pairs_cache_and_flip(tmp_path):
    q = SyntheticQuartets(3, 32, seed=2)
    pairs = sample_stage1_pairs(3, 2, seed=0)
    ds = SiftPairs(q, pairs, tmp_path / "sift", workers=1, progress=False)
    assert len(ds) == 2 and len(list((tmp_path / "sift").glob("*.npz"))) == 2
    item = ds[0]
    assert item["src"].shape == (3, 32, 32) and item["flow"].shape == (2, 32, 32)
    assert item["valid"].shape == (1, 32, 32) and torch.isfinite(item["flow"]).all()
    i, ka, j, kb = pairs[0]
    assert torch.equal(item["src"], q[i][ka]) and torch.equal(item["tgt"], q[j][kb])
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "sift").glob("*.npz")}
    SiftPairs(q, pairs, tmp_path / "sift", workers=1, progress=False)  # cached: no recompute
    assert mtimes == {p: p.stat().st_mtime_ns for p in (tmp_path / "sift").glob("*.npz")}
    aug = AugmentedDataset(ds, seed=0, augment=AugmentConfig(hflip=1.0),
                           keys=("src", "tgt", "flow", "valid"))
    f = aug[(0, 0, 0)]
    assert torch.allclose(f["flow"][0], -item["flow"][0].flip(-1))
    assert torch.equal(f["src"], item["src"].flip(-1))


def test_procedural_quartets_have_consistent_ground_truth():
    from cyclecorr.train.demo import build_demo_quartets

    qs = build_demo_quartets(2, size=48, seed=3, progress=False)
    for q in qs:
        assert q["s1"].shape == (3, 48, 48) and q["flow_s1s2"].shape == (2, 48, 48)
        m = q["match_s1s2"][None]
        assert float(m.sum()) > 0.2 * float(q["mask_s1"].sum())
        err = lambda f: float(((warp(q["s2"][None], f) - q["s1"][None]).abs() * m).sum())  # noqa
        # s2 read along the renderer's flow looks like s1 far more than without moving
        assert err(q["flow_s1s2"][None]) < 0.6 * err(torch.zeros(1, 2, 48, 48))


def test_demo_command_end_to_end(tmp_path, capsys):
    from cyclecorr.cli import main

    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--quartets", "4", "--no-progress", "--set",
               "stage1.iterations=2", "stage2.iterations=2", "stage1.batch_size=2",
               "stage2.batch_size=2", "data.val_count=2", "net.image_size=32",
               "net.width=0.125"])
    assert rc == 0
    text = capsys.readouterr().out
    assert str(out) in text and "index.html" in text
    s = json.loads((out / "summary.json").read_text())
    assert (out / "run" / "final.safetensors").is_file()
    assert (out / "index.html").is_file() and (out / "quartets.png").is_file()
    assert (out / "match_demo_model" / "flow.png").is_file()
    assert "cycle_epe" in s["validation"] and np.isfinite(s["validation"]["cycle_epe"])
    assert len(list((out / "run" / "pictures").glob("*.png"))) == 2
    # the page says what ran: a tiny model, its validation numbers beside the zero flow's,
    # the training quartets, and each model's card
    page = (out / "index.html").read_text()
    v, z = s["validation"], s["zero_flow_validation"]
    assert "tiny network" in page and "src='quartets.png'" in page
    assert f"<td>{v['direct_epe']:.2f}</td><td>{z['direct_epe']:.2f}</td>" in page
    assert 0 < z["direct_epe"] and 0 <= z["direct_pck"] <= 1 and 0 < z["match_acc"] <= 1
    assert "href='run/MODEL_CARD.md'" in page and "href='model_card_2.md'" in page
    assert (out / "model_card_2.md").is_file()
