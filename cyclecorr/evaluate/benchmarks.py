"""One validation function per benchmark; each returns a dict with its numbers and a ``protocol``.

Every function takes a *method* (see :mod:`cyclecorr.evaluate.methods`) and already-loaded samples
(:class:`cyclecorr.data.samples.Sample` / ``PairSample``), so training code can call them on any
list of images. The method always runs at its own side ``S`` (128, the network's input): each whole
image is resized to ``S × S`` by :func:`cyclecorr.matcher.resize_image` (aspect not kept,
antialiased bilinear: the matcher's resizing); where a protocol measures in the original pixels, the
flow is carried back with the pixel-area convention of
:func:`cyclecorr.geometry.resample_flow` (``x_S = (x + 0.5)·S/W − 0.5``).

Protocols (recorded in every result's ``protocol`` sub-dict):

- :func:`evaluate_keypoint_transfer` — PCK on every ordered pair (i ≠ j) of a set, keypoints
  annotated in both images only, reference length ``"image"`` / ``"keypoint-box"`` /
  ``"object-box"`` of the target, measured at ``"original"`` resolution or on the ``S × S``
  images; both per-keypoint and per-pair averages, per group (class) and overall.
- :func:`evaluate_pck_pf_willow` — PF-WILLOW's standard protocol: 90 ordered pairs per class,
  α ∈ {0.05, 0.1, 0.15}, L = max side of the target's keypoint box, original pixels; the table
  number is the mean over classes of the per-pair PCK.
- :func:`evaluate_flowweb_car` — the paper's protocol on the FlowWeb cars: images (object crops)
  resized to 128×128, PCK at α·128 (keypoints annotated in both), matchability against part
  visibility (AP and accuracy at 0.5), part- and object-mask transfer (IoU).
- :func:`evaluate_tss` — dense flow accuracy on TSS pairs: fraction of foreground pixels of image
  1 whose flow error is ≤ 5 px, at the original resolution and (TSS's usual scale) with the error
  expressed in an image whose larger side is 100 px.
"""
from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from cyclecorr.evaluate.datasets import (
    PASCAL3D_MAX_AZIMUTH_GAP,
    PASCAL3D_MIN_COMMON,
    load_pf_willow,
)
from cyclecorr.evaluate.metrics import (
    IoUAccumulator,
    PCKAccumulator,
    accuracy,
    average_precision,
    flow_accuracy,
    iou,
    pck_pair,
    reference_length,
)
from cyclecorr.geometry import resample_flow, rescale_points, transfer_keypoints
from cyclecorr.matcher import resize_image

__all__ = [
    "resize_image",
    "resize_labels",
    "all_ordered_pairs",
    "predict_pairs",
    "annotated_keypoints",
    "keypoints_at_size",
    "transfer_keypoints_resized",
    "evaluate_keypoint_transfer",
    "evaluate_pck_pf_willow",
    "evaluate_pascal3d",
    "coarse_part_name",
    "part_label_map",
    "matchability_ground_truth",
    "evaluate_flowweb_car",
    "evaluate_tss",
    "method_protocol",
    "evaluate_synthetic",
]


def bar_label(method, set_name: str) -> str:
    """A progress bar's label: which method runs on which set (``"model on flowweb-car"``)."""
    return f"{getattr(method, 'name', '?')} on {set_name}"


def _tqdm(iterable, progress: bool, **kw):
    if not progress:
        return iterable

    return tqdm(iterable, **kw)


# ----------------------------------------------------------------------------- image handling
def resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of an integer/bool ``H×W`` map to ``size × size`` (pixel centres:
    output pixel i reads input pixel ``floor((i + 0.5)·H/size)``)."""
    a = np.asarray(labels)
    h, w = a.shape
    if (h, w) == (size, size):
        return a.copy()
    ys = np.minimum(((np.arange(size) + 0.5) * h / size).astype(int), h - 1)
    xs = np.minimum(((np.arange(size) + 0.5) * w / size).astype(int), w - 1)
    return a[ys][:, xs]


def all_ordered_pairs(n: int) -> list[tuple[int, int]]:
    """``[(i, j) for i ≠ j]``: every ordered pair of ``n`` images (``n·(n−1)`` pairs)."""
    return [(i, j) for i in range(n) for j in range(n) if i != j]


def predict_pairs(method, images: Sequence[torch.Tensor], pairs: Sequence[tuple[int, int]],
                  batch_size: int = 16, progress: bool = False, desc: str = "pairs"):
    """Yield ``(k, flow (2,S,S), matchability (1,S,S) or None)`` for every pair ``k`` = (src, tgt)
    index into ``images`` (already resized ``(3, S, S)`` tensors), batched."""
    bar = _tqdm(range(0, len(pairs), batch_size), progress, desc=desc,
                total=math.ceil(len(pairs) / batch_size), unit="batch", leave=False)
    for start in bar:
        chunk = pairs[start:start + batch_size]
        src = torch.stack([images[i] for i, _ in chunk])
        tgt = torch.stack([images[j] for _, j in chunk])
        flow, mat = method.predict_batch(src, tgt)
        for k in range(len(chunk)):
            yield start + k, flow[k], (None if mat is None else mat[k])


def annotated_keypoints(sample) -> np.ndarray:
    """A sample's ``(N, 2)`` keypoints, NaN where not annotated (``visible`` false)."""
    return np.where(np.asarray(sample.visible, bool)[:, None], sample.keypoints, np.nan)


def keypoints_at_size(sample, size: int) -> np.ndarray:
    """:func:`annotated_keypoints` in the ``size × size`` resize of the whole image that the
    methods see (pixel-area convention)."""
    h, w = sample.image.shape[:2]
    return rescale_points(annotated_keypoints(sample), np.array([size / w, size / h]))


def transfer_keypoints_resized(kps_a: np.ndarray, flow_small: torch.Tensor,
                               size_a: tuple[int, int], size_b: tuple[int, int]) -> np.ndarray:
    """Transfer original-pixel keypoints of a by a flow computed between ``S × S`` resizes.

    ``p_S = (p + 0.5)·S/W_a − 0.5``, ``q_S = p_S + F_S(p_S)`` (bilinear, border),
    ``q = (q_S + 0.5)·W_b/S − 0.5`` (same in y): exactly :func:`resample_flow` read at the
    keypoints.
    NaN keypoints stay NaN.
    """
    s_h, s_w = flow_small.shape[-2:]
    (ha, wa), (hb, wb) = size_a, size_b
    k = torch.as_tensor(np.asarray(kps_a, dtype=np.float64), dtype=torch.float64)
    scale_a = torch.tensor([s_w / wa, s_h / ha], dtype=torch.float64)
    scale_b = torch.tensor([wb / s_w, hb / s_h], dtype=torch.float64)
    p_small = rescale_points(k, scale_a)
    q_small = transfer_keypoints(p_small, flow_small.to(torch.float64))
    return rescale_points(q_small, scale_b).numpy()


def method_protocol(method) -> dict:
    """The method's own description (name, parameters, checkpoint sha256, …)."""
    if hasattr(method, "describe"):
        return method.describe()
    return {"name": getattr(method, "name", "?")}


# ----------------------------------------------------------------------------- keypoint PCK
def evaluate_keypoint_transfer(method, samples: Sequence, *, pairs=None,
                               alphas: Iterable[float] = (0.1,), reference: str = "image",
                               resolution: str = "original", groups: Sequence[str] | None = None,
                               set_name: str = "custom", batch_size: int = 16,
                               progress: bool = False, seed: int | None = None,
                               extra_protocol: dict | None = None) -> dict:
    """Keypoint-transfer PCK of ``method`` on ordered pairs of ``samples``.

    Args:
        method: see :mod:`cyclecorr.evaluate.methods`.
        samples: objects with ``image`` (``H×W×3`` uint8), ``keypoints`` (``(N, 2)`` 0-based x, y,
            NaN where missing), ``visible`` (``(N,)``), and ``bbox`` for ``"object-box"``. Keypoint
            k must mean the same part in every image of a group.
        pairs: ``(i, j)`` index pairs (source i, target j); default: all ordered pairs *within each
            group*.
        alphas: thresholds α.
        reference: ``"image"``, ``"keypoint-box"`` or ``"object-box"`` (of the target; see
            :func:`cyclecorr.evaluate.metrics.reference_length`).
        resolution: ``"original"``: keypoints transferred into the target's original pixels and L
            measured there; ``"network"``: everything at the method's ``S × S`` (keypoints mapped
            with the pixel-area convention; with ``"image"``, L = S).
        groups: group (class) name per sample; default one group named ``set_name``.

    Returns:
        ``{"pck": PCKAccumulator summary (per group + "all" + "mean_over_groups"), "n_pairs",
        "seconds", "protocol": {...}}``.
    """
    alphas = tuple(float(a) for a in alphas)
    if resolution not in ("original", "network"):
        raise ValueError(f"resolution must be 'original' or 'network', got {resolution!r}")
    if len(samples) < 2:
        raise ValueError(f"{set_name}: keypoint transfer needs at least 2 images, got "
                         f"{len(samples)}")
    groups = list(groups) if groups is not None else [set_name] * len(samples)
    pairs_text = f"{len(pairs)} given pairs" if pairs is not None else \
        "all ordered pairs (i != j) within each group"
    if pairs is None:
        pairs = [(i, j) for i, j in all_ordered_pairs(len(samples)) if groups[i] == groups[j]]
    size = int(method.size)
    t0 = time.perf_counter()
    images = [resize_image(s.image, size) for s in samples]
    acc = PCKAccumulator(alphas)
    for k, flow, _ in predict_pairs(method, images, pairs, batch_size, progress,
                                    desc=bar_label(method, set_name)):
        i, j = pairs[k]
        a, b = samples[i], samples[j]
        ha, wa = a.image.shape[:2]
        hb, wb = b.image.shape[:2]
        kps_a, kps_b = annotated_keypoints(a), annotated_keypoints(b)
        if len(kps_a) != len(kps_b):
            raise ValueError(f"{set_name}: pair ({i}, {j}) has {len(kps_a)} vs {len(kps_b)} "
                             "keypoints")
        if resolution == "original":
            pred = transfer_keypoints_resized(kps_a, flow, (ha, wa), (hb, wb))
            gt, hw_b, bbox_b = kps_b, (hb, wb), getattr(b, "bbox", None)
        else:
            sa = np.array([size / wa, size / ha])
            sb = np.array([size / wb, size / hb])
            ka = rescale_points(kps_a, sa)
            pred = transfer_keypoints(torch.from_numpy(ka), flow.double()).numpy()
            gt, hw_b = rescale_points(kps_b, sb), (size, size)
            bbox_b = None
            if getattr(b, "bbox", None) is not None:
                x0, y0, x1, y1 = b.bbox
                bbox_b = ((x0 - 0.5) * sb[0] + 0.5, (y0 - 0.5) * sb[1] + 0.5,
                          (x1 + 0.5) * sb[0] - 0.5, (y1 + 0.5) * sb[1] - 0.5)
        ref = reference_length(reference, image_size=hw_b, keypoints=gt, bbox=bbox_b)
        valid = np.isfinite(kps_a).all(1) & np.isfinite(kps_b).all(1)
        acc.add(groups[i], pck_pair(pred, gt, ref, alphas, valid), pair=f"{i}-{j}")
    protocol = {
        "task": "keypoint transfer (PCK)", "set": set_name, "pairs": pairs_text,
        "alphas": list(alphas), "reference_length": _REF_TEXT[reference],
        "averaging": "per_keypoint (all counted keypoints) and per_pair (mean of pair PCKs); "
                     "mean_over_groups = unweighted mean over groups",
        "keypoints": "annotated in both images", "method_resolution": f"{size}x{size} (whole image "
        "resized, aspect not kept)",
        "measured_in": ("original image pixels" if resolution == "original"
                        else f"{size}x{size} pixels"),
        "method": method_protocol(method), "seed": seed,
    }
    protocol.update(extra_protocol or {})
    return {"pck": acc.summary(), "pck_pairs": acc.pairs(), "n_pairs": len(pairs),
            "seconds": time.perf_counter() - t0, "protocol": protocol}


_REF_TEXT = {
    "image": "max(H, W) of the target image",
    "keypoint-box": "max(w, h) of the target's annotated-keypoint bounding box",
    "object-box": "max(w, h) of the target's object box",
}


def evaluate_pck_pf_willow(method, root=None, alphas=(0.05, 0.1, 0.15), classes=None,
                           limit: int | None = None, batch_size: int = 16,
                           progress: bool = False, samples_by_class: dict | None = None) -> dict:
    """PF-WILLOW, standard protocol: all 90 ordered pairs per class, PCK with L = max side of the
    target's keypoint box, α ∈ {0.05, 0.1, 0.15}, original pixels (method run at S×S on whole
    images). ``limit`` keeps the first ``limit`` images per class (quick runs; recorded).

    Either ``root`` (the ``pf-willow`` folder) or ``samples_by_class`` ({class: [Sample]}).
    Returns :func:`evaluate_keypoint_transfer`'s dict; the headline number is
    ``pck["mean_over_groups"]["per_pair"]["0.1"]``.
    """
    if samples_by_class is None:
        samples_by_class = load_pf_willow(root, classes=classes, limit=limit)
    samples, groups = [], []
    for cls, ss in samples_by_class.items():
        ss = list(ss)[:limit] if limit else list(ss)
        samples += ss
        groups += [cls] * len(ss)
    return evaluate_keypoint_transfer(
        method, samples, alphas=alphas, reference="keypoint-box", resolution="original",
        groups=groups, set_name="pf-willow", batch_size=batch_size, progress=progress,
        extra_protocol={"limit_per_class": limit, "classes": list(samples_by_class)})


def evaluate_pascal3d(method, samples: Sequence, pairs, *, alphas=(0.05, 0.1, 0.15),
                      set_name: str = "pascal3d-car", batch_size: int = 16,
                      progress: bool = False, seed: int | None = None) -> dict:
    """The ``pascal3d-<category>`` protocol on the photos and pairs of
    :func:`~cyclecorr.evaluate.datasets.load_pascal3d_set`: object-box crops at S×S, PCK per
    keypoint at α·S (keypoints annotated in both). Returns :func:`evaluate_keypoint_transfer`'s
    dict; the headline number is ``pck["all"]["per_keypoint"]["0.1"]``."""
    extra = {"source": "PASCAL3D+ ImageNet photos (not truncated, occluded or difficult), "
                       "object-box crops resized to S×S",
             "pair_rule": f"azimuths within {PASCAL3D_MAX_AZIMUTH_GAP:g}°, "
                          f"≥ {PASCAL3D_MIN_COMMON} keypoints visible in both; {len(pairs)} "
                          "drawn by the seed",
             "n_images": len(samples)}
    return evaluate_keypoint_transfer(
        method, samples, pairs=pairs, alphas=alphas, reference="image", resolution="network",
        set_name=set_name, batch_size=batch_size, progress=progress, seed=seed,
        extra_protocol=extra)


# ----------------------------------------------------------------------------- FlowWeb cars
def coarse_part_name(name: str) -> str:
    """PASCAL-Part names without the instance index: ``"wheel_2"`` → ``"wheel"``."""
    return re.sub(r"_\d+$", "", str(name))


def part_label_map(parts: dict, shape: tuple[int, int], names: Sequence[str]) -> np.ndarray:
    """Integer part map (0 = no part) from ``{part: H×W bool}``, parts merged by
    :func:`coarse_part_name`; label ``names.index(coarse) + 1``. Where parts overlap the smaller
    (coarse) part wins (it is painted last)."""
    merged: dict[str, np.ndarray] = {}
    for k, m in parts.items():
        c = coarse_part_name(k)
        if c not in names:
            continue
        merged[c] = merged.get(c, np.zeros(shape, bool)) | np.asarray(m, bool)
    out = np.zeros(shape, np.int32)
    for c in sorted(merged, key=lambda c: -int(merged[c].sum())):
        out[merged[c]] = names.index(c) + 1
    return out


def matchability_ground_truth(mask_a: np.ndarray, labels_a: np.ndarray,
                              labels_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Matchable source pixels from real masks (the paper's PASCAL-Part protocol).

    A source pixel p is matchable (1) when it lies on the object and its (coarse) part is visible
    in the target (that part has ≥ 1 pixel in ``labels_b``); background pixels are unmatchable (0);
    object pixels without a part label are ignored.

    Returns ``(label (H×W bool), evaluated (H×W bool))``.
    """
    obj = np.asarray(mask_a, bool)
    visible_b = np.zeros(int(max(labels_a.max(initial=0), labels_b.max(initial=0))) + 1, bool)
    present = np.unique(labels_b)
    visible_b[present[present > 0]] = True
    la = np.asarray(labels_a)
    label = obj & (la > 0) & visible_b[la]
    evaluated = ~obj | (la > 0)
    return label, evaluated


def _warp_nearest(labels_b: np.ndarray, flow) -> np.ndarray:
    """``out(p) = labels_b(round(p + flow(p)))``, 0 outside b (``labels_b`` ``H×W``, flow
    ``(2, h, w)``)."""
    labels_b = np.asarray(labels_b)
    f = flow.numpy() if isinstance(flow, torch.Tensor) else np.asarray(flow)
    h, w = labels_b.shape
    s_h, s_w = f.shape[-2:]
    qx = np.rint(np.arange(s_w)[None, :] + f[0]).astype(np.int64)
    qy = np.rint(np.arange(s_h)[:, None] + f[1]).astype(np.int64)
    inside = (qx >= 0) & (qx < w) & (qy >= 0) & (qy < h)
    out = np.zeros((s_h, s_w), labels_b.dtype)
    out[inside] = labels_b[qy[inside], qx[inside]]
    return out


def _matchability_summary(scores: list, truths: list, pair_ap: list) -> dict:
    """Matchability over all pixels of a set: AP, accuracy at 0.5, the mean of the per-pair APs,
    the fraction of matchable pixels and their count, from per-pair score and truth arrays."""
    s_all, t_all = np.concatenate(scores), np.concatenate(truths)
    return {"ap": average_precision(s_all, t_all),
            "accuracy@0.5": accuracy(s_all, t_all, 0.5),
            "mean_pair_ap": float(np.mean(pair_ap)) if pair_ap else None,
            "positive_fraction": float(t_all.mean()),
            "n_pixels": int(len(t_all))}


def evaluate_flowweb_car(method, samples: Sequence, *, alphas=(0.05, 0.1, 0.15), pairs=None,
                         size: int | None = None, batch_size: int = 16, progress: bool = False,
                         set_name: str = "flowweb-car", seed: int | None = None,
                         tasks=("pck", "matchability", "segmentation")) -> dict:
    """The paper's evaluation on FlowWeb/PASCAL cars, every ordered pair, at ``S × S``.

    ``samples``: :class:`~cyclecorr.data.samples.Sample` objects of the object crops, at any size
    (each whole image is resized to ``S × S``, aspect not kept; keypoints map with the pixel-area
    convention; masks and parts are resized nearest-neighbour). This is also the periodic
    validation of training (``tasks=("pck",)`` for speed).

    - ``pck``: keypoints annotated in both, correct within α·S (S = 128 → α·128).
    - ``matchability`` (methods with one): AP and accuracy at 0.5 over all evaluated source pixels
      of all pairs pooled (:func:`matchability_ground_truth`); ``mean_pair_ap`` too.
    - ``segmentation``: the target's coarse part map carried to the source by the flow
      (nearest label at ``round(p + F(p))``, none outside the image) vs the source's parts:
      dataset-level IoU per part and its mean (object pixels without a part label ignored); the
      target's object mask carried the same way vs the source's mask: mean IoU over pairs.
    """
    size = int(size or method.size)
    if int(method.size) != size:
        raise ValueError(f"method runs at {method.size}, evaluation asked for {size}")
    if len(samples) < 2:
        raise ValueError(f"{set_name}: needs at least 2 images, got {len(samples)}")
    t0 = time.perf_counter()
    pairs = pairs if pairs is not None else all_ordered_pairs(len(samples))
    alphas = tuple(float(a) for a in alphas)
    images = [resize_image(s.image, size) for s in samples]
    names = sorted({coarse_part_name(k) for s in samples for k in getattr(s, "parts", {}) or {}})
    masks, labels = [], []
    for s in samples:
        m = s.mask if getattr(s, "mask", None) is not None else np.ones(s.image.shape[:2], bool)
        masks.append(resize_labels(np.asarray(m, bool), size))
        labels.append(resize_labels(part_label_map(s.parts or {}, s.image.shape[:2], names), size))
    kps = [keypoints_at_size(s, size) for s in samples]

    pck = PCKAccumulator(alphas)
    scores, truths, pair_ap = [], [], []
    seg = IoUAccumulator()
    obj_ious = []
    has_match = None
    for k, flow, mat in predict_pairs(method, images, pairs, batch_size, progress,
                                      desc=bar_label(method, set_name)):
        i, j = pairs[k]
        if "pck" in tasks and len(kps[i]):
            pred = transfer_keypoints(torch.from_numpy(kps[i]), flow.double()).numpy()
            valid = np.isfinite(kps[i]).all(1) & np.isfinite(kps[j]).all(1)
            pck.add(set_name, pck_pair(pred, kps[j], float(size), alphas, valid), pair=f"{i}-{j}")
        if "matchability" in tasks and mat is not None:
            has_match = True
            lab, ev = matchability_ground_truth(masks[i], labels[i], labels[j])
            sc = mat[0].numpy()[ev]
            scores.append(sc.astype(np.float32))
            truths.append(lab[ev])
            if lab[ev].any() and not lab[ev].all():
                pair_ap.append(average_precision(sc, lab[ev]))
        if "segmentation" in tasks:
            warped = _warp_nearest(labels[j], flow)
            ignore = masks[i] & (labels[i] == 0)
            seg.add(warped, labels[i], range(1, len(names) + 1), ignore=ignore)
            wm = _warp_nearest(masks[j], flow)
            obj_ious.append(iou(wm, masks[i]))
    out: dict = {"n_pairs": len(pairs), "n_images": len(samples)}
    if "pck" in tasks:
        out["pck"] = pck.summary().get(set_name, {})
        out["pck_pairs"] = pck.pairs()
    if "matchability" in tasks:
        out["matchability"] = _matchability_summary(scores, truths, pair_ap) if has_match else None
    if "segmentation" in tasks:
        s = seg.summary({i + 1: n for i, n in enumerate(names)})
        out["segmentation"] = {"part_iou": s["per_label"], "mean_part_iou": s["mean"],
                               "object_iou": float(np.nanmean(obj_ious)) if obj_ious else None}
    out["seconds"] = time.perf_counter() - t0
    out["protocol"] = {
        "task": "FlowWeb/PASCAL cars: keypoint transfer, matchability, part/object mask transfer",
        "set": set_name, "pairs": f"all {len(pairs)} ordered pairs (i != j)" if len(pairs) ==
        len(samples) * (len(samples) - 1) else f"{len(pairs)} given pairs",
        "resolution": f"{size}x{size}: each whole image (object crop) resized, aspect not kept",
        "alphas": list(alphas), "reference_length": f"image side {size} (alpha*{size} px)",
        "averaging": "PCK per keypoint over all pairs (per_keypoint) and mean of pair PCKs "
                     "(per_pair); matchability AP/accuracy over all evaluated pixels pooled; "
                     "part IoU dataset-level per part, then mean over parts; object IoU mean "
                     "over pairs",
        "keypoints": "annotated in both images",
        "matchability_truth": "source pixel on the object whose part (instance index dropped) is "
                              "visible in the target = 1; background = 0; unlabelled object pixels "
                              "ignored",
        "parts": names, "method": method_protocol(method), "seed": seed,
    }
    return out


# ----------------------------------------------------------------------------- TSS
def evaluate_tss(method, pairs: Sequence, *, threshold: float = 5.0, batch_size: int = 8,
                 progress: bool = False, names: Sequence[str] | None = None,
                 set_name: str = "tss", seed: int | None = None) -> dict:
    """Dense flow accuracy on TSS pairs (:class:`~cyclecorr.data.samples.PairSample`).

    The method runs on the two whole images resized to ``S × S``; its flow is re-expressed in the
    original pixels (:func:`cyclecorr.geometry.resample_flow`) and compared with ``flow_ab`` inside
    ``mask_a`` where the ground truth is finite. Reported: ``accuracy`` = fraction of those pixels
    with error ≤ ``threshold`` px at the original resolution, and ``accuracy_max_side_100`` = the
    same with errors scaled to an image whose larger side is 100 px (error·100/max(H_a, W_a)):
    with the default ``threshold`` of 5 px this is PCK@0.05 of the larger side, the standard
    TSS protocol and the headline TSS number of the reports; per pair, per group (the folder:
    FG3DCar, JODS, PASCAL) as the mean over its pairs, and the mean over all pairs.
    """
    if len(pairs) == 0:
        raise ValueError(f"{set_name}: no pairs to evaluate")
    t0 = time.perf_counter()
    size = int(method.size)
    if names is None:
        names = []
        for i, p in enumerate(pairs):
            meta = getattr(p, "meta", {}) or {}
            names.append(f"{meta.get('group', set_name)}/{meta.get('name', i)}")
    per_pair = {}
    for k in _tqdm(range(0, len(pairs), batch_size), progress, desc=bar_label(method, set_name),
                   leave=False):
        chunk = pairs[k:k + batch_size]
        src = torch.stack([resize_image(p.image_a, size) for p in chunk])
        tgt = torch.stack([resize_image(p.image_b, size) for p in chunk])
        flow, _ = method.predict_batch(src, tgt)
        for n, p in enumerate(chunk):
            ha, wa = p.image_a.shape[:2]
            hb, wb = p.image_b.shape[:2]
            f = resample_flow(flow[n:n + 1].float(), (ha, wa), (hb, wb))[0].numpy()
            gt = np.asarray(p.flow_ab, np.float64)
            mask = p.mask_a if p.mask_a is not None else np.ones((ha, wa), bool)
            r = flow_accuracy(f, gt, mask, threshold)
            r100 = flow_accuracy(f * (100.0 / max(ha, wa)), gt * (100.0 / max(ha, wa)), mask,
                                 threshold)
            per_pair[names[k + n]] = {"accuracy": r["accuracy"], "mean_epe": r["mean_epe"],
                                      "accuracy_max_side_100": r100["accuracy"],
                                      "n_pixels": r["n_pixels"], "size": [ha, wa]}
    by_group = defaultdict(list)
    for name, r in per_pair.items():
        by_group[name.split("/")[0]].append(r)
    groups = {}
    for g, rs in sorted(by_group.items()):
        groups[g] = {key: float(np.mean([r[key] for r in rs]))
                     for key in ("accuracy", "accuracy_max_side_100", "mean_epe")}
        groups[g]["n_pairs"] = len(rs)
    mean = {key: float(np.mean([r[key] for r in per_pair.values()]))
            for key in ("accuracy", "accuracy_max_side_100", "mean_epe")}
    return {"mean": mean, "groups": groups, "pairs": per_pair, "n_pairs": len(per_pair),
            "seconds": time.perf_counter() - t0,
            "protocol": {"task": "dense flow accuracy (TSS)", "set": set_name,
                         "threshold_px": threshold,
                         "pixels": "foreground of image 1 (mask1) with finite ground truth",
                         "resolution": f"method at {size}x{size} on whole images; flow resampled "
                                       "to the original pixels",
                         "accuracy": "error <= threshold at the original resolution",
                         "accuracy_max_side_100": "error scaled by 100/max(H, W) of image 1",
                         "averaging": "mean over pairs (per group and overall)",
                         "method": method_protocol(method), "seed": seed}}


# ----------------------------------------------------------------------------- synthetic renders
def evaluate_synthetic(method, pairs: Sequence, *, alphas=(0.05, 0.1, 0.15),
                       flow_threshold: float = 5.0, batch_size: int = 16, progress: bool = False,
                       set_name: str = "synthetic", seed: int | None = None,
                       generation: dict | None = None) -> dict:
    """Keypoint transfer, matchability and dense flow on rendered CAD pairs
    (:class:`cyclecorr.evaluate.datasets.SyntheticPair`, all ``S × S`` crops).

    - ``pck``: named 3D keypoints visible in both renders, correct within α·S; all pairs
      (same-model and cross-model) and each kind alone (``pck_cross_model``,
      ``pck_same_model``); per keypoint name too (``pck_by_keypoint``). Per-pair records
      (``pck_pairs``) are named by ``meta["pair_name"]`` where the pairs carry one (cross-instance
      pairs: ``"i-j#k"``, so that the bootstrap resamples models), else by the pair's index;
    - ``matchability`` (methods with one): AP and accuracy at 0.5 against the pairs'
      ``match_ab`` (same-model pairs: the renderer's exact matchability; cross-instance pairs:
      the source model's visibility from the target's viewpoint), all pixels of all such pairs
      pooled, and the mean of the pairs' APs (``mean_pair_ap``);
    - ``flow``: fraction of matchable source pixels with flow error ≤ ``flow_threshold`` px
      (same-model pairs, mean over pairs).
    """
    if len(pairs) == 0:
        raise ValueError(f"{set_name}: no pairs")
    size = int(method.size)
    t0 = time.perf_counter()
    alphas = tuple(float(a) for a in alphas)
    images_a = [resize_image(p.image_a, size) for p in pairs]
    images_b = [resize_image(p.image_b, size) for p in pairs]
    images = images_a + images_b
    n = len(pairs)
    index_pairs = [(k, n + k) for k in range(n)]
    pck = PCKAccumulator(alphas)
    by_name: dict[str, list] = defaultdict(list)
    scores, truths, flow_acc, pair_ap = [], [], [], []
    has_match = False
    for k, flow, mat in predict_pairs(method, images, index_pairs, batch_size, progress,
                                      desc=bar_label(method, set_name)):
        p = pairs[k]
        h, w = p.image_a.shape[:2]
        if (h, w) != (size, size) or p.image_b.shape[:2] != (size, size):
            raise ValueError(f"{set_name}: pair {k} renders are {p.image_a.shape[:2]} / "
                             f"{p.image_b.shape[:2]}, method runs at {size}x{size}")
        if len(p.kps_a):
            pred = transfer_keypoints(torch.from_numpy(p.kps_a), flow.double()).numpy()
            valid = np.isfinite(p.kps_a).all(1) & np.isfinite(p.kps_b).all(1)
            r = pck_pair(pred, p.kps_b, float(size), alphas, valid)
            same = p.flow_ab is not None
            pck.add("same-model" if same else "cross-model", r,
                    pair=(p.meta or {}).get("pair_name", str(k)))
            for i, name in enumerate(getattr(p, "keypoint_names", None) or []):
                if np.isfinite(r["errors"][i]):  # counted: visible in both
                    by_name[name].append([bool(r["correct"][a][i]) for a in alphas])
        if p.match_ab is not None and mat is not None:
            gt_m = np.asarray(p.match_ab) > 0.5
            has_match = True
            sc = mat[0].numpy().reshape(-1)
            scores.append(sc)
            truths.append(gt_m.reshape(-1))
            if gt_m.any() and not gt_m.all():
                pair_ap.append(average_precision(sc, gt_m.reshape(-1)))
        if p.flow_ab is not None:
            gt_m = np.asarray(p.match_ab) > 0.5
            fa = flow_accuracy(flow.numpy(), p.flow_ab, gt_m, flow_threshold)
            if fa["n_pixels"]:
                flow_acc.append(fa)
    summ = pck.summary()
    out: dict = {"n_pairs": n, "pck": summ.get("all", {}),
                 "pck_cross_model": summ.get("cross-model"),
                 "pck_same_model": summ.get("same-model"), "pck_pairs": pck.pairs(),
                 "pck_by_keypoint": {
                     name: {"n": len(v), **{str(a): float(np.mean([x[i] for x in v]))
                                            for i, a in enumerate(alphas)}}
                     for name, v in sorted(by_name.items())}}
    out["matchability"] = _matchability_summary(scores, truths, pair_ap) if has_match else None
    out["flow"] = ({"accuracy": float(np.mean([f["accuracy"] for f in flow_acc])),
                    "mean_epe": float(np.mean([f["mean_epe"] for f in flow_acc])),
                    "n_pairs": len(flow_acc)} if flow_acc else None)
    out["seconds"] = time.perf_counter() - t0
    cross_truth = any(p.flow_ab is None and p.match_ab is not None for p in pairs)
    out["protocol"] = {
        "task": "synthetic CAD pairs: keypoint transfer, matchability, dense flow",
        "set": set_name, "resolution": f"{size}x{size} renders (object box crop)",
        "alphas": list(alphas), "reference_length": f"image side {size} (alpha*{size} px)",
        "keypoints": "named 3D keypoints visible in both renders",
        "averaging": "PCK per keypoint and per pair; matchability pooled over the pixels of the "
                     "pairs with a matchability truth; flow accuracy mean over same-model pairs",
        "matchability_truth": "same-model pairs: the renderer's exact matchability"
                              + ("; cross-instance pairs: the source model's surface point at "
                                 "the pixel is visible from the target's viewpoint (source "
                                 "rendered from there), background unmatchable"
                                 if cross_truth else ""),
        "flow_threshold_px": flow_threshold, "generation": generation or {},
        "method": method_protocol(method), "seed": seed,
    }
    return out
