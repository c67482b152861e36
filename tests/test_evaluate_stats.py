"""Paired bootstrap comparisons of PCK (cyclecorr.evaluate.stats) on cases with known answers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cyclecorr.evaluate import (
    PCKAccumulator,
    ZeroFlow,
    evaluate_pck_pf_willow,
    load_pf_willow,
    pck_pair,
)
from cyclecorr.evaluate.report import markdown_report
from cyclecorr.evaluate.stats import (
    category_of,
    compare_methods,
    compare_replicates,
    compare_set,
    paired_bootstrap,
    replicate_bootstrap,
)

ALPHAS = (0.05, 0.1)


def _accumulate(correct_counts, groups, n_kps, skip=()):
    """A PCKAccumulator fed pairs whose correct-keypoint counts at both α are given; pairs in
    ``skip`` count no keypoint (as a method whose keypoints all left the image)."""
    acc = PCKAccumulator(ALPHAS)
    for k, (c, g, n) in enumerate(zip(correct_counts, groups, n_kps)):
        gt = np.zeros((n, 2))
        pred = gt.copy()
        pred[c:, 0] = 100.0  # the first c keypoints exact, the rest far off
        valid = np.zeros(n, bool) if k in skip else None
        acc.add(g, pck_pair(pred, gt, 10.0, ALPHAS, valid), pair=f"p{k}")
    return acc


@pytest.fixture
def two_methods():
    rng = np.random.default_rng(3)
    groups = ["car(G)"] * 30 + ["car(S)"] * 20 + ["duck(S)"] * 25
    n = rng.integers(3, 10, len(groups))
    ca = rng.binomial(n, 0.6)
    cb = rng.binomial(n, 0.5)
    return (_accumulate(ca, groups, n), _accumulate(cb, groups, n, skip={4, 40}), groups)


def test_estimates_equal_the_benchmark_numbers(two_methods):
    a, b, _ = two_methods
    sa, sb = a.summary(), b.summary()
    r = paired_bootstrap(a.pairs(), b.pairs(), 0.1, statistic="mean_over_groups", n_boot=200)
    assert r["estimate"] == pytest.approx(sa["mean_over_groups"]["per_pair"]["0.1"], abs=1e-12)
    assert r["reference"] == pytest.approx(sb["mean_over_groups"]["per_pair"]["0.1"], abs=1e-12)
    r = paired_bootstrap(a.pairs(), b.pairs(), 0.05, statistic="per_keypoint", n_boot=200)
    assert r["estimate"] == pytest.approx(sa["all"]["per_keypoint"]["0.05"], abs=1e-12)
    assert r["reference"] == pytest.approx(sb["all"]["per_keypoint"]["0.05"], abs=1e-12)
    assert r["n_pairs"] == 75  # the union: pairs 4 and 40 count for a only
    cars = ["car(G)", "car(S)"]
    r = paired_bootstrap(a.pairs(), b.pairs(), 0.1, statistic="mean_over_groups", groups=cars,
                         n_boot=200)
    want = np.mean([sa[g]["per_pair"]["0.1"] for g in cars])
    assert r["estimate"] == pytest.approx(want, abs=1e-12) and r["n_groups"] == 2


def test_identical_methods_differ_by_exactly_zero(two_methods):
    a, _, _ = two_methods
    r = paired_bootstrap(a.pairs(), a.pairs(), 0.1, statistic="mean_over_groups", n_boot=500)
    assert r["diff"] == 0.0 and r["ci"] == [0.0, 0.0] and r["p_not_better"] == 1.0


def test_better_on_every_pair_gives_an_interval_above_zero():
    groups = ["g"] * 40
    n = [5] * 40
    a = _accumulate([4] * 40, groups, n)
    b = _accumulate([3] * 20 + [2] * 20, groups, n)
    r = paired_bootstrap(a.pairs(), b.pairs(), 0.1, n_boot=2000)
    assert r["diff"] == pytest.approx(0.3) and r["ci"][0] > 0 and r["p_not_better"] == 0.0


def test_interval_width_matches_the_closed_form_standard_error():
    # one keypoint per pair: the per-keypoint difference is the mean of d_i in {-1, 0, 1}, whose
    # bootstrap standard deviation is std(d) / sqrt(N) (population std)
    rng = np.random.default_rng(0)
    N = 400
    ca, cb = rng.integers(0, 2, N), rng.integers(0, 2, N)
    a = _accumulate(ca, ["g"] * N, [1] * N)
    b = _accumulate(cb, ["g"] * N, [1] * N)
    r = paired_bootstrap(a.pairs(), b.pairs(), 0.1, n_boot=20000, seed=1)
    se = np.std(ca - cb) / np.sqrt(N)
    assert (r["ci"][1] - r["ci"][0]) / (2 * 1.96 * se) == pytest.approx(1.0, abs=0.05)
    assert r["diff"] == pytest.approx(np.mean(ca - cb), abs=1e-12)
    # the interval is a function of the seed, and another seed moves it only a little
    r2 = paired_bootstrap(a.pairs(), b.pairs(), 0.1, n_boot=20000, seed=1)
    r3 = paired_bootstrap(a.pairs(), b.pairs(), 0.1, n_boot=20000, seed=2)
    assert r2["ci"] == r["ci"] and abs(r3["ci"][0] - r["ci"][0]) < 0.2 * se


def test_resampling_stays_within_groups():
    # group x: a always right, b always wrong; group y: the reverse. Over groups the difference
    # is exactly 0 in every draw because each draw keeps both groups with all their pairs' value
    a = _accumulate([1] * 10 + [0] * 10, ["x"] * 10 + ["y"] * 10, [1] * 20)
    b = _accumulate([0] * 10 + [1] * 10, ["x"] * 10 + ["y"] * 10, [1] * 20)
    r = paired_bootstrap(a.pairs(), b.pairs(), 0.1, statistic="mean_over_groups", n_boot=300)
    assert r["diff"] == 0.0 and r["ci"] == [0.0, 0.0]


def test_bad_records_are_refused_with_a_reason(two_methods):
    a, b, _ = two_methods
    with pytest.raises(ValueError, match="alpha 0.2"):
        paired_bootstrap(a.pairs(), b.pairs(), 0.2)
    rec = a.pairs()
    rec["pair"][1] = rec["pair"][0]
    with pytest.raises(ValueError, match="appears twice"):
        paired_bootstrap(rec, b.pairs(), 0.1, names=("mine", "other"))
    with pytest.raises(ValueError, match=r"groups \['plane'\]"):
        paired_bootstrap(a.pairs(), b.pairs(), 0.1, groups=["plane"])
    with pytest.raises(ValueError, match="statistic"):
        paired_bootstrap(a.pairs(), b.pairs(), 0.1, statistic="median")


def test_compare_methods_orders_rows_and_splits_categories(two_methods):
    a, b, _ = two_methods
    by_method = {"first": {"pck_pairs": b.pairs()}, "second": {"pck_pairs": a.pairs()},
                 "nopairs": {"pck": {}}}
    rows = compare_methods(by_method, statistic="mean_over_groups", alphas=(0.1,),
                           by_category=True, n_boot=100)
    assert [(r["a"], r["b"], r["subset"]) for r in rows] == [
        ("second", "first", None), ("second", "first", "car"), ("second", "first", "duck")]
    assert category_of("car(G)") == "car" and category_of("winebottle(woC)") == "winebottle"


class Shifted(ZeroFlow):
    """Zero flow plus a 3 px shift in x: a second, different method."""

    name = "shifted"

    def predict_batch(self, src, tgt):
        f, m = super().predict_batch(src, tgt)
        return f + torch.tensor([3.0, 0.0]).view(1, 2, 1, 1), m


def test_pf_willow_records_and_report(data_dir):
    by_class = load_pf_willow(data_dir, classes=["car(G)", "car(S)", "duck(S)"], limit=4)
    res = {m.name: evaluate_pck_pf_willow(m, samples_by_class=by_class)
           for m in (ZeroFlow(), Shifted())}
    recs = res["zero"]["pck_pairs"]
    assert len(recs["pair"]) == 36 and set(recs["group"]) == set(by_class)
    assert recs["pair"][0] == "0-1"  # "source-target" indices into the set's images
    # the records reproduce the reported per-class numbers
    for g in by_class:
        frac = [c / n for c, n, gg in zip(recs["correct"]["0.1"], recs["n"], recs["group"])
                if gg == g]
        assert np.mean(frac) == pytest.approx(res["zero"]["pck"][g]["per_pair"]["0.1"])
    rows = compare_set("pf-willow", res, n_boot=300)
    assert {r["subset"] for r in rows} == {None, "car", "duck"} and len(rows) == 9
    whole = [r for r in rows if r["subset"] is None and r["alpha"] == 0.1][0]
    assert whole["unit"] == "image"  # PF-WILLOW pairs are named by their images
    assert whole["a"] == "shifted" and whole["b"] == "zero"
    assert whole["estimate"] == pytest.approx(
        res["shifted"]["pck"]["mean_over_groups"]["per_pair"]["0.1"])
    md = markdown_report({"sets": {"pf-willow": res}, "comparisons": {"pf-willow": rows}})
    assert "| shifted − zero | car |" in md and "Paired differences" in md
    assert compare_set("pf-willow", {"zero": res["zero"]}) == []
    assert compare_set("tss", res) == []


def test_image_bootstrap_sees_that_pairs_share_images():
    # 10 images, all 90 ordered pairs; a beats b only on the 9 pairs whose source is image 0.
    # Drawing images, image 0 is missing from a draw with probability 0.9^10 = 0.349, and then a
    # is not better; drawing pairs as if independent hides this (P ≈ (81/90)^90 ≈ 1e-4).
    pairs = [(i, j) for i in range(10) for j in range(10) if i != j]
    a, b = PCKAccumulator((0.1,)), PCKAccumulator((0.1,))
    for i, j in pairs:
        right = pck_pair(np.zeros((1, 2)), np.zeros((1, 2)), 10.0, (0.1,))
        wrong = pck_pair(np.full((1, 2), 50.0), np.zeros((1, 2)), 10.0, (0.1,))
        a.add("g", right if i == 0 else wrong, pair=f"{i}-{j}")
        b.add("g", wrong, pair=f"{i}-{j}")
    by_image = paired_bootstrap(a.pairs(), b.pairs(), 0.1, n_boot=20000, seed=0)
    by_pair = paired_bootstrap(a.pairs(), b.pairs(), 0.1, unit="pair", n_boot=20000, seed=0)
    assert by_image["unit"] == "image" and by_pair["unit"] == "pair"
    assert by_image["diff"] == by_pair["diff"] == pytest.approx(0.1)
    assert by_image["p_not_better"] == pytest.approx(0.9 ** 10, abs=0.015)
    assert by_pair["p_not_better"] < 0.005
    assert by_image["ci"][1] - by_image["ci"][0] > 1.5 * (by_pair["ci"][1] - by_pair["ci"][0])
    with pytest.raises(ValueError, match="named 'i-j'"):
        rec = a.pairs()
        rec["pair"] = [f"x{k}" for k in range(len(rec["pair"]))]
        paired_bootstrap(rec, rec, 0.1, unit="image")


# --- replicated methods: several training runs per recipe ---------------------------------------

def _flat(correct, n_pairs=12, n=10, group="g"):
    """Per-pair records of a method that gets ``correct`` of ``n`` keypoints right on every pair
    of 4 images (pairs named "i-j", so the image bootstrap applies)."""
    names = [f"{i}-{j}" for i in range(4) for j in range(4) if i != j][:n_pairs]
    return {"group": [group] * len(names), "pair": names, "n": [n] * len(names),
            "correct": {"0.1": [correct] * len(names)}}


def test_one_run_each_is_the_paired_bootstrap(two_methods):
    a, b, _ = two_methods
    p = paired_bootstrap(a.pairs(), b.pairs(), 0.1, statistic="mean_over_groups", n_boot=3000,
                         seed=4)
    r = replicate_bootstrap([a.pairs()], [b.pairs()], 0.1, statistic="mean_over_groups",
                            n_boot=3000, seed=4)
    assert {k: r[k] for k in p} == p
    assert r["run_estimates"] == [p["estimate"]] and r["ci_runs_only"] == [p["diff"]] * 2


def test_copies_of_one_run_add_no_training_noise(two_methods):
    a, b, _ = two_methods
    one = replicate_bootstrap([a.pairs()], [b.pairs()], 0.1, n_boot=2000, seed=1, unit="pair")
    three = replicate_bootstrap([a.pairs()] * 3, [b.pairs()] * 3, 0.1, n_boot=2000, seed=1,
                                unit="pair")
    assert three["ci"] == pytest.approx(one["ci"]) and three["diff"] == pytest.approx(one["diff"])
    assert three["ci_runs_only"] == pytest.approx([one["diff"]] * 2)


def test_training_noise_alone_has_the_closed_form_interval():
    # run k of a gets 5 + k of 10 keypoints on every pair, b always 5: every image draw gives run
    # k the difference k / 10, so the interval is that of the mean of 4 runs drawn from
    # {0, .1, .2, .3}: P(mean <= .025) = 5/256 < 2.5 % < P(mean <= .05) = 15/256
    runs_a = [_flat(5 + k) for k in range(4)]
    runs_b = [_flat(5)] * 4
    r = replicate_bootstrap(runs_a, runs_b, 0.1, n_boot=20000, seed=0)
    assert r["unit"] == "image" and r["n_runs"] == [4, 4] and not r["paired_runs"]
    assert r["diff"] == pytest.approx(0.15)
    assert r["ci"] == pytest.approx([0.05, 0.25]) and r["ci_runs_only"] == pytest.approx(r["ci"])
    assert r["run_estimates"] == pytest.approx([0.5, 0.6, 0.7, 0.8]) and "run_diffs" not in r


def test_paired_runs_cancel_a_shared_seed_effect():
    # run k of both recipes shares a seed worth 2k keypoints; a is 1 keypoint better in every run
    runs_b = [_flat(2 * k) for k in range(4)]
    runs_a = [_flat(2 * k + 1) for k in range(4)]
    paired = replicate_bootstrap(runs_a, runs_b, 0.1, paired_runs=True, n_boot=5000)
    assert paired["ci"] == pytest.approx([0.1, 0.1]) and paired["p_not_better"] == 0.0
    assert paired["run_diffs"] == pytest.approx([0.1] * 4)
    unpaired = replicate_bootstrap(runs_a, runs_b, 0.1, n_boot=5000)
    assert unpaired["ci"][0] < 0 < unpaired["ci"][1]  # the seed effect swamps the gain


def test_replicates_refuse_what_cannot_be_compared():
    with pytest.raises(ValueError, match="as many runs"):
        replicate_bootstrap([_flat(1)] * 2, [_flat(1)] * 3, 0.1, paired_runs=True)
    with pytest.raises(ValueError, match="at least one run"):
        replicate_bootstrap([], [_flat(1)], 0.1)
    bad = _flat(1)
    bad["n"] = bad["n"][:-1]
    with pytest.raises(ValueError, match="new run 1: per-pair records of different lengths"):
        replicate_bootstrap([_flat(1), bad], [_flat(1)], 0.1, names=("new", "old"))


def test_compare_replicates_and_report():
    rows = {f"a{k}": {"pck_pairs": _flat(5 + k), "protocol": {"alphas": [0.1]}}
            for k in range(3)}
    rows.update({f"b{k}": {"pck_pairs": _flat(4 + k)} for k in range(3)})
    rows["base"] = {"pck_pairs": _flat(2)}
    rows["old"] = {}  # a row without per-pair records: its group is left out
    groups = {"b": ["b0", "b1", "b2"], "a": ["a0", "a1", "a2"], "base": ["base"], "old": ["old"]}
    out = compare_replicates("custom-set", rows, groups, paired_runs=True, n_boot=500)
    got = {(r["a"], r["b"]): r for r in out}
    assert set(got) == {("a", "b"), ("base", "b"), ("base", "a")}
    assert got[("a", "b")]["paired_runs"] and got[("a", "b")]["ci"] == pytest.approx([0.1, 0.1])
    assert not got[("base", "a")]["paired_runs"] and got[("base", "a")]["n_runs"] == [1, 3]
    assert got[("base", "a")]["diff"] == pytest.approx(0.2 - 0.6)
    md = markdown_report({"sets": {"custom-set": {}}, "replicate_comparisons": {
        "custom-set": out}})
    assert "| a − b | all | 3 vs 3 paired | +0.100 [+0.100, +0.100] P=0.00" in md
    assert ("Per run, PCK@0.10 (all classes): b 0.400, 0.500, 0.600; a 0.500, 0.600, 0.700; "
            "base 0.200.") in md
