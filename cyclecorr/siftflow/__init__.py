"""SIFT flow (Liu, Yuen, Torralba, TPAMI 2011): the paper's baseline and the target that the network
imitates in stage 1 (initialisation).

Quick start::

    from cyclecorr.siftflow import sift_flow
    res = sift_flow(image_a, image_b)      # numpy H×W×3 uint8 (or float in [0, 1])
    res.flow                               # (2, H, W) float32 flow_ab: b sampled at p + flow ≈ a(p)
    res.cost                               # (H, W) float32 SIFT L1 distance at the match

Batch (stage-1 targets, cached, resumable, parallel): :func:`compute_sift_flow_batch`.
"""
from cyclecorr.siftflow.batch import (
    compute_sift_flow_batch,
    load_image,
    load_sift_flow,
    pair_key,
    sift_flow_tensors,
)
from cyclecorr.siftflow.core import (
    SiftFlowParams,
    SiftFlowResult,
    matchability_from_cost,
    sift_flow,
    sift_flow_descriptors,
)
from cyclecorr.siftflow.dense_sift import dense_sift

__all__ = ["SiftFlowParams", "SiftFlowResult", "sift_flow", "sift_flow_descriptors", "dense_sift",
           "compute_sift_flow_batch", "load_sift_flow", "pair_key", "load_image",
           "sift_flow_tensors", "matchability_from_cost"]
