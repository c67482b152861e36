"""Annotated real images (:class:`Sample`, :class:`PairSample`) and the paper's crop.

Conventions (the package's, see DESIGN.md):

- ``image``: ``H×W×3`` uint8 RGB numpy array.
- ``keypoints``: ``(N, 2)`` float64 (x, y), **0-based**, pixel centres at integer coordinates.
  Keypoints that are not annotated have ``visible[k] = False`` and coordinates NaN.
  Loaders of 1-based MATLAB annotations subtract 1 once, at loading.
- ``mask`` / ``parts[name]``: ``H×W`` bool.
- ``bbox``: ``(xmin, ymin, xmax, ymax)`` **inclusive 0-based pixel indices** of the object
  (a VOC box ``1…W`` becomes ``0…W−1``). The continuous box edges are ``xmin − 0.5 … xmax + 0.5``
  (this is :meth:`cyclecorr.render.camera.CropTransform.from_pixel_box`'s convention).
- ``viewpoint``: a :class:`cyclecorr.render.camera.Viewpoint` (PASCAL3D+ convention) or None.

The crop of the paper (:func:`crop_sample`): the object box (given, else the annotation's box,
else the mask's extent, else the whole image) is resized to ``size × size`` **without keeping the
aspect ratio** (exactly what the renders get), with antialiased bilinear resampling of the image,
area-weighted resampling of masks (threshold 0.5), and keypoints mapped by the same
:class:`CropTransform`. Pixels of the box outside the photograph are black (0).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from cyclecorr.render.camera import CropTransform

__all__ = ["Sample", "PairSample", "crop_sample", "flip_sample", "mask_box", "crop_array",
           "swap_left_right", "image_to_tensor"]


@dataclass
class Sample:
    """One annotated (or unlabelled) real image. See the module docstring for the conventions.

    Attributes:
        image: ``H×W×3`` uint8.
        keypoints: ``(N, 2)`` float (x, y) 0-based; NaN where not annotated. ``N = 0`` when none.
        visible: ``(N,)`` bool, True where the keypoint is annotated (and inside the image frame
            after a crop).
        keypoint_names: names per keypoint, or None where the dataset does not name them.
        mask: ``H×W`` bool object mask, or None.
        parts: part name → ``H×W`` bool mask (empty when none).
        bbox: ``(xmin, ymin, xmax, ymax)`` inclusive 0-based pixel indices, or None.
        viewpoint: PASCAL3D+ viewpoint, or None.
        path: the source file (the image, or the annotation file that names it).
        meta: anything else the source provides (flags, pose tags, class, the crop applied, …).
    """

    image: np.ndarray
    keypoints: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    visible: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))
    keypoint_names: list[str] | None = None
    mask: np.ndarray | None = None
    parts: dict[str, np.ndarray] = field(default_factory=dict)
    bbox: tuple[float, float, float, float] | None = None
    viewpoint: object | None = None
    path: Path | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        img = np.asarray(self.image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"{self.path}: Sample.image must be H×W×3 uint8, got "
                             f"{img.shape} {img.dtype}")
        self.keypoints = np.asarray(self.keypoints, dtype=np.float64).reshape(-1, 2)
        self.visible = np.asarray(self.visible, dtype=bool).reshape(-1)
        if len(self.visible) != len(self.keypoints):
            raise ValueError(f"{self.path}: {len(self.keypoints)} keypoints but "
                             f"{len(self.visible)} visibility flags")
        if self.keypoint_names is not None and len(self.keypoint_names) != len(self.keypoints):
            raise ValueError(f"{self.path}: {len(self.keypoints)} keypoints but "
                             f"{len(self.keypoint_names)} names")
        h, w = img.shape[:2]
        fields = [("mask", self.mask)] + [(f"parts[{k!r}]", v) for k, v in self.parts.items()]
        for name, m in fields:
            if m is not None and np.shape(m) != (h, w):
                raise ValueError(f"{self.path}: {name} has shape {np.shape(m)}, image is {h}×{w}")

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return self.image.shape[0], self.image.shape[1]


@dataclass
class PairSample:
    """Two images with dense ground truth (TSS).

    Attributes:
        image_a, image_b: ``H×W×3`` uint8.
        flow_ab: ``(2, H_a, W_a)`` float32, channel 0 = x, 1 = y, pixels, ``q − p``; NaN = unknown.
        flow_ba: ``(2, H_b, W_b)`` likewise, or None.
        mask_a, mask_b: ``H×W`` bool foreground masks, or None.
        paths: ``(path_a, path_b)`` source images.
        meta: e.g. ``flip`` (TSS's ``flip_gt.txt``) and the original image names.
    """

    image_a: np.ndarray
    image_b: np.ndarray
    flow_ab: np.ndarray
    flow_ba: np.ndarray | None = None
    mask_a: np.ndarray | None = None
    mask_b: np.ndarray | None = None
    paths: tuple[Path, Path] | None = None
    meta: dict = field(default_factory=dict)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive 0-based box ``(xmin, ymin, xmax, ymax)`` of a bool mask's True pixels, or None."""
    m = np.asarray(mask, dtype=bool)
    ys = np.flatnonzero(m.any(axis=1))
    xs = np.flatnonzero(m.any(axis=0))
    if len(xs) == 0:
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1])


def _pil_crop(arr: np.ndarray, tf: CropTransform, mode_float: bool) -> np.ndarray:
    """Antialiased bilinear crop+resize with PIL; output pixels whose centre falls outside the
    source image are 0 (the source is edge-padded first so the filter never reads zeros)."""
    h, w = arr.shape[:2]
    # CropTransform box edges are in "centre at integer" coordinates; PIL boxes use edges at
    # integers (pixel i covers [i, i+1]), hence +0.5.
    bx0, by0, bx1, by1 = tf.x0 + 0.5, tf.y0 + 0.5, tf.x1 + 0.5, tf.y1 + 0.5
    pl = max(0, math.ceil(-bx0) + 2)
    pt = max(0, math.ceil(-by0) + 2)
    pr = max(0, math.ceil(bx1 - w) + 2)
    pb = max(0, math.ceil(by1 - h) + 2)
    padded = bool(pl or pt or pr or pb)
    if padded:
        pad = [(pt, pb), (pl, pr)] + ([(0, 0)] if arr.ndim == 3 else [])
        arr = np.pad(arr, pad, mode="edge")
    box = (bx0 + pl, by0 + pt, bx1 + pl, by1 + pt)
    size = (int(tf.width), int(tf.height))
    if mode_float:
        im = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32), mode="F")
        out = np.asarray(im.resize(size, Image.Resampling.BILINEAR, box=box), dtype=np.float32)
    else:
        im = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8))
        out = np.asarray(im.resize(size, Image.Resampling.BILINEAR, box=box), dtype=np.uint8)
    if padded:
        xs, ys = tf.source_grid()
        outside = (xs < -0.5) | (xs > w - 0.5) | (ys < -0.5) | (ys > h - 0.5)
        out = out.copy()
        out[outside] = 0
    return out


def crop_array(arr: np.ndarray, tf: CropTransform) -> np.ndarray:
    """Crop an ``H×W×3`` uint8 image or an ``H×W`` bool mask with ``tf``.

    Images: antialiased bilinear; masks: area/bilinear-weighted, then ``> 0.5``. Outside = 0.
    """
    arr = np.asarray(arr)
    if arr.dtype == bool:
        return _pil_crop(arr.astype(np.float32), tf, True) > 0.5
    if arr.dtype == np.uint8 and arr.ndim == 3:
        return _pil_crop(arr, tf, False)
    if arr.ndim == 2:
        return _pil_crop(arr.astype(np.float32), tf, True)
    raise ValueError(f"crop_array expects H×W×3 uint8 or H×W bool/float, got {arr.shape} "
                     f"{arr.dtype}")


def crop_sample(sample: Sample, size: int = 128, box=None, scale: float = 1.0,
                flip: bool = False) -> Sample:
    """The paper's crop: the object box → ``size × size`` (aspect not kept), everything consistent.

    Args:
        sample: the full image with its annotations.
        size: output side in pixels (128 in the paper).
        box: ``(xmin, ymin, xmax, ymax)`` inclusive 0-based pixel indices; default: ``sample.bbox``,
            else the mask's extent, else the whole image.
        scale: enlarge the box about its centre by this factor (1.0 = tight).
        flip: also flip horizontally (see :func:`flip_sample`).

    Returns:
        A new :class:`Sample` of ``size × size``: keypoints mapped by the crop's
        :class:`~cyclecorr.render.camera.CropTransform` (``x' = (x − x0)·size/(x1 − x0) − 0.5``
        with box edges ``x0 = xmin − 0.5``, ``x1 = xmax + 0.5``); keypoints falling outside the
        output frame ``[−0.5, size − 0.5]`` become not visible; ``bbox`` becomes the whole
        output; ``meta["crop"]`` holds the transform (``.inverse`` maps back to the photo).
    """
    h, w = sample.size
    how = "given"
    if box is None:
        if sample.bbox is not None:
            box, how = sample.bbox, "bbox"
        elif sample.mask is not None and mask_box(sample.mask) is not None:
            box, how = mask_box(sample.mask), "mask"
        else:
            box, how = (0, 0, w - 1, h - 1), "image"
    box = tuple(float(v) for v in box)
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise ValueError(f"{sample.path}: crop box must be 4 finite numbers, got {box}")
    if box[2] < box[0] or box[3] < box[1]:
        raise ValueError(f"{sample.path}: crop box has xmax < xmin or ymax < ymin: {box}")
    tf = CropTransform.from_pixel_box(*box, width=size, height=size, scale=scale)
    kps = tf.apply(sample.keypoints) if len(sample.keypoints) else sample.keypoints.copy()
    vis = sample.visible.copy()
    if len(kps):
        inside = ((kps >= -0.5) & (kps <= size - 0.5)).all(axis=1)
        vis &= inside
        kps[~vis] = np.nan
    out = Sample(
        image=crop_array(sample.image, tf),
        keypoints=kps,
        visible=vis,
        keypoint_names=list(sample.keypoint_names) if sample.keypoint_names is not None else None,
        mask=crop_array(sample.mask, tf) if sample.mask is not None else None,
        parts={k: crop_array(v, tf) for k, v in sample.parts.items()},
        bbox=(0, 0, size - 1, size - 1),
        viewpoint=sample.viewpoint,
        path=sample.path,
        meta={**sample.meta, "crop": tf, "crop_box_from": how},
    )
    return flip_sample(out) if flip else out


_LR = re.compile(r"(left|right|Left|Right|LEFT|RIGHT)")
_SWAP = {"left": "right", "right": "left", "Left": "Right", "Right": "Left",
         "LEFT": "RIGHT", "RIGHT": "LEFT"}


def swap_left_right(name: str) -> str:
    """``"left_front_wheel"`` → ``"right_front_wheel"``, ``"leftmirror"`` → ``"rightmirror"``."""
    return _LR.sub(lambda m: _SWAP[m.group(1)], name)


def flip_sample(sample: Sample) -> Sample:
    """Mirror a sample horizontally: ``x' = W − 1 − x``.

    Keypoints whose names say left/right are swapped with their mirror partner (so index k still
    means the same *named* part); part masks are renamed the same way. Keypoints without names
    keep their order (their meaning may then change side: the caller decides).
    Sets ``meta["flipped"]`` (toggled) and updates ``viewpoint`` (azimuth → −azimuth,
    theta → −theta) where present.
    """
    h, w = sample.size
    kps = sample.keypoints.copy()
    if len(kps):
        kps[:, 0] = (w - 1) - kps[:, 0]
    vis = sample.visible.copy()
    names = list(sample.keypoint_names) if sample.keypoint_names is not None else None
    if names is not None:
        index = {n: i for i, n in enumerate(names)}
        perm = [index.get(swap_left_right(n), i) for i, n in enumerate(names)]
        kps, vis = kps[perm], vis[perm]
    bbox = None
    if sample.bbox is not None:
        x0, y0, x1, y1 = sample.bbox
        bbox = ((w - 1) - x1, y0, (w - 1) - x0, y1)
    vp = sample.viewpoint
    if vp is not None and hasattr(vp, "azimuth"):
        vp = replace(vp, azimuth=(-float(vp.azimuth)) % 360.0, theta=-float(vp.theta))
    return Sample(
        image=np.ascontiguousarray(sample.image[:, ::-1]),
        keypoints=kps, visible=vis, keypoint_names=names,
        mask=np.ascontiguousarray(sample.mask[:, ::-1]) if sample.mask is not None else None,
        parts={swap_left_right(k): np.ascontiguousarray(v[:, ::-1])
               for k, v in sample.parts.items()},
        bbox=bbox, viewpoint=vp, path=sample.path,
        meta={**sample.meta, "flipped": not sample.meta.get("flipped", False)},
    )


def image_to_tensor(image: np.ndarray):
    """``H×W×3`` uint8 → ``(3, H, W)`` float32 torch tensor in [0, 1]."""
    import torch  # on use: the command line's start-up imports this module without torch

    out = np.empty((3,) + np.shape(image)[:2], np.float32)
    np.multiply(np.moveaxis(np.asarray(image, dtype=np.uint8), 2, 0), np.float32(1 / 255), out=out)
    return torch.from_numpy(out)
