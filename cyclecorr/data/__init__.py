"""Real data, crops, HOG retrieval of (model, viewpoint), and the paper's training quartets.

Conventions: numpy images ``H×W×3`` uint8; keypoints ``(N, 2)`` (x, y) **0-based** (1-based
MATLAB/VOC annotations are converted once, in the loaders); masks ``H×W`` bool; flows ``(2, H, W)``
(channel 0 = x, 1 = y, pixels, ``flow_ab(p) = q − p``); tensors ``(3, H, W)`` float in [0, 1].

Loaders (:mod:`cyclecorr.data.datasets`, lazy sequences of :class:`Sample` / :class:`PairSample`):
``PFWillow``, ``FlowWebCars``, ``TSSPairs``, ``ImageFolder`` (with ``boxes.tsv`` /
``models.tsv``), ``VOCDetection``, ``Pascal3D``, and ``list_shapenet`` for ShapeNetCore meshes.

The paper's crop: ``crop_sample(sample, size=128, box=None, scale=1.0, flip=False)``
(:mod:`cyclecorr.data.samples`), ``flip_sample`` (left/right keypoint and part swap).

Retrieval (:mod:`cyclecorr.data.retrieval`): ``hog_descriptor``, ``build_bank``,
``estimate_viewpoints``, ``nearest_models``.

Quartets: ``prepare_quartets`` writes them (:mod:`cyclecorr.data.quartets`, the ``cyclecorr
prepare`` command); ``QuartetDataset(folder)``, ``OnTheFlyQuartetDataset(folder)`` and
``PairDataset`` read them (:mod:`cyclecorr.data.quartet_datasets`); ``verify_quartets`` checks a
folder against its manifest (:mod:`cyclecorr.data.quartet_files`, the on-disk layout).

>>> from cyclecorr.data import FlowWebCars, crop_sample
>>> s = crop_sample(FlowWebCars("../shared/data/real/flowweb-car")[0])   # 128×128, box = mask
>>> s.image.shape, s.keypoints[s.visible]                                # 0-based (x, y)
"""
import importlib

from cyclecorr.data.datasets import (
    PASCAL3D_KEYPOINTS,
    SHAPENET_SYNSETS,
    FlowWebCars,
    ImageFolder,
    Pascal3D,
    PFWillow,
    TSSPairs,
    VOCDetection,
    list_images,
    list_shapenet,
)
from cyclecorr.data.io import DataError, load_mat, read_flo, read_image, read_mask, write_flo
from cyclecorr.data.samples import (
    PairSample,
    Sample,
    crop_array,
    crop_sample,
    flip_sample,
    image_to_tensor,
    mask_box,
    swap_left_right,
)

__all__ = [
    "DataError", "read_image", "read_mask", "load_mat", "read_flo", "write_flo",
    "Sample", "PairSample", "crop_sample", "flip_sample", "mask_box", "crop_array",
    "swap_left_right", "image_to_tensor",
    "PFWillow", "FlowWebCars", "TSSPairs", "ImageFolder", "VOCDetection", "Pascal3D",
    "list_shapenet", "list_images", "PASCAL3D_KEYPOINTS", "SHAPENET_SYNSETS",
]


_LAZY = {
    "prepare_quartets": "cyclecorr.data.quartets",
    "QuartetConfig": "cyclecorr.data.quartet_config",
    "verify_quartets": "cyclecorr.data.quartet_files",
    "QuartetDataset": "cyclecorr.data.quartet_datasets",
    "OnTheFlyQuartetDataset": "cyclecorr.data.quartet_datasets",
    "PairDataset": "cyclecorr.data.quartet_datasets",
    **dict.fromkeys(("RenderBank", "hog_descriptor", "HOG_PARAMS", "estimate_viewpoints",
                     "nearest_models", "build_bank"), "cyclecorr.data.retrieval"),
}


def __getattr__(name):  # on use: the quartet and retrieval modules import torch and skimage
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cyclecorr.data' has no attribute {name!r}")
