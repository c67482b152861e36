"""Shipped models: `cyclecorr models`, the listing behind it, and the error that names them."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from cyclecorr.checkpoint import shipped_model_path, shipped_models
from cyclecorr.cli import main


def test_shipped_models_listing(tmp_path):
    save_file({"w": torch.zeros(256)}, str(tmp_path / "chair.safetensors"),
              metadata={"cyclecorr": json.dumps({"net": {"width": 0.5, "image_size": 128}})})
    (tmp_path / "chair.md").write_text("intro\n# cyclecorr model: chair (test)\n\nbody\n")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    ms = shipped_models(tmp_path)
    assert [m["category"] for m in ms] == ["broken", "chair"]
    broken, chair = ms
    assert chair["file"] == tmp_path / "chair.safetensors"
    assert chair["card"] == tmp_path / "chair.md"
    assert chair["size_bytes"] == (tmp_path / "chair.safetensors").stat().st_size
    assert chair["title"] == "cyclecorr model: chair (test)" and chair["net"]["width"] == 0.5
    assert broken["card"] is None and "broken.safetensors" in broken["error"]
    assert shipped_models(tmp_path / "absent") == []


def test_models_command_and_missing_category(capsys):
    ms = shipped_models()
    rc = main(["models"])
    out = capsys.readouterr().out
    assert rc == 0
    for m in ms:
        assert m["category"] in out and m["file"].name in out
        assert f"{m['size_bytes'] / 2 ** 20:.1f} MiB" in out
    rc = main(["models", "--json"])
    listed = json.loads(capsys.readouterr().out)
    assert [m["category"] for m in listed] == [m["category"] for m in ms]
    from cyclecorr import Matcher

    with pytest.raises(FileNotFoundError) as e:
        Matcher.from_checkpoint(category="no-such-category")
    msg = str(e.value)
    assert "no shipped model for category 'no-such-category'" in msg
    assert "cyclecorr models" in msg
    for m in ms:
        assert f"{m['category']} ({m['file'].name}" in msg
    with pytest.raises(FileNotFoundError, match="no-such-category"):
        shipped_model_path("no-such-category")


def test_match_command_category(tmp_path, capsys):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    rng = np.random.default_rng(0)
    for p in (a, b):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(p)
    rc = main(["match", str(a), str(b), "--out", str(tmp_path / "o"), "--category", "nope"])
    assert rc == 2
    assert "no shipped model for category 'nope'" in capsys.readouterr().err
    # a baseline needs no model, whatever the category
    rc = main(["match", str(a), str(b), "--out", str(tmp_path / "z"), "--method", "zero",
               "--category", "nope"])
    assert rc == 0 and (tmp_path / "z" / "index.html").is_file()


def test_methods_name_shipped_models_and_note_other_categories(tmp_path):
    from cyclecorr.commands.evaluate_cmd import category_mismatches, set_category
    from cyclecorr.evaluate.methods import ZeroFlow, make_method, model_path

    ms = shipped_models()
    if not ms:
        pytest.skip("no shipped model in cyclecorr/weights")
    for m in ms:
        assert model_path(f"shipped:{m['category']}") == m["file"]
    assert model_path("shipped") == model_path(None) == shipped_model_path("car")
    assert model_path("runs/x.safetensors").name == "x.safetensors"
    with pytest.raises(FileNotFoundError, match="no shipped model for category 'boat'"):
        make_method("b=shipped:boat", device="cpu")
    car = make_method("c=shipped:car", device="cpu")
    assert car.meta["path"] == str(shipped_model_path("car"))
    assert set_category("synth-kp-chair") == "chair" and set_category("flowweb-car") == "car"
    assert set_category("pf-willow") is None and set_category("tss") is None
    notes = category_mismatches([car, ZeroFlow(128)], ["flowweb-car", "synth-kp-chair", "tss"])
    assert notes == ["note: c was trained on cars and synth-kp-chair shows chairs "
                     "(a shipped model of that category: shipped:chair)"]
