"""How sure a PCK difference between two methods is: a paired bootstrap over a benchmark's images.

A benchmark's PCK is an average over a few hundred image pairs, and two methods are run on the
*same* pairs, so their difference is best judged on the same resamples: draw the set again with
replacement (within each group, so PF-WILLOW's mean over classes keeps its ten classes),
recompute both methods' headline statistic on that draw, and read the spread of the difference.
The pairs of a benchmark are every ordered pair of a few images (PF-WILLOW: 10 per class, 90
pairs), so pairs sharing an image are not independent: by default the *images* are drawn and
every pair among them counted (a two-way bootstrap), which gives wider, honest intervals than
drawing pairs. Without resampling the statistic is exactly the number the benchmark reports.

Per-pair records come from :meth:`cyclecorr.evaluate.metrics.PCKAccumulator.pairs` (stored by the
keypoint benchmarks as ``pck_pairs``)::

    {"group": [g, ...], "pair": ["i-j", ...], "n": [counted keypoints, ...],
     "correct": {"0.1": [correct keypoints, ...], ...}}

Statistics:

- ``"per_keypoint"``: Σ correct / Σ counted over the pairs (the FlowWeb and synthetic headline);
- ``"mean_over_groups"``: per group the mean over its pairs of correct / counted, then the
  unweighted mean over groups (PF-WILLOW's headline; with ``groups`` a subset, e.g. the three car
  classes, the mean over those).
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import numpy as np

from cyclecorr.evaluate.report import set_kind

__all__ = ["STATISTICS", "category_of", "paired_bootstrap", "replicate_bootstrap",
           "compare_methods",
           "compare_set", "compare_replicates"]

STATISTICS = ("per_keypoint", "mean_over_groups")


def category_of(group: str) -> str:
    """The object category of a PF-WILLOW class name: ``"car(G)"`` → ``"car"``."""
    return re.sub(r"\(.*\)$", "", group).strip()


def _check_records(name: str, rec: dict, alpha: str) -> None:
    for key in ("group", "pair", "n", "correct"):
        if key not in rec:
            raise ValueError(f"{name}: per-pair records lack {key!r}")
    if alpha not in rec["correct"]:
        raise ValueError(f"{name}: no per-pair counts at alpha {alpha} "
                         f"(have {sorted(rec['correct'])})")
    n = len(rec["pair"])
    if not (len(rec["group"]) == len(rec["n"]) == len(rec["correct"][alpha]) == n):
        raise ValueError(f"{name}: per-pair records of different lengths")
    if len(set(zip(rec["group"], rec["pair"]))) != n:
        raise ValueError(f"{name}: a pair appears twice in the per-pair records")


def _table(rec: dict, alpha: str, keys: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """Counts ``(correct, counted)`` of ``rec`` at the ``(group, pair)`` keys; 0 / 0 where the
    method counted nothing for that pair (such a pair is not in its headline either)."""
    index = {(g, p): k for k, (g, p) in enumerate(zip(rec["group"], rec["pair"]))}
    c = np.zeros(len(keys))
    n = np.zeros(len(keys))
    for k, key in enumerate(keys):
        if key in index:
            c[k] = rec["correct"][alpha][index[key]]
            n[k] = rec["n"][index[key]]
    return c, n


def _statistic(c: np.ndarray, n: np.ndarray, spans: list[slice], kind: str,
               weights: list[np.ndarray] | None) -> np.ndarray:
    """The statistic under every row of per-pair weights (a resample: how often each pair is
    drawn), or with ``weights=None`` once on the pairs as they are (a 1-element array)."""
    if weights is None:
        weights = [np.ones((1, sp.stop - sp.start)) for sp in spans]
    if kind == "per_keypoint":  # Σ correct / Σ counted over all groups' drawn pairs
        num = sum(w @ c[sp] for w, sp in zip(weights, spans))
        den = sum(w @ n[sp] for w, sp in zip(weights, spans))
        with np.errstate(invalid="ignore", divide="ignore"):
            return num / den
    per_group_mean = []  # per group: mean over its drawn pairs with a counted keypoint
    for w, sp in zip(weights, spans):
        cg, ng = c[sp], n[sp]
        has = ng > 0
        frac = np.where(has, cg / np.where(has, ng, 1), 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_group_mean.append((w @ frac) / (w @ has.astype(float)))
    with warnings.catch_warnings():  # a draw may leave no counted pair in every group: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.stack(per_group_mean), 0)


def _endpoints(pairs: list[str]) -> np.ndarray | None:
    """``(P, 2)`` source and target image indices of ``"i-j"`` pair names (or ``"i-j#k"``: the
    k-th pair between i and j, e.g. two models rendered at random viewpoints, where i and j are
    the units drawn); None if any is not."""
    out = []
    for p in pairs:
        m = re.fullmatch(r"(\d+)-(\d+)(?:#\d+)?", p)
        if m is None:
            return None
        out.append((int(m.group(1)), int(m.group(2))))
    return np.array(out, int).reshape(-1, 2)


def _resample_weights(rng: np.random.Generator, pairs: list[str], unit: str, n_boot: int
                      ) -> np.ndarray:
    """``(n_boot, P)`` how often each of one group's pairs enters a resample.

    ``unit="pair"``: the pairs drawn with replacement. ``unit="image"``: the group's *images*
    drawn with replacement, and a pair counted once per drawn copy of its source times each of
    its target (a two-way bootstrap: pairs that share an image are not independent, so this is
    the honest spread when every pair of a few images is evaluated)."""
    P = len(pairs)
    if unit == "pair":
        return rng.multinomial(P, np.full(P, 1.0 / P), size=n_boot).astype(float)
    ends = _endpoints(pairs)
    images, idx = np.unique(ends, return_inverse=True)
    idx = idx.reshape(-1, 2)
    m = rng.multinomial(len(images), np.full(len(images), 1.0 / len(images)),
                        size=n_boot).astype(float)
    return m[:, idx[:, 0]] * m[:, idx[:, 1]]


def paired_bootstrap(records_a: dict, records_b: dict, alpha: float | str = 0.1, *,
                     statistic: str = "per_keypoint", groups: Sequence[str] | None = None,
                     unit: str = "auto", n_boot: int = 10000, seed: int = 0,
                     level: float = 0.95, names: tuple[str, str] = ("a", "b")) -> dict:
    """Paired bootstrap of ``statistic(a) − statistic(b)`` over the pairs both were run on.

    Args:
        records_a, records_b: per-pair records (module docstring) of the two methods on one set.
        alpha: the PCK threshold.
        statistic: ``"per_keypoint"`` or ``"mean_over_groups"``.
        groups: only these groups (e.g. ``["car(G)", "car(M)", "car(S)"]``); default all.
        unit: what is resampled within each group: ``"image"`` (two-way: images, every pair
            among the drawn images), ``"pair"`` (pairs, as if independent), ``"auto"``: images
            when every pair is named ``"i-j"`` by its image indices, else pairs.
        n_boot: bootstrap draws; seed: their generator's seed (the result is a function of it).
        level: confidence level of the percentile interval.

    Returns:
        ``{"a", "b", "estimate": value_a, "reference": value_b, "diff", "ci": [lo, hi], "level",
        "p_not_better": fraction of draws with diff ≤ 0, "unit", "n_pairs", "n_groups",
        "statistic", "alpha", "n_boot", "seed"}``; ``estimate``/``reference`` equal the
        benchmark's reported numbers.
    """
    r = replicate_bootstrap([records_a], [records_b], alpha, statistic=statistic, groups=groups,
                            unit=unit, n_boot=n_boot, seed=seed, level=level, names=names)
    return {k: v for k, v in r.items() if k in _PAIRED_KEYS}


_PAIRED_KEYS = ("a", "b", "estimate", "reference", "diff", "ci", "level", "p_not_better", "unit",
                "n_pairs", "n_groups", "statistic", "alpha", "n_boot", "seed")


def replicate_bootstrap(runs_a: Sequence[dict], runs_b: Sequence[dict],
                        alpha: float | str = 0.1, *, statistic: str = "per_keypoint",
                        groups: Sequence[str] | None = None, unit: str = "auto",
                        paired_runs: bool = False, n_boot: int = 10000, seed: int = 0,
                        level: float = 0.95, names: tuple[str, str] = ("a", "b")) -> dict:
    """Bootstrap of ``mean_k statistic(a_k) − mean_k statistic(b_k)`` when each method is a set
    of *runs* (training runs of one recipe with different seeds, say) evaluated on the same pairs.

    One training run's number carries two kinds of noise: which evaluation images were drawn
    (what :func:`paired_bootstrap` measures) and which run it was (seed, batch order). Each draw
    here redraws both, at two levels: the runs of each method with replacement (with
    ``paired_runs``, the same run indices for both: run k of ``a`` and run k of ``b`` share a
    seed), and the evaluation images (or pairs; ``unit`` as in :func:`paired_bootstrap`), one
    image draw applied to every run, since all runs were evaluated on the same images. With one
    run each this is :func:`paired_bootstrap` exactly (same draws, same interval).

    A percentile bootstrap over K runs knows only the spread those K runs show; with K below
    about 5 its interval is too narrow (it cannot see a run unlike any drawn), so read it with the
    per-run numbers it returns.

    Returns :func:`paired_bootstrap`'s dict (``estimate`` / ``reference`` now means over runs)
    plus ``"n_runs": [Ka, Kb]``, ``"paired_runs"``, ``"run_estimates"`` / ``"run_references"``
    (each run's statistic), ``"run_diffs"`` (paired runs only) and ``"ci_runs_only"``: the
    interval from redrawing the runs alone, evaluation images fixed (how much of the spread is
    training noise).
    """
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    if unit not in ("auto", "image", "pair"):
        raise ValueError(f"unit must be 'auto', 'image' or 'pair', got {unit!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be ≥ 1, got {n_boot}")
    runs_a, runs_b = list(runs_a), list(runs_b)
    if not runs_a or not runs_b:
        raise ValueError(f"each side needs at least one run (got {len(runs_a)} of {names[0]}, "
                         f"{len(runs_b)} of {names[1]})")
    if paired_runs and len(runs_a) != len(runs_b):
        raise ValueError(f"paired runs need as many runs of {names[0]} ({len(runs_a)}) as of "
                         f"{names[1]} ({len(runs_b)})")
    a_key = str(float(alpha))
    for name, runs in zip(names, (runs_a, runs_b)):
        for k, rec in enumerate(runs):
            _check_records(name if len(runs) == 1 else f"{name} run {k}", rec, a_key)
    # the union of every run's pairs, by group: a pair a run counted nothing on is 0 / 0 for it
    # (as in its own headline), so each run's estimate equals its benchmark number
    keys_by_group: dict[str, dict[tuple[str, str], None]] = {}
    for rec in runs_a + runs_b:
        for g, p in zip(rec["group"], rec["pair"]):
            if groups is None or g in groups:
                keys_by_group.setdefault(g, {})[(g, p)] = None
    if groups is not None:
        missing = [g for g in groups if g not in keys_by_group]
        if missing:
            raise ValueError(f"groups {missing} have no pairs in the records")
    if not keys_by_group:
        raise ValueError("no pairs to compare")
    order = sorted(keys_by_group)
    keys = [k for g in order for k in keys_by_group[g]]
    named = _endpoints([p for _, p in keys]) is not None
    if unit == "auto":
        unit = "image" if named else "pair"
    elif unit == "image" and not named:
        raise ValueError("unit='image' needs pairs named 'i-j' by their image indices")
    spans, start = [], 0
    for g in order:
        spans.append(slice(start, start + len(keys_by_group[g])))
        start += len(keys_by_group[g])
    tables = [[_table(rec, a_key, keys) for rec in runs] for runs in (runs_a, runs_b)]
    rng = np.random.default_rng(seed)
    weights = [_resample_weights(rng, [p for _, p in keys[sp]], unit, n_boot) for sp in spans]
    # each run's statistic as reported, and under every image draw: (K, n_boot) per side
    point = [np.array([_statistic(c, n, spans, statistic, None)[0] for c, n in side])
             for side in tables]
    drawn = [np.stack([_statistic(c, n, spans, statistic, weights) for c, n in side])
             for side in tables]
    ka, kb = len(runs_a), len(runs_b)
    idx_a = rng.integers(0, ka, size=(n_boot, ka))
    idx_b = idx_a if paired_runs else rng.integers(0, kb, size=(n_boot, kb))
    cols = np.arange(n_boot)[:, None]
    with warnings.catch_warnings():  # a draw that left a run without pairs: NaN, dropped below
        warnings.simplefilter("ignore", RuntimeWarning)
        diff = (np.mean(drawn[0][idx_a, cols], 1) - np.mean(drawn[1][idx_b, cols], 1))
    diff = diff[np.isfinite(diff)]
    runs_only = np.mean(point[0][idx_a], 1) - np.mean(point[1][idx_b], 1)
    q = (1 - level) / 2
    lo, hi = (np.quantile(diff, [q, 1 - q]) if len(diff) else (np.nan, np.nan))
    est_a, est_b = float(point[0].mean()), float(point[1].mean())
    out = {"a": names[0], "b": names[1], "estimate": est_a, "reference": est_b,
           "diff": est_a - est_b, "ci": [float(lo), float(hi)], "level": level,
           "p_not_better": float(np.mean(diff <= 0)) if len(diff) else float("nan"),
           "unit": unit, "n_pairs": len(keys), "n_groups": len(order), "statistic": statistic,
           "alpha": float(alpha), "n_boot": int(n_boot), "seed": int(seed),
           "n_runs": [ka, kb], "paired_runs": bool(paired_runs),
           "run_estimates": point[0].tolist(), "run_references": point[1].tolist(),
           "ci_runs_only": [float(v) for v in np.quantile(runs_only, [q, 1 - q])]}
    if paired_runs:
        out["run_diffs"] = (point[0] - point[1]).tolist()
    return out


def _each_comparison(names: list[str], records_of, alphas: Sequence[float], by_category: bool):
    """``(later, earlier, α, subset, its groups)`` for every later name against every earlier one,
    at each α, on all groups (subset None) and with ``by_category`` on each category's groups
    (categories from ``records_of(later)``'s per-pair records)."""
    for i, b in enumerate(names):
        for a in names[i + 1:]:
            subsets: list[tuple[str | None, list[str] | None]] = [(None, None)]
            if by_category:
                cats: dict[str, list[str]] = {}
                for g in dict.fromkeys(records_of(a)["group"]):
                    cats.setdefault(category_of(g), []).append(g)
                subsets += sorted(cats.items())
            for alpha in alphas:
                for sub, groups in subsets:
                    yield a, b, alpha, sub, groups


def compare_methods(by_method: dict, *, statistic: str, alphas: Sequence[float] = (0.1,),
                    by_category: bool = False, unit: str = "auto", n_boot: int = 10000,
                    seed: int = 0) -> list[dict]:
    """Every later method against every earlier one (in ``by_method``'s order) on one set.

    ``by_method``: ``{method: benchmark dict}`` whose dicts hold ``pck_pairs``; methods without
    them are skipped. With ``by_category`` (PF-WILLOW), each comparison is also made on each
    category's classes alone (``"subset"`` names it; ``None`` = all groups).
    """
    recs = {m: r["pck_pairs"] for m, r in by_method.items() if r and r.get("pck_pairs")}
    out = []
    for a, b, alpha, sub, groups in _each_comparison(list(recs), recs.get, alphas, by_category):
        r = paired_bootstrap(recs[a], recs[b], alpha, statistic=statistic, groups=groups,
                             unit=unit, n_boot=n_boot, seed=seed, names=(a, b))
        r["subset"] = sub
        out.append(r)
    return out


#: set kind → (the statistic its headline PCK uses, compare per category too)
_SET_STATISTIC = {"flowweb": ("per_keypoint", False), "pf-willow": ("mean_over_groups", True),
                  "synthetic": ("per_keypoint", False), "synth-kp": ("per_keypoint", False),
                  "pascal3d": ("per_keypoint", False), "custom": ("per_keypoint", False)}


def _set_spec(set_name: str, by_method: dict) -> tuple[str, bool, list] | None:
    """(statistic, by category, α's) of ``set_name``'s headline PCK, the α's from the first
    method with per-pair records; None for sets without a keypoint headline."""
    spec = _SET_STATISTIC.get(set_kind(set_name))
    with_pairs = [r for r in by_method.values() if r and r.get("pck_pairs")]
    if spec is None or not with_pairs:
        return None
    alphas = (with_pairs[0].get("protocol") or {}).get("alphas") or [0.1]
    return spec[0], spec[1], alphas


def compare_set(set_name: str, by_method: dict, *, unit: str = "auto", n_boot: int = 10000,
                seed: int = 0) -> list[dict]:
    """:func:`compare_methods` with the statistic of ``set_name``'s headline, at the set's
    α's (from the first method's protocol); ``[]`` for sets without per-pair PCK records or with
    fewer than two methods."""
    spec = _set_spec(set_name, by_method)
    if spec is None or sum(1 for r in by_method.values() if r and r.get("pck_pairs")) < 2:
        return []
    return compare_methods(by_method, statistic=spec[0], alphas=spec[2], by_category=spec[1],
                           unit=unit, n_boot=n_boot, seed=seed)


def compare_replicates(set_name: str, by_method: dict, replicates: dict[str, Sequence[str]], *,
                       paired_runs: bool = False, unit: str = "auto", n_boot: int = 10000,
                       seed: int = 0) -> list[dict]:
    """Every later replicate group against every earlier one on one set
    (:func:`replicate_bootstrap`, the set's headline statistic and α's, PF-WILLOW also per
    category).

    ``replicates``: ``{group name: [method rows of by_method, ...]}``, e.g. ``{"bent": ["bent1",
    "bent2"], "ctrl": ["ctrl1", "ctrl2"], "siftflow": ["siftflow"]}`` (a deterministic baseline is
    a group of one). ``paired_runs``: run k of one group shares a seed with run k of the other;
    used where both groups have the same number of runs (more than one). A group with a row
    lacking per-pair records on this set is left out of this set; ``[]`` when fewer than two
    groups remain.
    """
    spec = _set_spec(set_name, by_method)
    if spec is None:
        return []
    usable = {g: list(rows) for g, rows in replicates.items()
              if rows and all((by_method.get(m) or {}).get("pck_pairs") for m in rows)}
    runs = {g: [by_method[m]["pck_pairs"] for m in rows] for g, rows in usable.items()}
    out = []
    for a, b, alpha, sub, groups in _each_comparison(list(runs), lambda g: runs[g][0], spec[2],
                                                     spec[1]):
        r = replicate_bootstrap(runs[a], runs[b], alpha, statistic=spec[0], groups=groups,
                                unit=unit, n_boot=n_boot, seed=seed, names=(a, b),
                                paired_runs=paired_runs and len(runs[a]) == len(runs[b]) > 1)
        r["subset"] = sub
        r["runs"] = {a: usable[a], b: usable[b]}
        out.append(r)
    return out
