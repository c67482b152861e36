"""``cyclecorr compare``: methods from separate evaluation files, compared pair by pair."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cyclecorr.cli import main
from cyclecorr.evaluate import evaluate_keypoint_transfer
from cyclecorr.evaluate.report import write_results


class Shift:
    """A constant flow (dx, 0) at 16×16."""

    size = 16

    def __init__(self, name, dx, sha="x"):
        self.name, self.dx, self.sha = name, dx, sha

    def describe(self):
        return {"name": self.name, "kind": "network", "size": self.size, "sha256": self.sha}

    def predict_batch(self, src, tgt):
        f = torch.zeros(src.shape[0], 2, self.size, self.size)
        f[:, 0] = self.dx
        return f, None


class Sample:
    def __init__(self, kps):
        self.image = np.zeros((16, 16, 3), np.uint8)
        self.keypoints = np.asarray(kps, float)
        self.visible = np.ones(len(kps), bool)


def _samples(n=5, seed=0):
    # image k's keypoints are image 0's shifted by 2k px in x: the pair (i, j) moves 2(j - i)
    rng = np.random.default_rng(seed)
    base = rng.uniform(2, 6, (4, 2))
    return [Sample(base + [2.0 * k, 0.0]) for k in range(n)]


def _write(tmp_path, name, methods, samples):
    res = {"command": name, "seed": 0, "methods": {m.name: m.describe() for m in methods},
           "sets": {"custom": {m.name: evaluate_keypoint_transfer(m, samples, alphas=(0.1, 0.2),
                                                                  reference="image")
                               for m in methods}}}
    write_results(res, tmp_path / name)
    return tmp_path / name / "results.json"


def test_compare_merges_files_and_reproduces_their_numbers(tmp_path, capsys):
    s = _samples()
    f1 = _write(tmp_path, "base", [Shift("zero", 0.0), Shift("right", 2.0)], s)
    f2 = _write(tmp_path, "new", [Shift("right", 2.0), Shift("far", 8.0)], s)
    rc = main(["compare", str(f1), str(f2), "--out", str(tmp_path / "cmp"), "--draws", "500"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert list(res["methods"]) == ["zero", "right", "far"]  # "right" once: the same method
    rows = res["comparisons"]["custom"]
    assert [(r["a"], r["b"]) for r in rows[::2]] == [("right", "zero"), ("far", "zero"),
                                                     ("far", "right")]
    for r in rows:  # the estimates are the files' own numbers
        src = json.loads((f1 if r["a"] != "far" else f2).read_text())["sets"]["custom"]
        want = src[r["a"]]["pck"]["all"]["per_keypoint"][str(r["alpha"])]
        assert r["estimate"] == pytest.approx(want) and r["unit"] == "image"
    md = (tmp_path / "cmp" / "results.md").read_text()
    assert "| far − zero | all |" in md and "images drawn with replacement" in md
    rc = main(["compare", str(f1), str(f2), "--out", str(tmp_path / "cmp2"), "--methods",
               "far,zero", "--unit", "pair", "--draws", "200"])
    assert rc == 0
    res = json.loads((tmp_path / "cmp2" / "results.json").read_text())
    assert {(r["a"], r["b"], r["unit"]) for r in res["comparisons"]["custom"]} == {
        ("zero", "far", "pair")}


def test_compare_refuses_what_cannot_be_paired(tmp_path, capsys):
    s = _samples()
    f1 = _write(tmp_path, "a", [Shift("zero", 0.0), Shift("m", 2.0, sha="one")], s)
    f2 = _write(tmp_path, "b", [Shift("m", 2.0, sha="two")], s)
    assert main(["compare", str(f1), str(f2), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "b/results.json" in err and "row 'm' is another method" in err
    f3 = _write(tmp_path, "c", [Shift("other", 4.0)], s[:3])  # fewer images: other pairs
    assert main(["compare", str(f1), str(f3), "--out", str(tmp_path / "o")]) == 2
    assert "6 pairs" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "nope.json"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.json" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["compare", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "bad.json" in capsys.readouterr().err
    old = json.loads(f1.read_text())
    for r in old["sets"]["custom"].values():
        del r["pck_pairs"]  # a file from before per-pair records
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert main(["compare", str(tmp_path / "old.json"), "--out", str(tmp_path / "o")]) == 2
    assert "per-pair" in capsys.readouterr().err
    assert main(["compare", str(f1), "--methods", "zero,ghost", "--out", str(tmp_path / "o")]) == 2
    assert "ghost" in capsys.readouterr().err


def test_compare_replicate_groups(tmp_path, capsys):
    s = _samples()
    # two "seeds" of each recipe: the recipe "good" is 2 px right, its runs 0 and +1 px off that
    f = _write(tmp_path, "seeds", [Shift("good1", 2.0), Shift("poor1", 8.0), Shift("good2", 3.0),
                                   Shift("poor2", 9.0)], s)
    out = tmp_path / "rep"
    rc = main(["compare", str(f), "--out", str(out), "--draws", "300", "--replicates", "good=good*",
               "--replicates", "poor=poor1+poor2", "--paired-runs"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    assert res["replicates"] == {"good": ["good1", "good2"], "poor": ["poor1", "poor2"]}
    assert "custom" not in res["comparisons"]  # no row-by-row table unless --methods asks
    rows = res["replicate_comparisons"]["custom"]
    assert {(r["a"], r["b"], r["alpha"]) for r in rows} == {("poor", "good", 0.1),
                                                            ("poor", "good", 0.2)}
    src = res["sets"]["custom"]
    for r in rows:  # the means over runs are the file's own numbers
        pck = lambda m, a=r["alpha"]: src[m]["pck"]["all"]["per_keypoint"][str(a)]  # noqa: E731
        assert r["estimate"] == pytest.approx((pck("poor1") + pck("poor2")) / 2)
        assert r["run_diffs"] == pytest.approx([pck("poor1") - pck("good1"),
                                                pck("poor2") - pck("good2")])
    assert "| poor − good | all | 2 vs 2 paired |" in (out / "results.md").read_text()
    for bad, why in ((["--replicates", "x=ghost*"], "matches none"),
                     (["--replicates", "x"], "GROUP=ROW"),
                     (["--replicates", "x=good1", "--replicates", "x=poor1"], "given twice")):
        assert main(["compare", str(f), "--out", str(out)] + bad) == 2
        assert why in capsys.readouterr().err


def test_replicate_rows_may_hold_a_plus():
    from cyclecorr.commands.compare_cmd import parse_replicates

    have = ["a_s0", "a_s1", "a_s0+siftflow", "a_s1+siftflow", "model", "model+siftflow"]
    got = parse_replicates(["r=a_s?+siftflow", "n=a_s?", "m=model+siftflow", "both=model+a_s0",
                            "x=a_s0+siftflow+model"], have)
    assert got == {"r": ["a_s0+siftflow", "a_s1+siftflow"], "n": ["a_s0", "a_s1"],
                   "m": ["model+siftflow"], "both": ["model", "a_s0"],
                   "x": ["a_s0+siftflow", "model"]}


def test_rows_refined_differently_are_different_methods(tmp_path):
    from cyclecorr.commands.compare_cmd import merge_results

    base = {"name": "m+siftflow", "kind": "network", "size": 128, "sha256": "abc"}
    files = []
    for k, window in enumerate((4, 8)):
        res = {"methods": {"m+siftflow": {**base, "refine": {"level": 2, "window": window}}},
               "sets": {}}
        files.append(tmp_path / f"r{k}.json")
        files[-1].write_text(json.dumps(res))
    with pytest.raises(ValueError, match="another method"):
        merge_results(files)
    assert merge_results([files[0], files[0]])["methods"]["m+siftflow"]["refine"]["window"] == 4
