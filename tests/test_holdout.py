"""The evaluation-only rule: PASCAL3D+ chair and aeroplane models never enter training unless
asked for; PASCAL3D+ cars do (the shipped car model trained on them)."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from cyclecorr.data import DataError
from cyclecorr.data.holdout import (
    EVALUATION_ONLY,
    TRAINING_ALLOWED,
    check_training_models,
    evaluation_only_models,
)


def _pascal3d_json(path, seed):
    """A small PASCAL3D+-style model: a box with two named keypoints."""
    rng = np.random.default_rng(seed)
    h = rng.uniform(0.2, 0.4, 3)
    v = [[x * h[0], y * h[1], z * h[2]] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = [x for q in quads for x in (4, *q)]
    path.write_text(json.dumps({"vertices": np.ravel(v).tolist(), "faces": faces,
                                "keypoints": {"a": {"x": h[0], "y": h[1], "z": h[2]},
                                              "b": {"x": -h[0], "y": h[1], "z": h[2]}}}))
    return path


def _obj_box(path):
    v = [(x, y, z) for x in (-1, 1) for y in (0, 1) for z in (-2, 2)]
    f = ["1 2 4", "1 4 3", "5 7 8", "5 8 6", "1 5 6", "1 6 2", "3 4 8", "3 8 7", "1 3 7",
         "1 7 5", "2 6 8", "2 8 4"]
    path.write_text("".join(f"v {a} {b} {c}\n" for a, b, c in v) + "".join(f"f {x}\n" for x in f))
    return path


def test_rule_per_category(tmp_path):
    files = [_pascal3d_json(tmp_path / n, i) for i, n in
             enumerate(("chair01.json", "chair07.json", "aeroplane03.json", "car01.json"))]
    files.append(_obj_box(tmp_path / "chair_ikea.obj"))
    assert set(EVALUATION_ONLY) == {"chair", "aeroplane"} and "car" in TRAINING_ALLOWED
    assert [p.split("/")[-1] for p in evaluation_only_models(files, "chair")] == [
        "chair01.json", "chair07.json"]
    assert [p.split("/")[-1] for p in evaluation_only_models(files, "aeroplane")] == [
        "aeroplane03.json"]
    assert evaluation_only_models(files, "car") == []          # documented exception
    assert check_training_models(files, "car") == []
    with pytest.raises(DataError, match=r"2 chair CAD model\(s\) are evaluation-only.*"
                                        r"chair01.json, chair07.json.*--allow-evaluation-models"):
        check_training_models(files, "chair")
    logs = []
    assert len(check_training_models(files, "chair", allow=True, log=logs.append)) == 2
    assert "warning" in logs[0] and "synth-kp-chair" in logs[0]


def test_prepare_refuses_then_allows_on_request(data_dir, tmp_path, capsys, voc_folder):
    from cyclecorr.commands import prepare_cmd

    cad = tmp_path / "cad"
    cad.mkdir()
    _pascal3d_json(cad / "chair01.json", 0)
    _pascal3d_json(cad / "chair02.json", 1)
    _obj_box(cad / "other_chair.obj")
    p = argparse.ArgumentParser()
    prepare_cmd.add_arguments(p)
    base = ["--category", "chair", "--real", voc_folder("chair"),
            "--cad", str(cad), "--out", str(tmp_path / "q"), "--quartets", "0", "--workers", "1",
            "--azimuth-step", "90", "--elevations", "10", "--k", "2", "--quiet",
            "--bank-cache", str(tmp_path / "banks")]
    from cyclecorr.cli import main

    assert main(["prepare", *base]) == 2
    err = capsys.readouterr().err
    assert "evaluation-only" in err and "chair01.json, chair02.json" in err
    assert "--allow-evaluation-models" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "q" / "plan.json").exists()  # refused before any work
    assert prepare_cmd.run(p.parse_args(base + ["--allow-evaluation-models"])) == 0
    out = capsys.readouterr().out
    assert "warning: 2 evaluation-only chair CAD model(s) enter training" in out
    plan = json.loads((tmp_path / "q" / "plan.json").read_text())
    assert sorted(x.split("/")[-1] for x in plan["evaluation_models_allowed"]) == [
        "chair01.json", "chair02.json"]
    assert len(plan["models"]) == 3
