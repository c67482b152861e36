"""Result files: one JSON with every number and protocol, and a Markdown table per set.

Layout of the results dict written by ``cyclecorr evaluate``::

    {"sets": {set_name: {method_name: <benchmark dict with "protocol">}},
     "methods": {method_name: method.describe()}, "command": "...", "seed": 0, "versions": {...}}
"""
from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["headline", "markdown_report", "write_results", "set_kind", "HEADLINE_COLUMNS"]


def _get(d, *keys):
    for k in keys:
        if d is None:
            return None
        d = d.get(k) if isinstance(d, dict) else None
    return d


def set_kind(set_name: str) -> str:
    """The family of a benchmark set name ("pf-willow", "flowweb", "tss", "synthetic",
    "synth-kp", "shape2image", "embedding", "pascal3d"; "custom" for any other), which decides
    its headline columns and the statistic its comparisons use."""
    for kind in ("pf-willow", "flowweb", "tss", "synthetic", "synth-kp", "shape2image",
                 "embedding", "pascal3d"):
        if set_name.startswith(kind):
            return kind
    return "custom"


#: column label → path into a benchmark dict, per kind of set
HEADLINE_COLUMNS = {
    "pf-willow": [
        ("PCK@0.05", ("pck", "mean_over_groups", "per_pair", "0.05")),
        ("PCK@0.10", ("pck", "mean_over_groups", "per_pair", "0.1")),
        ("PCK@0.15", ("pck", "mean_over_groups", "per_pair", "0.15")),
    ],
    "flowweb": [
        ("PCK@0.05", ("pck", "per_keypoint", "0.05")),
        ("PCK@0.10", ("pck", "per_keypoint", "0.1")),
        ("PCK@0.15", ("pck", "per_keypoint", "0.15")),
        ("match AP", ("matchability", "ap")),
        ("match acc@0.5", ("matchability", "accuracy@0.5")),
        ("match positives (chance AP)", ("matchability", "positive_fraction")),
        ("part mIoU", ("segmentation", "mean_part_iou")),
        ("object IoU", ("segmentation", "object_iou")),
    ],
    "tss": [
        ("PCK@0.05 (standard)", ("mean", "accuracy_max_side_100")),
        ("acc@5px (orig.)", ("mean", "accuracy")),
        ("mean EPE (px)", ("mean", "mean_epe")),
    ],
    "synthetic": [
        ("PCK@0.05", ("pck", "per_keypoint", "0.05")),
        ("PCK@0.10", ("pck", "per_keypoint", "0.1")),
        ("PCK@0.10 cross-model", ("pck_cross_model", "per_keypoint", "0.1")),
        ("match AP", ("matchability", "ap")),
        ("match acc@0.5", ("matchability", "accuracy@0.5")),
        ("match positives (chance AP)", ("matchability", "positive_fraction")),
        ("flow acc@5px", ("flow", "accuracy")),
    ],
    "synth-kp": [
        ("PCK@0.05", ("pck", "per_keypoint", "0.05")),
        ("PCK@0.10", ("pck", "per_keypoint", "0.1")),
        ("PCK@0.15", ("pck", "per_keypoint", "0.15")),
        ("PCK@0.10 per pair", ("pck", "per_pair", "0.1")),
        ("match AP", ("matchability", "ap")),
        ("match positives (chance AP)", ("matchability", "positive_fraction")),
    ],
    "shape2image": [("object IoU", ("object_iou",))],
    "embedding": [
        ("renders: NN azimuth error (deg)", ("synthetic_nn_azimuth_error_deg",)),
        ("VOC pose 5-NN accuracy", ("voc_pose_knn5_accuracy",)),
        ("VOC pose chance", ("voc_pose_chance",)),
    ],
    "pascal3d": [
        ("PCK@0.05", ("pck", "all", "per_keypoint", "0.05")),
        ("PCK@0.10", ("pck", "all", "per_keypoint", "0.1")),
        ("PCK@0.15", ("pck", "all", "per_keypoint", "0.15")),
        ("PCK@0.10 per pair", ("pck", "all", "per_pair", "0.1")),
    ],
    "custom": [("PCK@0.10", ("pck", "all", "per_keypoint", "0.1"))],
}

_PROTOCOL_LINE = {
    "pf-willow": "all 90 ordered pairs per class; L = max side of the target's keypoint box; "
                 "original pixels (method at S×S on whole images); mean over classes of "
                 "per-pair PCK",
    "flowweb": "all ordered pairs; whole crops resized to S×S; PCK per keypoint at α·S "
               "(keypoints annotated in both); matchability: source pixel on the object whose "
               "part is visible in the target; part/object masks of the target carried by the "
               "flow (IoU)",
    "tss": "method at S×S on whole images, flow resampled to original pixels; PCK@0.05 "
           "(the standard TSS protocol): fraction of foreground pixels of image 1 whose error is "
           "≤ 0.05·max(H, W) of image 1 (= 5 px at max side 100); also ≤ 5 px at the original "
           "resolution; mean over pairs",
    "synthetic": "rendered PASCAL3D+ CAD pairs (128×128 crops); PCK per keypoint at α·128 on named "
                 "3D keypoints visible in both; matchability and flow vs the renderer's exact "
                 "ground truth (same-model pairs)",
    "synth-kp": "renders of two different PASCAL3D+ CAD models of the category at seeded random "
                "viewpoints (target azimuth within ±45° of the source's, elevations 0–30°), "
                "128×128 object-box crops; PCK per keypoint at α·128 on the named 3D keypoints "
                "visible in both (renderer's depth test); matchability: the source model's "
                "surface point visible from the target's viewpoint; intervals resample models",
    "shape2image": "FlowWeb cars at 128×128; template = nearest PASCAL3D+ car render in HOG space "
                   "(5 models × 12 azimuths × 2 elevations); its mask read at round(p + F(p)) "
                   "vs the real mask (IoU, mean over images); zero flow = retrieval alone",
    "embedding": "t-SNE of L2-normalised encoder codes; renders of PASCAL3D+ cars at evenly spaced "
                 "azimuths (nearest neighbour in feature space: mean azimuth difference, "
                 "chance ≈ 90°) and VOC 2007 car crops with pose tags (leave-one-out 5-NN tag "
                 "accuracy)",
    "pascal3d": "PASCAL3D+ ImageNet photos of the category (not truncated, occluded or "
                "difficult), object-box crops resized to S×S; seeded ordered pairs with azimuths "
                "within 45° and ≥ 3 keypoints visible in both; PCK per keypoint at α·S; a "
                "selection set outside the evaluation sets",
    "custom": "",
}


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def _signed(v: float) -> str:
    return "–" if v is None or math.isnan(v) else f"{v:+.3f}"


def _rows_by_alpha(comparisons: list[dict]) -> tuple[list[float], dict[tuple, dict]]:
    """The α's met, and ``{(first, second, subset): {α: comparison}}`` in the order met."""
    alphas = list(dict.fromkeys(c["alpha"] for c in comparisons))
    rows: dict[tuple, dict] = {}
    for c in comparisons:
        rows.setdefault((c["a"], c["b"], c.get("subset")), {})[c["alpha"]] = c
    return alphas, rows


def _cell(c: dict | None, runs_only: bool = False) -> str:
    """"difference [interval] P=…" (and the runs-only interval) of one comparison; "–" if none."""
    if c is None:
        return "–"
    text = (f"{_signed(c['diff'])} [{_signed(c['ci'][0])}, {_signed(c['ci'][1])}] "
            f"P={c['p_not_better']:.2f}")
    if runs_only:
        lo, hi = c["ci_runs_only"]
        text += f"; runs only [{_signed(lo)}, {_signed(hi)}]"
    return text


def _comparison_table(comparisons: list[dict] | None, kind: str = "") -> list[str]:
    """Markdown lines: each paired comparison (:mod:`cyclecorr.evaluate.stats`) as
    "difference [interval]" per α, one row per pair of methods and subset (``kind``: the set's
    :func:`set_kind`, which names what the bootstrap draws)."""
    if not comparisons:
        return []
    alphas, rows = _rows_by_alpha(comparisons)
    c0 = comparisons[0]
    stat = {"per_keypoint": "PCK per keypoint",
            "mean_over_groups": "mean over classes of per-pair PCK"}[c0["statistic"]]
    unit = {"image": "images drawn with replacement within each class, every pair among them "
                     "counted (pairs sharing an image are not independent)",
            "pair": "pairs drawn with replacement within each class"}.get(c0.get("unit"), "pairs")
    if kind == "synth-kp" and c0.get("unit") == "image":
        unit = ("CAD models drawn with replacement, every pair between drawn models counted "
                "(pairs sharing a model are not independent)")
    lines = ["", f"Paired differences (row's first method minus its second; {stat}; "
             f"{c0['level']:.0%} percentile interval of a bootstrap with {unit}, "
             f"{c0['n_boot']:,} draws, seed {c0['seed']}; "
             "P = share of draws where the first is not better):", "",
             "| first − second | classes | " + " | ".join(f"PCK@{a:.2f}" for a in alphas) + " |",
             "|---|---|" + "---|" * len(alphas)]
    for (a, b, sub), by_alpha in rows.items():
        lines.append(f"| {a} − {b} | {sub or 'all'} | "
                     + " | ".join(_cell(by_alpha.get(al)) for al in alphas) + " |")
    return lines


def _replicate_table(comparisons: list[dict] | None) -> list[str]:
    """Markdown lines: each replicate-group comparison (:func:`~cyclecorr.evaluate.stats.
    replicate_bootstrap`) as "difference of means [interval]" per α, with the interval from
    redrawing the runs alone beside it, then each group's per-run numbers."""
    if not comparisons:
        return []
    alphas, rows = _rows_by_alpha(comparisons)
    c0 = comparisons[0]
    lines = ["", "Replicated methods (means over each group's runs; the interval redraws the runs "
             f"and the evaluation {'images' if c0.get('unit') == 'image' else 'pairs'} together, "
             f"{c0['level']:.0%}, {c0['n_boot']:,} draws, seed {c0['seed']}; 'runs only' redraws "
             "the runs with the evaluation set fixed: the training noise alone; P = share of "
             "draws where the first is not better):", "",
             "| first − second | classes | runs | " + " | ".join(
                 f"PCK@{a:.2f}" for a in alphas) + " |", "|---|---|---|" + "---|" * len(alphas)]
    for (a, b, sub), by_alpha in rows.items():
        c = next(iter(by_alpha.values()))
        runs = f"{c['n_runs'][0]} vs {c['n_runs'][1]}" + (" paired" if c["paired_runs"] else "")
        lines.append(f"| {a} − {b} | {sub or 'all'} | {runs} | "
                     + " | ".join(_cell(by_alpha.get(al), True) for al in alphas) + " |")
    per_run: dict[str, list[float]] = {}
    for c in comparisons:  # each group's runs at the first α, all classes
        if c["alpha"] == alphas[0] and c.get("subset") is None:
            per_run.setdefault(c["b"], c["run_references"])  # the earlier group first
            per_run.setdefault(c["a"], c["run_estimates"])
    lines += ["", f"Per run, PCK@{alphas[0]:.2f} (all classes): " + "; ".join(
        f"{g} " + ", ".join(_fmt(v) for v in vals) for g, vals in per_run.items()) + "."]
    return lines


def headline(set_name: str, result: dict) -> dict:
    """``{column: value}`` of a benchmark dict (see :data:`HEADLINE_COLUMNS`)."""
    return {label: _get(result, *path) for label, path in HEADLINE_COLUMNS[set_kind(set_name)]}


def markdown_report(results: dict) -> str:
    """Markdown: one table per set (rows = methods), the protocol line and method descriptions."""
    lines = ["# cyclecorr evaluation", ""]
    if results.get("command"):
        lines += [f"Command: `{results['command']}`", ""]
    sizes = sorted({int(d["size"]) for d in results.get("methods", {}).values() if d.get("size")})
    size_note = ("/".join(map(str, sizes)) + " (per method: Methods)" if len(sizes) > 1
                 else str(sizes[0] if sizes else 128))
    for set_name, by_method in results.get("sets", {}).items():
        kind = set_kind(set_name)
        cols = [c for c, _ in HEADLINE_COLUMNS[kind]]
        lines += [f"## {set_name}", ""]
        first = next(iter(by_method.values()), {}) or {}
        n = first.get("n_pairs")
        n_img = first.get("n_images") if kind == "shape2image" else None
        proto = _PROTOCOL_LINE[kind]
        if "S×S" in proto:  # the sets whose methods run at the networks' size
            proto += f"; S = {size_note}"
        lines += [f"Protocol: {proto}" + (f"; {n} pairs" if n else "")
                  + (f"; {n_img} images" if n_img else "") + ".", ""]
        lines += ["| method | " + " | ".join(cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for m, r in by_method.items():
            h = headline(set_name, r)
            lines.append(f"| {m} | " + " | ".join(_fmt(h[c]) for c in cols) + " |")
        if kind == "embedding":
            lines.append("")
            for m, r in by_method.items():
                for label, f in (r.get("files") or {}).items():
                    lines.append(f"![{m} {label}]({f})")
        if kind == "pf-willow":
            classes = [g for g in (first.get("pck") or {}) if g not in ("all", "mean_over_groups")]
            if classes:
                lines += ["", "Per class, PCK@0.10 (per pair):", "",
                          "| method | " + " | ".join(classes) + " |",
                          "|---|" + "---|" * len(classes)]
                for m, r in by_method.items():
                    lines.append(f"| {m} | " + " | ".join(
                        _fmt(_get(r, "pck", c, "per_pair", "0.1")) for c in classes) + " |")
        lines += _comparison_table(results.get("comparisons", {}).get(set_name), kind)
        lines += _replicate_table(results.get("replicate_comparisons", {}).get(set_name))
        if kind == "tss":
            groups = list((first.get("groups") or {}).keys())
            if groups:
                lines += ["", "Per group, PCK@0.05 (standard protocol):", "",
                          "| method | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
                for m, r in by_method.items():
                    lines.append(f"| {m} | " + " | ".join(
                        _fmt(_get(r, "groups", g, "accuracy_max_side_100")) for g in groups)
                        + " |")
        lines.append("")
    methods = results.get("methods", {})
    if methods:
        lines += ["## Methods", ""]
        for m, d in methods.items():
            extra = ", ".join(f"{k}={d[k]}" for k in ("sha256", "stage", "step", "path") if k in d)
            size = f" at {d['size']}×{d['size']}" if d.get("size") else ""
            if d.get("precision", "float32") != "float32":  # not the protocol's float32: say so
                size += f" in {d['precision']}"
            ref = d.get("refine")
            if ref:  # a network's flow refined by SIFT flow around it
                size += (f", refined by SIFT flow from pyramid level {ref['level']} within "
                         f"±{ref['window']} there down to level {ref.get('stop_level', 0)}; "
                         f"matchability {ref['matchability']}")
            bi = d.get("bidirectional")
            if bi:  # both ways, averaged where the two directions agree
                size += (f", matched both ways and averaged where the two estimates agree within "
                         f"{bi['tau_px']:g} px (reverse flow inverted by a {bi['sigma_px']:g} px "
                         f"splat" + (f", not where it spreads by more than "
                                     f"{bi['max_spread_px']:g} px" if "max_spread_px" in bi
                                     else "") + ")")
            lines.append(f"- **{m}**: {d.get('kind', '')}{size}" + (f" ({extra})" if extra else ""))
        lines.append("")
    if "seed" in results:
        lines += [f"Seed: {results['seed']}. Full protocol of every number: results.json.", ""]
    return "\n".join(lines)


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if hasattr(o, "item") and callable(o.item) and getattr(o, "size", 1) == 1:
        o = o.item()
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    if isinstance(o, (str, int, float, bool)) or o is None:
        return o
    return str(o)


def write_results(results: dict, out_dir) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` into ``out_dir`` (created); returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    j = out / "results.json"
    md = out / "results.md"
    j.write_text(json.dumps(_jsonable(results), indent=2, sort_keys=False) + "\n")
    md.write_text(markdown_report(results))
    return j, md
