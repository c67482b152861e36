"""Evaluation of dense correspondence: metrics, methods (baselines and networks), one validation
function per benchmark (each returns a dict with a ``protocol``), and reports.

>>> from cyclecorr.evaluate import NetworkMethod, evaluate_flowweb_car, load_flowweb_car
>>> method = NetworkMethod.from_file("model.safetensors")
>>> res = evaluate_flowweb_car(method, load_flowweb_car(), tasks=("pck",))
>>> res["pck"]["per_keypoint"]["0.1"]

Two methods on the same pairs are compared pair by pair (:mod:`cyclecorr.evaluate.stats`):
``paired_bootstrap(res_a["pck_pairs"], res_b["pck_pairs"], 0.1)`` gives the difference of their
headline PCK and its 95 % bootstrap interval (``cyclecorr evaluate`` reports these).

Conventions: keypoints ``(N, 2)`` (x, y) 0-based; flows ``(B, 2, H, W)`` channel 0 = x, in pixels,
``flow_ab(p) = q − p``; matchability in [0, 1]; methods run on ``(B, 3, 128, 128)`` images in
[0, 1].
"""
from cyclecorr.evaluate.benchmarks import (
    all_ordered_pairs,
    evaluate_flowweb_car,
    evaluate_keypoint_transfer,
    evaluate_pck_pf_willow,
    evaluate_synthetic,
    evaluate_tss,
    matchability_ground_truth,
    part_label_map,
    predict_pairs,
    resize_image,
    transfer_keypoints_resized,
)
from cyclecorr.evaluate.datasets import (
    SyntheticPair,
    load_flowweb_car,
    load_pf_willow,
    load_tss,
    make_synthetic_pairs,
)
from cyclecorr.evaluate.methods import (
    NetworkMethod,
    SiftFlowMethod,
    ZeroFlow,
    make_method,
    predict_in_batches,
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
from cyclecorr.evaluate.report import markdown_report, write_results
from cyclecorr.evaluate.stats import compare_set, paired_bootstrap

__all__ = [
    "all_ordered_pairs", "evaluate_flowweb_car", "evaluate_keypoint_transfer",
    "evaluate_pck_pf_willow", "evaluate_synthetic", "evaluate_tss", "matchability_ground_truth",
    "part_label_map", "predict_pairs", "resize_image", "transfer_keypoints_resized",
    "SyntheticPair", "load_flowweb_car", "load_pf_willow", "load_tss", "make_synthetic_pairs",
    "NetworkMethod", "SiftFlowMethod", "ZeroFlow", "make_method", "predict_in_batches",
    "IoUAccumulator", "PCKAccumulator", "accuracy", "average_precision", "flow_accuracy", "iou",
    "pck_pair", "reference_length", "markdown_report", "write_results", "compare_set",
    "paired_bootstrap",
]
