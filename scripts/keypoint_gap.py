"""How far apart the annotated keypoints of a benchmark's pairs are, in the network's frame.

    .venv/bin/python scripts/keypoint_gap.py [--data ROOT] [--size 128]

For the FlowWeb cars (tight crops, the paper's protocol) and each PF-WILLOW car class (whole
photos), over all ordered pairs with at least two keypoints annotated in both images, after each
image is resized to ``size × size`` as the methods see it: the mean displacement between
corresponding keypoints (what a flow has to bridge; the zero flow moves nothing), the ratio of the
two keypoint boxes' larger sides (the scale change between the objects) and the share of pairs
where it exceeds 1.3, and the PCK@0.1 threshold in the same pixels (FlowWeb: 0.1 · size; PF-WILLOW:
0.1 × the larger side of the target's keypoint box). It needs no model: it describes the data.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from cyclecorr.geometry import rescale_points  # noqa: E402


def pair_gap(a, b, size: int = 128) -> dict | None:
    """Displacement, box-size ratio and PF-WILLOW-style threshold (α = 0.1) of one ordered pair of
    ``Sample`` s in the ``size × size`` frame, or None with fewer than two shared keypoints."""
    v = a.visible & b.visible
    if int(v.sum()) < 2:
        return None
    (ha, wa), (hb, wb) = a.size, b.size
    # into the S×S frame the methods see, with the evaluation's pixel-area convention
    ka = rescale_points(a.keypoints[v], np.array([size / wa, size / ha]))
    kb = rescale_points(b.keypoints[v], np.array([size / wb, size / hb]))
    sa, sb = np.ptp(ka, axis=0).max(), np.ptp(kb, axis=0).max()
    return {"displacement": float(np.linalg.norm(ka - kb, axis=1).mean()),
            "scale_ratio": float(max(sa, sb) / max(min(sa, sb), 1e-6)),
            "box_threshold": float(0.1 * sb)}


def summarise(samples, size: int = 128) -> dict:
    gaps = [g for i, a in enumerate(samples) for j, b in enumerate(samples)
            if i != j and (g := pair_gap(a, b, size)) is not None]
    if not gaps:
        raise ValueError("no pair shares two annotated keypoints")
    d = np.array([g["displacement"] for g in gaps])
    s = np.array([g["scale_ratio"] for g in gaps])
    t = np.array([g["box_threshold"] for g in gaps])
    return {"pairs": len(gaps), "displacement_mean": float(d.mean()),
            "scale_ratio_median": float(np.median(s)),
            "scale_ratio_over_1.3": float(np.mean(s > 1.3)),
            "box_threshold_mean": float(t.mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="data root holding real/ (default: shared data)")
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args(argv)
    from cyclecorr.evaluate.datasets import load_flowweb_car, load_pf_willow

    sets = {"flowweb-car": load_flowweb_car(args.data)}
    sets.update({f"pf-willow {c}": v for c, v in load_pf_willow(
        args.data, classes=["car(G)", "car(M)", "car(S)"]).items()})
    print(f"| set | pairs | mean keypoint displacement (px at {args.size}) | median box ratio | "
          f"box ratio > 1.3 | PCK@0.1 threshold (px) |")
    print("|---|---|---|---|---|---|")
    for name, samples in sets.items():
        r = summarise(samples, args.size)
        thr = 0.1 * args.size if name == "flowweb-car" else r["box_threshold_mean"]
        print(f"| {name} | {r['pairs']} | {r['displacement_mean']:.1f} | "
              f"{r['scale_ratio_median']:.2f} | {r['scale_ratio_over_1.3']:.0%} | {thr:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
