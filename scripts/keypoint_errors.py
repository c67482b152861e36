"""Where a method's transferred keypoints land: on the right keypoint, on another one, or elsewhere.

    .venv/bin/python scripts/keypoint_errors.py METHOD [METHOD ...] [--data ROOT] [--size 128]

METHOD as in ``cyclecorr evaluate --methods`` (``zero``, ``siftflow``, ``model``,
``model+siftflow``, ``NAME=PATH[+siftflow…]``). For the FlowWeb cars (every ordered pair, the
evaluation's frame: whole crops resized to ``size × size``, L = size) and the PF-WILLOW car
classes (all ordered pairs within a class, original pixels, L = the larger side of the target's
keypoint box), each transferred keypoint annotated in both images is, at each α:

- ``correct``: within α·L of its own keypoint in the target (what PCK counts);
- ``other keypoint``: not correct, but within α·L of another annotated keypoint of the target
  (a part confused with another, e.g. the left wheel sent to the right one);
- ``elsewhere``: neither (a near miss or a wrong place that is no annotated part);

and the median error in units of L. A diagnosis of the evaluation sets, nothing is chosen on it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

ALPHAS = (0.05, 0.10, 0.15)


def landing(pred: np.ndarray, gt: np.ndarray, ref: float, valid: np.ndarray) -> np.ndarray:
    """``(n, 2)`` rows of (error to the keypoint's own target, distance to the nearest *other*
    annotated target keypoint), both divided by ``ref``, for the ``valid`` keypoints of one pair
    (``pred``, ``gt``: ``(K, 2)``; other keypoints count where ``gt`` is finite)."""
    pred, gt = np.asarray(pred, float), np.asarray(gt, float)
    annotated = np.isfinite(gt).all(1)
    rows = []
    for k in np.flatnonzero(valid):
        own = np.linalg.norm(pred[k] - gt[k])
        others = [np.linalg.norm(pred[k] - gt[q]) for q in np.flatnonzero(annotated) if q != k]
        rows.append((own / ref, (min(others) if others else np.inf) / ref))
    return np.asarray(rows, float).reshape(-1, 2)


def summarise(rows: np.ndarray, alphas=ALPHAS) -> dict:
    """Shares of ``correct``, ``other keypoint`` and ``elsewhere`` at each α, and the median
    error (units of L), from :func:`landing` rows of many pairs."""
    out = {"n": int(len(rows)), "median_error": float(np.median(rows[:, 0]))}
    for a in alphas:
        ok = rows[:, 0] <= a
        other = ~ok & (rows[:, 1] <= a)
        out[a] = {"correct": float(ok.mean()), "other keypoint": float(other.mean()),
                  "elsewhere": float((~ok & ~other).mean())}
    return out


def flowweb_rows(method, samples, size: int) -> np.ndarray:
    from cyclecorr.evaluate.benchmarks import all_ordered_pairs, keypoints_at_size, predict_pairs
    from cyclecorr.geometry import transfer_keypoints
    from cyclecorr.matcher import resize_image

    images = [resize_image(s.image, size) for s in samples]
    kps = [keypoints_at_size(s, size) for s in samples]
    pairs = all_ordered_pairs(len(samples))
    rows = []
    for n, flow, _ in predict_pairs(method, images, pairs):
        i, j = pairs[n]
        pred = transfer_keypoints(torch.from_numpy(kps[i]), flow.double()).numpy()
        valid = np.isfinite(kps[i]).all(1) & np.isfinite(kps[j]).all(1)
        rows.append(landing(pred, kps[j], float(size), valid))
    return np.concatenate(rows)


def pf_willow_rows(method, by_class: dict, size: int) -> np.ndarray:
    from cyclecorr.evaluate.benchmarks import (
        all_ordered_pairs,
        annotated_keypoints,
        predict_pairs,
        transfer_keypoints_resized,
    )
    from cyclecorr.evaluate.metrics import reference_length
    from cyclecorr.matcher import resize_image

    rows = []
    for samples in by_class.values():
        images = [resize_image(s.image, size) for s in samples]
        pairs = all_ordered_pairs(len(samples))
        for n, flow, _ in predict_pairs(method, images, pairs):
            a, b = samples[pairs[n][0]], samples[pairs[n][1]]
            ka, kb = annotated_keypoints(a), annotated_keypoints(b)
            pred = transfer_keypoints_resized(ka, flow, a.image.shape[:2], b.image.shape[:2])
            ref = reference_length("keypoint-box", keypoints=kb)
            valid = np.isfinite(ka).all(1) & np.isfinite(kb).all(1)
            rows.append(landing(pred, kb, ref, valid))
    return np.concatenate(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("methods", nargs="+", help="as cyclecorr evaluate --methods")
    ap.add_argument("--data", default=None, help="the shared data root (default: ../shared/data)")
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args(argv)

    from cyclecorr.evaluate.datasets import load_flowweb_car, load_pf_willow
    from cyclecorr.evaluate.methods import make_method

    root = Path(args.data) if args.data else None
    flowweb = load_flowweb_car(root / "real" / "flowweb-car" if root else None)
    willow = load_pf_willow(root / "real" / "pf-willow" if root else None,
                            classes=["car(G)", "car(M)", "car(S)"])
    for spec in args.methods:
        method = make_method(spec, size=args.size)
        for set_name, rows in (("flowweb-car", flowweb_rows(method, flowweb, args.size)),
                               ("pf-willow cars", pf_willow_rows(method, willow, args.size))):
            s = summarise(rows)
            print(f"{spec} on {set_name} ({s['n']} keypoints, median error "
                  f"{s['median_error']:.3f} L)")
            for a in ALPHAS:
                print(f"  α = {a:.2f}: " + ", ".join(f"{k} {v:.3f}" for k, v in s[a].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
