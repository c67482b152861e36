"""High-level matcher: two RGB images of any size in, a dense flow and matchability out.

>>> from cyclecorr import Matcher
>>> m = Matcher.from_checkpoint()                  # the car model shipped with the package
>>> out = m.match(src, tgt)                        # numpy H×W×3 uint8 or PIL images
>>> out["flow"].shape, out["matchability"].shape   # (H_src, W_src, 2), (H_src, W_src)

Both images are resized (aspect not kept, as in training: whole image = object crop) to the
network's input size; the network's flow is then re-expressed in the original images' pixels with
:func:`cyclecorr.geometry.resample_flow` (pixel-area resizing convention) and the matchability is
bilinearly resized to the source's size.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cyclecorr._runtime import PRECISIONS, precision_context
from cyclecorr.checkpoint import load_model, shipped_model_path
from cyclecorr.geometry import resample_flow, transfer_keypoints
from cyclecorr.model import CorrespondenceNet

__all__ = ["Matcher", "to_tensor_image", "resolve_device", "PRECISIONS", "precision_context"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def to_tensor_image(image) -> torch.Tensor:
    """An RGB image (numpy ``H×W×3`` uint8/float in [0, 1], ``H×W`` grey, or PIL) → ``(3, H, W)`` float."""
    try:
        from PIL import Image
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))
    except ImportError:  # pragma: no cover
        pass
    if isinstance(image, torch.Tensor):
        t = image.float()
        if t.dim() == 3 and t.shape[0] == 3:
            return t
        raise ValueError(f"tensor image must have shape (3, H, W), got {tuple(t.shape)}")
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"image must be H×W×3 (RGB), got shape {arr.shape}")
    arr = arr[..., :3]
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ValueError(f"image is too small: {arr.shape}")
    # copies: the caller's array (often read-only, as np.asarray of a PIL image) is never shared
    if arr.dtype == np.uint8:
        t = torch.from_numpy(arr.astype(np.float32)) / 255.0
    else:
        t = torch.from_numpy(np.array(arr, dtype=np.float32))
        if not torch.isfinite(t).all():
            raise ValueError("image contains NaN or infinite values")
    return t.permute(2, 0, 1)


class Matcher:
    """Wraps a :class:`~cyclecorr.model.CorrespondenceNet` for images of any size."""

    def __init__(self, net: CorrespondenceNet, meta: dict | None = None,
                 device: str | torch.device = "auto", input_size: int | None = None,
                 precision: str = "float32"):
        self.device = resolve_device(device)
        precision_context(self.device, precision)  # validates
        self.precision = precision
        if input_size is not None:  # see CorrespondenceNet.set_input_size
            net.set_input_size(input_size)
        # channels-last convolutions are ~1.8x faster on CPU (bench/evaluate.py)
        self.net = net.to(self.device).eval().to(memory_format=torch.channels_last)
        self.meta = meta or {}
        self.size = net.config.image_size

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike | None = None, device: str = "auto",
                        category: str = "car", input_size: int | None = None,
                        precision: str = "float32") -> "Matcher":
        """Load a model file; ``path=None`` loads the model shipped with the package for ``category``.

        ``input_size``: the side both images are resized to (default: the size the model was
        trained at, 128 for the shipped model). Larger sizes suit whole photos in which the object
        is small (see :meth:`~cyclecorr.model.CorrespondenceNet.set_input_size`).
        ``precision``: ``"float32"`` or ``"bf16"`` (see :data:`PRECISIONS`)."""
        p = Path(path) if path is not None else shipped_model_path(category)
        net, meta = load_model(p)
        return cls(net, meta, device, input_size, precision)

    def _prepare(self, image) -> tuple[torch.Tensor, tuple[int, int]]:
        t = to_tensor_image(image)
        hw = tuple(t.shape[-2:])
        t = F.interpolate(t[None], size=(self.size, self.size), mode="bilinear",
                          align_corners=False, antialias=True)
        return t.clamp(0, 1), hw

    @torch.inference_mode()
    def predict(self, src: torch.Tensor, tgt: torch.Tensor) -> dict[str, torch.Tensor]:
        """Network output on already-resized ``(B, 3, S, S)`` batches in [0, 1] (see the model)."""
        cl = torch.channels_last
        with precision_context(self.device, self.precision):
            out = self.net(src.to(self.device, memory_format=cl),
                           tgt.to(self.device, memory_format=cl))
        return {k: v.float().contiguous() for k, v in out.items()}

    @torch.inference_mode()
    def match(self, src, tgt) -> dict[str, np.ndarray]:
        """Dense correspondence from ``src`` to ``tgt`` (images of any size).

        Returns:
            ``{"flow": (H_src, W_src, 2) float32, "matchability": (H_src, W_src) float32}``; the flow
            is in source pixels and points into target pixels: ``q = p + flow[p_y, p_x]``.
        """
        s, hw_s = self._prepare(src)
        t, hw_t = self._prepare(tgt)
        out = self.predict(s, t)
        flow = resample_flow(out["flow"].float().cpu(), hw_s, hw_t)
        match = F.interpolate(out["matchability"].float().cpu(), size=hw_s, mode="bilinear",
                              align_corners=False)
        return {"flow": flow[0].permute(1, 2, 0).numpy(), "matchability": match[0, 0].numpy()}

    def transfer_keypoints(self, src, tgt, kps) -> np.ndarray:
        """Transfer ``(N, 2)`` (x, y) 0-based keypoints of ``src`` into ``tgt``'s pixels."""
        kps = np.asarray(kps, dtype=np.float32)
        if kps.ndim != 2 or kps.shape[1] != 2:
            raise ValueError(f"kps must have shape (N, 2), got {kps.shape}")
        flow = torch.from_numpy(self.match(src, tgt)["flow"]).permute(2, 0, 1)
        return transfer_keypoints(torch.from_numpy(kps), flow).numpy()
