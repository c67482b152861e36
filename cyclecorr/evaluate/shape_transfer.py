"""Shape-to-image segmentation transfer: a rendered CAD model's mask carried onto real images.

Protocol (:func:`evaluate_shape_to_image`), for each real image (an object crop with a mask):

1. *template*: the PASCAL3D+ CAD models of the category are rendered over a viewpoint grid
   (azimuth every ``azimuth_step``°, elevations ``elevations``, distance 2.5, each render cropped
   to the object's box at 128×128, black background); the render nearest to the real crop in HOG
   space (:func:`cyclecorr.data.retrieval.hog_descriptor`, Euclidean) is the template — the
   paper's retrieval of a CAD model for a real image, with the viewpoint estimated the same way
   since these images carry no viewpoint annotation;
2. the method predicts the flow real → template at 128×128;
3. the template's mask is read at ``round(p + F(p))`` (0 outside) to give the real image's
   predicted mask, scored by IoU against the real mask resized to 128×128 (nearest).

Zero flow gives the IoU of the retrieved template overlaid as is (retrieval alone); a method
beats it only by aligning the shape. The PASCAL3D+ models carry no part labels, so only the
object mask is transferred (part transfer needs part-labelled CAD models).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cyclecorr.data.retrieval import hog_descriptor
from cyclecorr.evaluate.benchmarks import (
    _warp_nearest,
    bar_label,
    method_protocol,
    resize_image,
    resize_labels,
)
from cyclecorr.evaluate.datasets import resolve_dataset_dir
from cyclecorr.evaluate.metrics import iou
from cyclecorr.render import Viewpoint, default_renderer, load_mesh

__all__ = ["TemplateBank", "build_template_bank", "evaluate_shape_to_image"]


class TemplateBank:
    """Renders (rgb, mask), their HOG descriptors and (model, azimuth, elevation) labels."""

    def __init__(self, rgb, masks, hog, labels):
        self.rgb, self.masks, self.hog, self.labels = rgb, masks, hog, labels

    def nearest(self, image: np.ndarray) -> int:
        d = ((self.hog - hog_descriptor(image)[None]) ** 2).sum(1)
        return int(np.argmin(d))


def build_template_bank(root=None, category: str = "car", azimuth_step: float = 30.0,
                        elevations=(0.0, 15.0), size: int = 128, progress: bool = False
                        ) -> TemplateBank:
    """Render every PASCAL3D+ CAD model of ``category`` over the viewpoint grid (see module doc)."""
    folder = resolve_dataset_dir(root, "cad", "pascal3d", marker="*.json")
    files = sorted(folder.glob(f"{category}[0-9]*.json"))
    if not files:
        raise FileNotFoundError(f"no PASCAL3D+ CAD models {category}NN.json in {folder}")
    r = default_renderer()
    rgb, masks, hogs, labels = [], [], [], []
    jobs = [(f, a, e) for f in files for a in np.arange(0, 360, azimuth_step) for e in elevations]
    it = jobs
    if progress:
        it = tqdm(jobs, desc="render templates", leave=False)
    meshes = {}
    for f, a, e in it:
        if f not in meshes:
            meshes[f] = load_mesh(f)
        v = r.render(meshes[f], Viewpoint(azimuth=float(a), elevation=float(e)), size)
        rgb.append(v.rgb)
        masks.append(v.mask)
        hogs.append(hog_descriptor(v.rgb))
        labels.append((Path(f).name, float(a), float(e)))
    return TemplateBank(rgb, masks, np.stack(hogs), labels)


def evaluate_shape_to_image(method, samples: Sequence, bank: TemplateBank | None = None, *,
                            root=None, category: str = "car", progress: bool = False,
                            set_name: str = "shape2image-car", seed: int | None = None) -> dict:
    """Object-mask transfer from the retrieved CAD render onto each real image (module doc).

    ``samples``: objects with ``image`` (``H×W×3`` uint8, an object crop) and ``mask``.
    Returns ``{"object_iou": mean over images, "per_image": [...], "protocol": {...}}``.
    """

    t0 = time.perf_counter()
    size = int(method.size)
    bank = bank or build_template_bank(root, category, size=size, progress=progress)
    ious, per = [], []
    it = range(len(samples))
    if progress:
        it = tqdm(it, desc=bar_label(method, set_name), leave=False)
    for i in it:
        s = samples[i]
        if getattr(s, "mask", None) is None:
            raise ValueError(f"{getattr(s, 'path', i)}: shape-to-image transfer needs a mask")
        k = bank.nearest(s.image)
        src = resize_image(s.image, size)[None]
        tgt = resize_image(bank.rgb[k], size)[None]
        flow, _ = method.predict_batch(src, tgt)
        pred = _warp_nearest(np.asarray(bank.masks[k]), flow[0]).astype(bool)
        gt = resize_labels(np.asarray(s.mask, bool), size)
        v = iou(pred, gt)
        ious.append(v)
        per.append({"image": str(getattr(s, "path", i)), "template": list(bank.labels[k]),
                    "iou": v})
    return {"object_iou": float(np.nanmean(ious)), "n_images": len(samples), "per_image": per,
            "seconds": time.perf_counter() - t0,
            "protocol": {"task": "shape-to-image mask transfer", "set": set_name,
                         "template": "nearest render in HOG space among PASCAL3D+ "
                                     f"{category} models x viewpoint grid "
                                     f"({len(bank.labels)} renders)",
                         "resolution": f"{size}x{size} (whole crops resized, aspect not kept)",
                         "transfer": "template mask read at round(p + F(p)), 0 outside",
                         "score": "IoU with the real mask, mean over images",
                         "parts": "not scored: the PASCAL3D+ CAD models have no part labels",
                         "method": method_protocol(method), "seed": seed}}
