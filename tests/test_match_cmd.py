"""``cyclecorr match`` and ``cyclecorr evaluate`` end to end (small inputs, a fresh model file)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cyclecorr.checkpoint import save_model
from cyclecorr.cli import main
from cyclecorr.model import build_network


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    net = build_network()
    # non-zero output layers so that flow and matchability are not constant
    for head in (net.flow_decoder, net.match_decoder):
        last = [m for m in head if isinstance(m, torch.nn.Conv2d)][-1]
        torch.nn.init.normal_(last.weight, std=0.01)
    p = tmp_path_factory.mktemp("model") / "m.safetensors"
    save_model(p, net, {"stage": 2, "step": 1})
    return p


def _img(path, h, w, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


EXPECTED = ["source.png", "target.png", "flow.png", "warped.png", "matchability.png",
            "warped_masked.png", "transfer.png", "flow.flo", "matchability.npy", "transfer.txt"]


def test_match_odd_sizes_writes_everything(tmp_path, model_file):
    a = _img(tmp_path / "a.png", 37, 53, 0)
    b = _img(tmp_path / "b.jpg", 61, 45, 1)
    kp = tmp_path / "kps.txt"
    kp.write_text("# x y\n3 4\n50.5 30\n")
    out = tmp_path / "out"
    rc = main(["match", str(a), str(b), "--out", str(out), "--model", str(model_file),
               "--keypoints", str(kp)])
    assert rc == 0
    d = out / "a-b"
    for f in EXPECTED:
        assert (d / f).is_file(), f
    with Image.open(d / "flow.png") as im:
        assert im.size == (53, 37)
    assert np.load(d / "matchability.npy").shape == (37, 53)
    t = np.loadtxt(d / "transfer.txt")
    assert t.shape == (2, 4)
    np.testing.assert_allclose(t[:, :2], [[3, 4], [50.5, 30]])
    page = (out / "index.html").read_text()
    assert "a-b/flow.png" in page and "Your 2 keypoints" in page
    assert (out / "model_card.md").is_file() is False  # a bare model file has no card
    # one flow scale for the page, from the image sizes: 53 px / 5 -> 10 px
    assert (out / "flow_key_10px.png").is_file()


def test_match_folder_of_pairs(tmp_path):
    src = tmp_path / "pairs"
    (src / "p1").mkdir(parents=True)
    (src / "p2").mkdir()
    _img(src / "p1" / "image1.png", 20, 31, 2)
    _img(src / "p1" / "image2.png", 25, 19, 3)
    _img(src / "p1" / "mask1.png", 20, 31, 4)  # masks are not images to match
    _img(src / "p2" / "x.png", 33, 17, 5)
    _img(src / "p2" / "y.png", 17, 33, 6)
    out = tmp_path / "out"
    assert main(["match", str(src), "--out", str(out), "--method", "zero"]) == 0
    assert (out / "p1" / "flow.png").is_file() and (out / "p2" / "transfer.png").is_file()
    assert not (out / "p1" / "matchability.png").exists()  # zero flow has no matchability
    # a pairs.txt list
    (src / "pairs.txt").write_text("p1/image1.png p2/y.png\n")
    assert main(["match", str(src), "--out", str(tmp_path / "o2"), "--method", "zero"]) == 0
    assert (tmp_path / "o2" / "image1-y" / "warped.png").is_file()


def test_match_bad_inputs_exit_nonzero(tmp_path, capsys, model_file):
    a = _img(tmp_path / "a.png", 30, 30, 0)
    rc = main(["match", str(a), str(tmp_path / "missing.png"), "--out", str(tmp_path / "o"),
               "--method", "zero"])
    assert rc == 2 and "missing.png" in capsys.readouterr().err
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"not a jpeg at all")
    rc = main(["match", str(a), str(bad), "--out", str(tmp_path / "o"), "--method", "zero"])
    assert rc == 2 and "corrupt.jpg" in capsys.readouterr().err
    kp = tmp_path / "k.txt"
    kp.write_text("1 2 3\n")
    rc = main(["match", str(a), str(a), "--out", str(tmp_path / "o"), "--method", "zero",
               "--keypoints", str(kp)])
    assert rc == 2 and "k.txt" in capsys.readouterr().err
    rc = main(["match", str(a), str(a), "--out", str(tmp_path / "o"),
               "--model", str(tmp_path / "nomodel.safetensors")])
    assert rc == 2 and "nomodel.safetensors" in capsys.readouterr().err
    rc = main(["match", str(tmp_path / "nofolder"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "nofolder" in capsys.readouterr().err
    rc = main(["match", str(a), str(a), "--out", str(tmp_path / "o"), "--points", "0"])
    assert rc == 2 and "--points" in capsys.readouterr().err
    rc = main(["match", str(a), str(a), "--out", str(tmp_path / "o"), "--flow-scale", "-3"])
    assert rc == 2 and "--flow-scale" in capsys.readouterr().err
    rc = main(["match", str(a), str(a), "--out", str(tmp_path / "o"), "--refine", "sift"])
    assert rc == 2 and "refine" in capsys.readouterr().err
    rc = main(["match", str(a), str(a), "--out", str(tmp_path / "o"), "--method", "zero",
               "--refine", "siftflow"])
    assert rc == 2 and "--method zero" in capsys.readouterr().err
    rc = main(["match", str(a), str(a), "--out", str(tmp_path / "o"), "--method", "siftflow",
               "--bidirectional"])
    assert rc == 2 and "--bidirectional" in capsys.readouterr().err


def test_match_refined_by_sift_flow_finds_a_shift(tmp_path, model_file):
    """``--refine siftflow``: a textured image against its copy shifted by (5, 3) px is matched
    within 1 px away from the borders (exactly when searched to full size), and the pair's
    record says how it was refined."""
    from scipy import ndimage
    rs = np.random.RandomState(3)
    tex = ndimage.gaussian_filter(rs.rand(140, 140, 3), sigma=(2.0, 2.0, 0))
    tex = (40 + 170 * (tex - tex.min()) / np.ptp(tex)).astype(np.uint8)
    Image.fromarray(tex[:128, :128]).save(tmp_path / "a.png")
    Image.fromarray(tex[3:131, 5:133]).save(tmp_path / "b.png")  # b(p − (5, 3)) = a(p)
    out = tmp_path / "out"
    assert main(["match", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--out", str(out),
                 "--model", str(model_file), "--refine", "siftflow"]) == 0
    from cyclecorr.data.io import read_flo
    flow = read_flo(out / "a-b" / "flow.flo")[:, 16:-16, 16:-16]
    assert np.mean((np.abs(flow[0] + 5) <= 1) & (np.abs(flow[1] + 3) <= 1)) > 0.95
    assert main(["match", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--out",
                 str(tmp_path / "full"), "--model", str(model_file), "--refine",
                 "siftflow:2:4:0"]) == 0
    full = read_flo(tmp_path / "full" / "a-b" / "flow.flo")[:, 16:-16, 16:-16]
    assert np.mean((full[0] == -5) & (full[1] == -3)) > 0.95
    rec = json.loads((out / "a-b" / "pair.json").read_text())
    assert rec["method"]["refine"]["method"] == "siftflow" and rec["settings"]["refine"]
    assert "refined by SIFT flow" in (out / "index.html").read_text()
    assert rec["settings"]["refine"] == "siftflow:2:8:1"
    # --refine none: the model's own flow (this untrained model's is far from the shift)
    assert main(["match", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--out",
                 str(tmp_path / "raw"), "--model", str(model_file), "--refine", "none"]) == 0
    raw = read_flo(tmp_path / "raw" / "a-b" / "flow.flo")[:, 16:-16, 16:-16]
    assert np.mean((raw[0] == -5) & (raw[1] == -3)) < 0.5
    rec = json.loads((tmp_path / "raw" / "a-b" / "pair.json").read_text())
    assert "refine" not in rec["method"] and rec["settings"]["refine"] is None
    # --bidirectional: matched both ways; the refined shift is found from both sides
    assert main(["match", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--out",
                 str(tmp_path / "bi"), "--model", str(model_file), "--refine", "siftflow:2:4:0",
                 "--bidirectional"]) == 0
    bi = read_flo(tmp_path / "bi" / "a-b" / "flow.flo")[:, 16:-16, 16:-16]
    assert np.mean((np.abs(bi[0] + 5) <= 0.5) & (np.abs(bi[1] + 3) <= 0.5)) > 0.95
    rec = json.loads((tmp_path / "bi" / "a-b" / "pair.json").read_text())
    assert rec["settings"]["bidirectional"] is True and rec["method"]["bidirectional"]["tau_px"]
    assert "matched to the source too" in (tmp_path / "bi" / "index.html").read_text()


@pytest.mark.parametrize("category,refined", [("car", True), ("chair", False), (None, False)])
def test_match_default_refinement_follows_the_model_category(tmp_path, category, refined):
    """Without --refine, car models are refined by SIFT flow and matched both ways, and the
    others (and model files that name no category) are not (DEFAULT_REFINE_BY_CATEGORY,
    DEFAULT_BIDIRECTIONAL_CATEGORIES)."""
    torch.manual_seed(0)
    meta = {"stage": 2} if category is None else {"stage": 2,
                                                  "train_config": {"category": category}}
    p = tmp_path / "m.safetensors"
    save_model(p, build_network(), meta)
    a = _img(tmp_path / "a.png", 40, 40, 0)
    out = tmp_path / "out"
    assert main(["match", str(a), str(a), "--out", str(out), "--model", str(p)]) == 0
    rec = json.loads((out / "a-a" / "pair.json").read_text())
    assert ("refine" in rec["method"]) is refined
    assert rec["settings"]["refine"] == ("siftflow:2:8:1" if refined else None)
    assert rec["settings"]["bidirectional"] is refined
    assert ("bidirectional" in rec["method"]) is refined
    if refined:  # --no-bidirectional: one way
        assert main(["match", str(a), str(a), "--out", str(tmp_path / "one"), "--model", str(p),
                     "--no-bidirectional"]) == 0
        rec = json.loads((tmp_path / "one" / "a-a" / "pair.json").read_text())
        assert rec["settings"]["bidirectional"] is False and "bidirectional" not in rec["method"]


def test_evaluate_command_writes_json_and_markdown(tmp_path, data_dir, model_file):
    out = tmp_path / "ev"
    rc = main(["evaluate", "--model", str(model_file), "--methods", "zero,model",
               "--sets", "flowweb-car,tss", "--limit", "2", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    fw = res["sets"]["flowweb-car"]
    assert set(fw) == {"zero", "model"}
    assert fw["model"]["protocol"]["method"]["sha256"] == res["methods"]["model"]["sha256"]
    assert fw["zero"]["n_pairs"] == 2 and fw["model"]["matchability"]["ap"] is not None
    assert res["sets"]["tss"]["zero"]["n_pairs"] == 2
    md = (out / "results.md").read_text()
    assert "## flowweb-car" in md and "| zero |" in md and "| model |" in md
    # the later method against the earlier one, pair by pair, at each alpha; none for TSS
    comp = res["comparisons"]["flowweb-car"]
    assert [(c["a"], c["b"], c["alpha"]) for c in comp] == [("model", "zero", a)
                                                            for a in (0.05, 0.1, 0.15)]
    assert comp[1]["estimate"] == fw["model"]["pck"]["per_keypoint"]["0.1"]
    assert "tss" not in res["comparisons"] and "| model − zero | all |" in md


def test_evaluate_command_bad_arguments(tmp_path, capsys):
    rc = main(["evaluate", "--methods", "zero", "--sets", "nope", "--out", str(tmp_path)])
    assert rc == 2 and "nope" in capsys.readouterr().err
    rc = main(["evaluate", "--methods", "zero", "--sets", "flowweb-car", "--data",
               str(tmp_path / "nodata"), "--out", str(tmp_path)])
    assert rc == 2 and "nodata" in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / "real" / "flowweb-car").mkdir(parents=True)
    rc = main(["evaluate", "--methods", "zero", "--sets", "flowweb-car", "--data", str(empty),
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "flowweb-car" in capsys.readouterr().err


def test_network_method_matches_matcher(model_file):
    from cyclecorr.checkpoint import file_sha256
    from cyclecorr.evaluate.methods import NetworkMethod, dense_match, make_method
    from cyclecorr.matcher import Matcher

    m = make_method("stage1=" + str(model_file), device="cpu")
    assert isinstance(m, NetworkMethod) and m.name == "stage1"
    assert m.describe()["sha256"] == file_sha256(model_file)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (41, 67, 3), dtype=np.uint8)
    b = rng.integers(0, 255, (59, 33, 3), dtype=np.uint8)
    assert isinstance(m.matcher, Matcher) and m.net is m.matcher.net
    ours = dense_match(m, a, b)
    ref = Matcher.from_checkpoint(model_file, device="cpu").match(a, b)
    assert ours["flow"].shape == (41, 67, 2) and ours["matchability"].shape == (41, 67)
    # one inference path: the evaluation's method and the API compute the same bits
    np.testing.assert_array_equal(ours["flow"], ref["flow"])
    np.testing.assert_array_equal(ours["matchability"], ref["matchability"])
    with pytest.raises(ValueError, match="unknown method"):
        make_method("raft")


def test_networks_at_another_input_size(tmp_path, data_dir, model_file):
    from cyclecorr.evaluate.methods import dense_match, make_method
    from cyclecorr.matcher import Matcher

    m = make_method("model:" + str(model_file), device="cpu", net_size=64)
    assert m.size == 64 and m.describe()["size"] == 64
    rng = np.random.default_rng(1)
    a = rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)
    b = rng.integers(0, 255, (45, 33, 3), dtype=np.uint8)
    matcher = Matcher.from_checkpoint(model_file, device="cpu", input_size=64)
    assert matcher.size == 64
    ref = matcher.match(a, b)
    ours = dense_match(m, a, b)
    assert ref["flow"].shape == (50, 70, 2)
    np.testing.assert_array_equal(ours["flow"], ref["flow"])
    at128 = Matcher.from_checkpoint(model_file, device="cpu").match(a, b)
    assert np.abs(at128["flow"] - ref["flow"]).max() > 1e-4  # it did run at another size
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    assert main(["match", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--out",
                 str(tmp_path / "m64"), "--model", str(model_file), "--input-size", "64",
                 "--device", "cpu"]) == 0
    from cyclecorr.data import read_flo

    np.testing.assert_allclose(read_flo(tmp_path / "m64" / "a-b" / "flow.flo").transpose(1, 2, 0),
                               ref["flow"],
                               atol=1e-3)
    out = tmp_path / "ev64"
    rc = main(["evaluate", "--model", str(model_file), "--methods", "zero,model",
               "--sets", "flowweb-car", "--limit", "2", "--net-size", "64", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["methods"]["model"]["size"] == 64 and res["methods"]["zero"]["size"] == 128
    assert "--net-size 64" in res["command"]
    md = (out / "results.md").read_text()
    assert "**model**: network at 64×64" in md and "S = 64/128" in md


def test_evaluate_embedding_picture(tmp_path, data_dir, model_file):
    out = tmp_path / "emb"
    rc = main(["evaluate", "--model", str(model_file), "--methods", "model",
               "--sets", "embedding-car", "--limit", "8", "--out", str(out)])
    assert rc == 0
    r = json.loads((out / "results.json").read_text())["sets"]["embedding-car"]["model"]
    for f in r["files"].values():
        with Image.open(out / f) as im:
            assert im.size[0] > 300
    assert 0.0 <= r["synthetic_nn_azimuth_error_deg"] <= 180.0
    assert 0.0 <= r["voc_pose_knn5_accuracy"] <= 1.0
    assert "![model synthetic]" in (out / "results.md").read_text()
    rc = main(["evaluate", "--methods", "zero", "--sets", "embedding-car", "--out", str(out)])
    assert rc == 2


def test_bf16_precision_is_explicit_close_and_recorded(tmp_path, data_dir, model_file):
    """``precision="bf16"`` runs the network under bf16 autocast (outputs differ from float32,
    by little for the shipped model), returns float32, is recorded in the report, and a bad
    precision is refused by name."""
    from cyclecorr.evaluate.methods import make_method
    from cyclecorr.matcher import Matcher

    rng = np.random.default_rng(3)
    a = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
    b = np.ascontiguousarray(np.roll(a, 5, axis=1))
    ref = Matcher.from_checkpoint(None, device="cpu").match(a, b)
    low = Matcher.from_checkpoint(None, device="cpu", precision="bf16").match(a, b)
    assert low["flow"].dtype == np.float32 and low["matchability"].dtype == np.float32
    d = np.abs(low["flow"] - ref["flow"])
    assert d.max() > 0  # bf16 was used
    assert d.mean() < 0.05 and np.abs(low["matchability"] - ref["matchability"]).mean() < 0.01
    m = make_method("model", device="cpu", precision="bf16")
    assert m.describe()["precision"] == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        make_method("model", device="cpu", precision="fp8")
    out = tmp_path / "ev"
    rc = main(["evaluate", "--model", str(model_file), "--methods", "model", "--sets", "tss",
               "--limit", "2", "--precision", "bf16", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["methods"]["model"]["precision"] == "bf16" and "--precision bf16" in res["command"]
    assert "128×128 in bf16" in (out / "results.md").read_text()


def test_evaluate_progress_bars_name_method_and_set(tmp_path, data_dir, capsys):
    rc = main(["evaluate", "--methods", "zero", "--sets", "flowweb-car", "--limit", "2",
               "--out", str(tmp_path / "ev")])
    assert rc == 0
    assert "zero on flowweb-car" in capsys.readouterr().err


def test_help_documents_every_option(capsys):
    """Every option of the user-facing commands says what it does (and the defaults users ask
    about are stated)."""
    import argparse

    from cyclecorr.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("demo", "match", "evaluate", "train", "compare", "prepare", "render", "siftflow"):
        for action in subs.choices[name]._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"cyclecorr {name} {action.option_strings[0]} has no help"
    helps = {n: subs.choices[n].format_help() for n in ("match", "train")}
    assert "default: the car model shipped" in " ".join(helps["match"].split())
    assert "about an hour" not in helps["train"] and "13 min" in " ".join(helps["train"].split())


def test_evaluate_command_with_a_refined_model(tmp_path, data_dir, model_file):
    """``--methods model,model+siftflow``: both rows on the same pairs, the refined one recorded
    as such (results.json and results.md), its matchability the model's."""
    out = tmp_path / "ev"
    assert main(["evaluate", "--model", str(model_file), "--methods", "model,model+siftflow",
                 "--sets", "flowweb-car", "--limit", "2", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    fw = res["sets"]["flowweb-car"]
    assert set(fw) == {"model", "model+siftflow"}
    assert res["methods"]["model+siftflow"]["refine"] == {
        "method": "siftflow", "level": 2, "window": 8, "stop_level": 1,
        "params": res["methods"]["model+siftflow"]["refine"]["params"],
        "matchability": "the network's"}
    assert "refine" not in res["methods"]["model"]
    assert fw["model+siftflow"]["matchability"]["ap"] == fw["model"]["matchability"]["ap"]
    assert "refined by SIFT flow from pyramid level 2" in (out / "results.md").read_text()


def test_match_category_names_the_model_that_ran(tmp_path):
    """``--category chair`` runs the shipped chair model; the page's record names it (not the car
    model) and, by the chair category, leaves its flow unrefined."""
    from cyclecorr.checkpoint import shipped_model_path

    a = _img(tmp_path / "a.png", 40, 40, 0)
    out = tmp_path / "out"
    assert main(["match", str(a), str(a), "--out", str(out), "--category", "chair"]) == 0
    rec = json.loads((out / "a-a" / "pair.json").read_text())
    assert rec["model"]["category"] == "chair" and rec["model"]["name"].startswith("chair ")
    assert rec["method"]["path"] == str(shipped_model_path("chair"))
    assert rec["settings"]["refine"] is None and "refine" not in rec["method"]
