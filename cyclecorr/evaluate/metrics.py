"""Metrics of dense correspondence, on numpy arrays (pure functions, no I/O).

Conventions (DESIGN.md): keypoints are ``(N, 2)`` (x, y), 0-based, pixel centres at integer
coordinates; a keypoint that is not annotated is NaN and/or has ``visible = False``; flows are
``(2, H, W)`` (channel 0 = x, 1 = y, pixels, ``flow_ab(p) = q − p``); masks are ``H×W`` bool.

PCK (percentage of correct keypoints)
    A transferred keypoint ``k̂`` is correct when ``‖k̂ − k‖₂ ≤ α · L`` with ``k`` the target's
    annotation and ``L`` a reference length (:func:`reference_length`):

    - ``"image"``: ``max(H, W)`` of the target image (the paper: 128 at 128×128);
    - ``"keypoint-box"``: ``max(w, h)`` of the bounding box of the target's annotated keypoints
      (PF-WILLOW's standard protocol);
    - ``"object-box"``: ``max(w, h)`` of the target's object box (inclusive pixel box, so
      ``w = xmax − xmin + 1``).

    Only keypoints annotated in *both* images count. :class:`PCKAccumulator` averages either over
    all counted keypoints of a set (``"per-keypoint"``) or per pair first, then over pairs
    (``"per-pair"``); both are reported.

Matchability
    :func:`average_precision` is the non-interpolated area under the precision–recall curve,
    ``AP = Σ_n (R_n − R_{n−1}) · P_n`` over the distinct score thresholds (ties are one threshold),
    the same definition as scikit-learn's ``average_precision_score``. :func:`accuracy` thresholds
    the score (default 0.5).

Segmentation
    :func:`iou` = ``|A ∩ B| / |A ∪ B|`` (NaN when both are empty); :class:`IoUAccumulator` sums
    intersections and unions over a whole set per label (dataset-level IoU), then means over labels.

Dense flow
    :func:`flow_accuracy`: the fraction of ground-truth pixels (inside a mask, finite ground truth)
    whose end-point error ``‖F̂(p) − F(p)‖₂`` is ``≤ threshold`` pixels.
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

__all__ = [
    "REFERENCE_KINDS",
    "reference_length",
    "pck_pair",
    "PCKAccumulator",
    "iou",
    "IoUAccumulator",
    "average_precision",
    "accuracy",
    "flow_accuracy",
    "end_point_error",
]

REFERENCE_KINDS = ("image", "keypoint-box", "object-box")


def _as_kps(name: str, kps) -> np.ndarray:
    a = np.asarray(kps, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2) as (x, y), got {a.shape}")
    return a


def _valid(kps: np.ndarray, visible) -> np.ndarray:
    ok = np.isfinite(kps).all(axis=1)
    if visible is not None:
        v = np.asarray(visible, dtype=bool).reshape(-1)
        if v.shape[0] != kps.shape[0]:
            raise ValueError(f"visible has {v.shape[0]} flags for {kps.shape[0]} keypoints")
        ok &= v
    return ok


def reference_length(kind: str, *, image_size: tuple[int, int] | None = None, keypoints=None,
                     visible=None, bbox=None) -> float:
    """The PCK reference length ``L`` of a *target* image.

    Args:
        kind: ``"image"`` (``max(H, W)``, needs ``image_size = (H, W)``), ``"keypoint-box"``
            (``max(x_max − x_min, y_max − y_min)`` over the annotated ``keypoints``; PF-WILLOW's
            ``max(w, h)`` of the keypoints' bounding box) or ``"object-box"``
            (``max(xmax − xmin + 1, ymax − ymin + 1)`` of the inclusive pixel ``bbox``).
    """
    if kind == "image":
        if image_size is None:
            raise ValueError("reference 'image' needs image_size=(H, W)")
        return float(max(image_size[0], image_size[1]))
    if kind == "keypoint-box":
        if keypoints is None:
            raise ValueError("reference 'keypoint-box' needs keypoints")
        k = _as_kps("keypoints", keypoints)
        k = k[_valid(k, visible)]
        if len(k) == 0:
            return float("nan")
        span = k.max(axis=0) - k.min(axis=0)
        return float(max(span[0], span[1]))
    if kind == "object-box":
        if bbox is None:
            raise ValueError("reference 'object-box' needs bbox=(xmin, ymin, xmax, ymax)")
        x0, y0, x1, y1 = (float(v) for v in bbox)
        return float(max(x1 - x0 + 1.0, y1 - y0 + 1.0))
    raise ValueError(f"unknown reference length {kind!r}; choose one of {REFERENCE_KINDS}")


def pck_pair(kps_pred, kps_gt, ref_len: float, alphas=(0.1,), valid=None) -> dict:
    """Correct keypoints of one pair.

    Args:
        kps_pred: ``(N, 2)`` transferred source keypoints, in the target's pixels.
        kps_gt: ``(N, 2)`` the target's annotations (same order).
        ref_len: reference length ``L`` (pixels).
        alphas: thresholds ``α`` (a keypoint is correct at α when its error ≤ α·L).
        valid: ``(N,)`` bool, keypoints to count (annotated in both images); NaN rows of either
            array are never counted.

    Returns:
        ``{"n": counted keypoints, "errors": (N,) distances (NaN where not counted),
        "correct": {α: (N,) bool}}``.
    """
    p = _as_kps("kps_pred", kps_pred)
    g = _as_kps("kps_gt", kps_gt)
    if p.shape != g.shape:
        raise ValueError(f"kps_pred {p.shape} and kps_gt {g.shape} differ")
    if not (ref_len > 0 and math.isfinite(ref_len)):
        ok = np.zeros(len(p), bool)
    else:
        ok = _valid(p, valid) & np.isfinite(g).all(axis=1)
    err = np.full(len(p), np.nan)
    err[ok] = np.linalg.norm(p[ok] - g[ok], axis=1)
    correct = {float(a): ok & (np.nan_to_num(err, nan=np.inf) <= float(a) * ref_len)
               for a in alphas}
    return {"n": int(ok.sum()), "errors": err, "correct": correct}


class PCKAccumulator:
    """Accumulates PCK over pairs, per group (e.g. class), with both averaging conventions.

    ``add(group, result)`` with a :func:`pck_pair` result. ``summary()`` returns, for every group
    and for ``"all"``::

        {"per_keypoint": {α: Σ correct / Σ counted}, "per_pair": {α: mean over pairs of the pair's
         fraction}, "n_pairs": pairs with ≥ 1 counted keypoint, "n_keypoints": counted keypoints}

    The overall ``"mean_over_groups"`` is the unweighted mean of the groups' per-pair PCK
    (PF-WILLOW's per-class average). ``pairs()`` gives the per-pair counts behind every number
    (for :mod:`cyclecorr.evaluate.stats`' paired comparisons).
    """

    def __init__(self, alphas=(0.1,)):
        self.alphas = tuple(float(a) for a in alphas)
        # one record per pair with ≥ 1 counted keypoint: (group, pair name, counted, {α: correct});
        # every number of summary() and pairs() is derived from these
        self._records: list[tuple[str, str, int, dict]] = []
        self._added = 0

    def add(self, group: str, result: dict, pair: str | None = None) -> None:
        """Count one pair's :func:`pck_pair` result under ``group``; ``pair`` names it (default:
        its position among the added pairs), the key that pairs two methods' records."""
        n = result["n"]
        pair = str(pair) if pair is not None else str(self._added)
        self._added += 1
        if n == 0:
            return
        self._records.append((group, pair, n, {a: int(result["correct"][a].sum())
                                                for a in self.alphas}))

    def summary(self) -> dict:
        by_group: dict[str, list] = defaultdict(list)
        for r in self._records:
            by_group[r[0]].append(r)
        if self._records:
            by_group["all"] = self._records
        out = {}
        for g in sorted(by_group, key=lambda s: (s == "all", s)):
            recs = by_group[g]
            counted = sum(r[2] for r in recs)
            out[g] = {
                "per_keypoint": {str(a): sum(r[3][a] for r in recs) / counted for a in self.alphas},
                "per_pair": {str(a): float(np.mean([r[3][a] / r[2] for r in recs]))
                             for a in self.alphas},
                "n_pairs": len(recs),
                "n_keypoints": counted,
            }
        groups = [g for g in out if g != "all"]
        if groups:
            out["mean_over_groups"] = {
                "per_pair": {str(a): float(np.mean([out[g]["per_pair"][str(a)] for g in groups]))
                             for a in self.alphas},
                "per_keypoint": {str(a): float(np.mean([out[g]["per_keypoint"][str(a)]
                                                        for g in groups])) for a in self.alphas},
                "n_groups": len(groups),
            }
        return out

    def pairs(self, group: str | None = None) -> dict:
        """Per-pair counts (pairs with ≥ 1 counted keypoint, in the order added)::

            {"group": [...], "pair": [...], "n": [counted], "correct": {"α": [correct]}}

        only ``group``'s pairs when given."""
        recs = [r for r in self._records if group is None or r[0] == group]
        return {"group": [r[0] for r in recs], "pair": [r[1] for r in recs],
                "n": [r[2] for r in recs],
                "correct": {str(a): [r[3][a] for r in recs] for a in self.alphas}}


def iou(pred, gt) -> float:
    """Intersection over union of two bool masks of one shape; NaN when both are empty."""
    p = np.asarray(pred, dtype=bool)
    g = np.asarray(gt, dtype=bool)
    if p.shape != g.shape:
        raise ValueError(f"masks differ in shape: pred {p.shape} vs gt {g.shape}")
    union = np.logical_or(p, g).sum()
    if union == 0:
        return float("nan")
    return float(np.logical_and(p, g).sum() / union)


class IoUAccumulator:
    """Dataset-level IoU per label: ``IoU_l = Σ_pairs |P_l ∩ G_l| / Σ_pairs |P_l ∪ G_l|``.

    ``add(pred_labels, gt_labels, labels, ignore=None)`` with integer label maps (``H×W``) and the
    label ids to score (0 is usually background and may be scored too); ``ignore`` (bool ``H×W``)
    drops pixels. ``summary(names)`` returns per-label IoU and their mean (labels never seen in
    either map are left out of the mean). Per-pair IoUs are kept for a per-pair mean as well.
    """

    def __init__(self):
        self.inter = defaultdict(int)
        self.union = defaultdict(int)
        self.per_pair = []

    def add(self, pred_labels, gt_labels, labels, ignore=None) -> None:
        p = np.asarray(pred_labels)
        g = np.asarray(gt_labels)
        if p.shape != g.shape:
            raise ValueError(f"label maps differ in shape: pred {p.shape} vs gt {g.shape}")
        keep = np.ones(p.shape, bool) if ignore is None else ~np.asarray(ignore, bool)
        pair = []
        for lab in labels:
            pm, gm = (p == lab) & keep, (g == lab) & keep
            i, u = int((pm & gm).sum()), int((pm | gm).sum())
            self.inter[lab] += i
            self.union[lab] += u
            if u:
                pair.append(i / u)
        if pair:
            self.per_pair.append(float(np.mean(pair)))

    def summary(self, names: dict | None = None) -> dict:
        names = names or {}
        per = {str(names.get(lab, lab)): self.inter[lab] / self.union[lab]
               for lab in sorted(self.union) if self.union[lab] > 0}
        return {"per_label": per,
                "mean": float(np.mean(list(per.values()))) if per else float("nan"),
                "mean_per_pair": float(np.mean(self.per_pair)) if self.per_pair else float("nan"),
                "n_pairs": len(self.per_pair)}


def average_precision(scores, labels) -> float:
    """Average precision of ``scores`` (higher = more positive) against bool ``labels``.

    ``AP = Σ_n (R_n − R_{n−1}) · P_n`` over the distinct thresholds in decreasing order (tied scores
    form one threshold). NaN when there are no positives.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=bool).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.shape[0]}) and labels ({y.shape[0]}) differ in length")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    # last index of every run of equal scores = one threshold
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tp_t = tp[last].astype(np.float64)
    precision = tp_t / (last + 1)
    recall = tp_t / n_pos
    recall_prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - recall_prev) * precision))


def accuracy(scores, labels, threshold: float = 0.5) -> float:
    """Fraction of pixels where ``(score ≥ threshold) == label``."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=bool).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.shape[0]}) and labels ({y.shape[0]}) differ in length")
    if len(s) == 0:
        return float("nan")
    return float(np.mean((s >= threshold) == y))


def end_point_error(flow_pred, flow_gt) -> np.ndarray:
    """``‖F̂(p) − F(p)‖₂`` per pixel for two ``(2, H, W)`` flows (NaN where the ground truth is)."""
    p = np.asarray(flow_pred, dtype=np.float64)
    g = np.asarray(flow_gt, dtype=np.float64)
    if p.ndim != 3 or p.shape[0] != 2 or p.shape != g.shape:
        raise ValueError(f"flows must both be (2, H, W): pred {p.shape}, gt {g.shape}")
    return np.sqrt(((p - g) ** 2).sum(axis=0))


def flow_accuracy(flow_pred, flow_gt, mask=None, threshold: float = 5.0) -> dict:
    """Dense flow accuracy: fraction of evaluated pixels with end-point error ≤ ``threshold`` px.

    Evaluated pixels: inside ``mask`` (``H×W`` bool, default all) where the ground truth is finite.
    Returns ``{"accuracy", "mean_epe", "n_pixels"}`` (NaN when no pixel is evaluated).
    """
    epe = end_point_error(flow_pred, flow_gt)
    ok = np.isfinite(epe)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != epe.shape:
            raise ValueError(f"mask {m.shape} does not match the flow {epe.shape}")
        ok &= m
    n = int(ok.sum())
    if n == 0:
        return {"accuracy": float("nan"), "mean_epe": float("nan"), "n_pixels": 0}
    e = epe[ok]
    return {"accuracy": float(np.mean(e <= threshold)), "mean_epe": float(e.mean()), "n_pixels": n}
