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
from typing import Sequence

import numpy as np

__all__ = ["STATISTICS", "category_of", "paired_bootstrap", "compare_methods", "compare_set"]

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
    """``(P, 2)`` source and target image indices of ``"i-j"`` pair names; None if any is not."""
    out = []
    for p in pairs:
        m = re.fullmatch(r"(\d+)-(\d+)", p)
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
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    if unit not in ("auto", "image", "pair"):
        raise ValueError(f"unit must be 'auto', 'image' or 'pair', got {unit!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be ≥ 1, got {n_boot}")
    a_key = str(float(alpha))
    for name, rec in zip(names, (records_a, records_b)):
        _check_records(name, rec, a_key)
    # the union of both methods' pairs, by group: a pair one method counted nothing on is 0 / 0
    # for it (as in its own headline), so each estimate equals its benchmark number
    keys_by_group: dict[str, dict[tuple[str, str], None]] = {}
    for rec in (records_a, records_b):
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
    ca, na = _table(records_a, a_key, keys)
    cb, nb = _table(records_b, a_key, keys)
    rng = np.random.default_rng(seed)
    weights = [_resample_weights(rng, [p for _, p in keys[sp]], unit, n_boot) for sp in spans]
    est_a = float(_statistic(ca, na, spans, statistic, None)[0])
    est_b = float(_statistic(cb, nb, spans, statistic, None)[0])
    diff = (_statistic(ca, na, spans, statistic, weights)
            - _statistic(cb, nb, spans, statistic, weights))
    diff = diff[np.isfinite(diff)]
    q = (1 - level) / 2
    lo, hi = (np.quantile(diff, [q, 1 - q]) if len(diff) else (np.nan, np.nan))
    return {"a": names[0], "b": names[1], "estimate": est_a, "reference": est_b,
            "diff": est_a - est_b, "ci": [float(lo), float(hi)], "level": level,
            "p_not_better": float(np.mean(diff <= 0)) if len(diff) else float("nan"),
            "unit": unit, "n_pairs": len(keys), "n_groups": len(order), "statistic": statistic,
            "alpha": float(alpha), "n_boot": int(n_boot), "seed": int(seed)}


def compare_methods(by_method: dict, *, statistic: str, alphas: Sequence[float] = (0.1,),
                    by_category: bool = False, unit: str = "auto", n_boot: int = 10000,
                    seed: int = 0) -> list[dict]:
    """Every later method against every earlier one (in ``by_method``'s order) on one set.

    ``by_method``: ``{method: benchmark dict}`` whose dicts hold ``pck_pairs``; methods without
    them are skipped. With ``by_category`` (PF-WILLOW), each comparison is also made on each
    category's classes alone (``"subset"`` names it; ``None`` = all groups).
    """
    recs = {m: r["pck_pairs"] for m, r in by_method.items() if r and r.get("pck_pairs")}
    names = list(recs)
    out = []
    for i, b in enumerate(names):
        for a in names[i + 1:]:
            subsets: list[tuple[str | None, list[str] | None]] = [(None, None)]
            if by_category:
                cats: dict[str, list[str]] = {}
                for g in dict.fromkeys(recs[a]["group"]):
                    cats.setdefault(category_of(g), []).append(g)
                subsets += sorted(cats.items())
            for alpha in alphas:
                for sub, groups in subsets:
                    r = paired_bootstrap(recs[a], recs[b], alpha, statistic=statistic,
                                         groups=groups, unit=unit, n_boot=n_boot, seed=seed,
                                         names=(a, b))
                    r["subset"] = sub
                    out.append(r)
    return out


#: set kind → (the statistic its headline PCK uses, compare per category too)
_SET_STATISTIC = {"flowweb": ("per_keypoint", False), "pf-willow": ("mean_over_groups", True),
                  "synthetic": ("per_keypoint", False), "custom": ("per_keypoint", False)}


def compare_set(set_name: str, by_method: dict, *, unit: str = "auto", n_boot: int = 10000,
                seed: int = 0) -> list[dict]:
    """:func:`compare_methods` with the statistic of ``set_name``'s headline, at the set's
    α's (from the first method's protocol); ``[]`` for sets without per-pair PCK records or with
    fewer than two methods."""
    from cyclecorr.evaluate.report import _set_kind

    spec = _SET_STATISTIC.get(_set_kind(set_name))
    with_pairs = [r for r in by_method.values() if r and r.get("pck_pairs")]
    if spec is None or len(with_pairs) < 2:
        return []
    alphas = (with_pairs[0].get("protocol") or {}).get("alphas") or [0.1]
    return compare_methods(by_method, statistic=spec[0], alphas=alphas, by_category=spec[1],
                           unit=unit, n_boot=n_boot, seed=seed)
