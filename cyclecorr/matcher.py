"""Inference: two RGB images of any size in, a dense flow and matchability out.

>>> from cyclecorr import Matcher
>>> m = Matcher.from_checkpoint()                  # the car model shipped with the package
>>> out = m.match(src, tgt)                        # numpy H×W×3 uint8 or PIL images
>>> out["flow"].shape, out["matchability"].shape   # (H_src, W_src, 2), (H_src, W_src)

:class:`Matcher` is the one way a trained network is run on images: the Python API, ``cyclecorr
match``, ``cyclecorr evaluate`` (through :class:`cyclecorr.evaluate.methods.NetworkMethod`), the
demo and the training's real-photo monitor all go through it. Both images are resized by
:func:`resize_image` (aspect not kept, as in training: whole image = object crop) to the network's
input size; :func:`to_image_pixels` re-expresses the network's flow in the original images' pixels
with :func:`cyclecorr.geometry.resample_flow` (pixel-area resizing convention) and resizes the
matchability bilinearly to the source's size. Methods without a network (the baselines of
:mod:`cyclecorr.evaluate.methods`) use the same two functions. Every image passes the one input
contract of :mod:`cyclecorr.images` (:func:`to_tensor_image`): what it accepts is converted exactly,
anything else is refused with an :class:`~cyclecorr.images.ImageError` naming the problem.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cyclecorr._runtime import PRECISIONS, precision_context, resolve_device
from cyclecorr.checkpoint import load_model, shipped_model_path
from cyclecorr.geometry import bidirectional_flow, resample_flow, transfer_keypoints
from cyclecorr.images import MIN_SIDE, ImageError, image_array

__all__ = ["Matcher", "to_tensor_image", "resize_image", "resize_tensor", "to_image_pixels",
           "resolve_device", "ImageError", "parse_refine", "format_refine", "REFINE_DEFAULT",
           "DEFAULT_REFINE_BY_CATEGORY", "BIDIRECTIONAL", "DEFAULT_BIDIRECTIONAL_CATEGORIES",
           "PRECISIONS", "precision_context"]

#: (start level, half-width there, stop level) of ``refine="siftflow"``: ±8 labels at quarter
#: resolution around the network's flow (±32 px at the network's size), then ±2 at half
#: resolution, upsampled to full size; chosen on the synth-kp-car renders, not on an evaluation
#: set (docs/RESULTS.md)
REFINE_DEFAULT = (2, 8, 1)

#: ``(tau, sigma, spread)`` of ``bidirectional=True``, the first two as fractions of the network's
#: input side: the two directions' estimates of a match are averaged where they lie within S/8 of
#: each other (16 px at 128), the reverse flow inverted with a splat of width S/64 (2 px), but not
#: where the b-pixels splatted onto a pixel spread by more than ``spread``·σ (3σ, 6 px: distant
#: parts of b land there, their mean is no match); τ chosen on the synth-kp-car renders, the
#: spread on re-framed copies of VOC training photos, not on an evaluation set (docs/RESULTS.md)
BIDIRECTIONAL = (1 / 8, 1 / 64, 3.0)

#: the refinement ``cyclecorr match`` applies by default, by the model's training category: it
#: raises car models' precision on photos (FlowWeb, PF-WILLOW, TSS) and costs the chair and
#: aeroplane models PCK@0.10–0.15 on their renders (docs/RESULTS.md), so those stay unrefined
DEFAULT_REFINE_BY_CATEGORY = {"car": "siftflow"}

#: the categories whose models ``cyclecorr match`` runs both ways by default
#: (``bidirectional=True``): measured for the car model, on renders and photos (docs/RESULTS.md)
DEFAULT_BIDIRECTIONAL_CATEGORIES = ("car",)


def parse_refine(spec) -> tuple[int, int, int] | None:
    """A refinement: ``None``/``"none"`` (the network's flow), ``"siftflow"`` (SIFT flow searched
    around the network's flow, :data:`REFINE_DEFAULT`) or ``"siftflow:LEVEL:WINDOW[:STOP]"``
    (:func:`cyclecorr.siftflow.sift_flow`'s ``init_level``, ``init_window``, ``stop_level``; STOP
    defaults to the default's); a ``(level, window[, stop])`` sequence passes through. Returns
    ``(level, window, stop)`` or None."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "none")):
        return None
    if isinstance(spec, (tuple, list)) and len(spec) in (2, 3):
        vals = [int(v) for v in spec]
    else:
        head, _, tail = str(spec).strip().partition(":")
        if head != "siftflow":
            raise ValueError(f"refine {spec!r}: use none, siftflow or "
                             f"siftflow:LEVEL:WINDOW[:STOP]")
        if not tail:
            return REFINE_DEFAULT
        try:
            vals = [int(v) for v in tail.split(":")]
            if len(vals) not in (2, 3):
                raise ValueError
        except ValueError:
            raise ValueError(f"refine {spec!r}: write siftflow:LEVEL:WINDOW[:STOP] with two or "
                             f"three integers (e.g. siftflow:2:8:1)") from None
    level, window, stop = (*vals, REFINE_DEFAULT[2])[:3]
    if level < 0 or window < 0 or stop < 0:
        raise ValueError(f"refine {spec!r}: level, window and stop must be ≥ 0")
    return level, window, min(stop, level)


def format_refine(refine: tuple[int, int, int] | None) -> str | None:
    """The spec :func:`parse_refine` reads back: ``"siftflow:LEVEL:WINDOW:STOP"``, or None."""
    return None if refine is None else "siftflow:{}:{}:{}".format(*refine)


def to_tensor_image(image, name: str = "image", min_side: int = MIN_SIDE) -> torch.Tensor:
    """An image under the input contract of :mod:`cyclecorr.images` (numpy ``H×W×3`` uint8,
    uint16 or float in [0, 1], ``H×W`` grey, PIL of any mode, a ``(3, H, W)`` tensor) →
    ``(3, H, W)`` float32 in [0, 1], a copy. Anything else raises
    :class:`~cyclecorr.images.ImageError` (a ``ValueError``) naming ``name`` and the problem."""
    return torch.from_numpy(image_array(image, name, min_side)).permute(2, 0, 1)


def resize_image(image, size: int) -> torch.Tensor:
    """An image (anything :func:`to_tensor_image` takes) → ``(3, size, size)`` float in [0, 1]:
    antialiased bilinear resizing, aspect not kept (an image already ``size × size`` is only
    converted)."""
    return resize_tensor(to_tensor_image(image), size)


def resize_tensor(t: torch.Tensor, size: int) -> torch.Tensor:
    """The resizing of :func:`resize_image` for a ``(3, H, W)`` float tensor in [0, 1] that
    :func:`to_tensor_image` returned (not checked again)."""
    if tuple(t.shape[-2:]) != (size, size):
        t = F.interpolate(t[None], size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)[0]
    return t.clamp(0, 1)


def to_image_pixels(flow: torch.Tensor, matchability: torch.Tensor | None,
                    hw_src: tuple[int, int], hw_tgt: tuple[int, int]) -> dict:
    """One pair's prediction at the network's size (``flow`` ``(1, 2, S, S)``, ``matchability``
    ``(1, 1, S, S)`` or None) expressed in the original images' pixels: ``{"flow": (H_src, W_src,
    2) float32, source pixels pointing into target pixels, "matchability": (H_src, W_src) float32
    in [0, 1] or None}``."""
    f = resample_flow(flow.float().cpu(), tuple(hw_src), tuple(hw_tgt))[0].permute(1, 2, 0)
    m = None
    if matchability is not None:
        m = F.interpolate(matchability.float().cpu(), size=tuple(hw_src), mode="bilinear",
                          align_corners=False)[0, 0].clamp(0, 1).numpy()
    return {"flow": np.ascontiguousarray(f.numpy(), np.float32), "matchability": m}


class Matcher:
    """A trained network (from :func:`cyclecorr.model.build_network`) run on images of any size.

    Args:
        net: the network (put in eval mode on ``device`` here).
        meta: the model file's metadata (``sha256``, ``stage``, ``step`` …).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, …
        input_size: the side both images are resized to (default: the network's
            ``config.image_size``, its training size; see ``set_input_size``).
        precision: ``"float32"`` or ``"bf16"`` (see :data:`PRECISIONS`).
        channels_last: convert the network to channels-last memory format (about 1.8× faster on a
            CPU, ``bench/evaluate.py``). ``False`` leaves the network's parameters as they are,
            for a network that is being trained.
        refine: ``None`` (the network's flow) or ``"siftflow"`` / ``"siftflow:LEVEL:WINDOW[:STOP]"``
            (:func:`parse_refine`): the network's flow refined by SIFT flow searched around it
            (:func:`cyclecorr.siftflow.sift_flow` with ``init_flow``, on the CPU, pair by pair,
            at the network's input size); the matchability stays the network's. The network
            says where a part of the object is, SIFT flow's descriptors place each pixel there.
        bidirectional: also match ``tgt`` to ``src`` (the same network and refinement) and
            average the two estimates of each match where they agree
            (:func:`cyclecorr.geometry.bidirectional_flow`, :data:`BIDIRECTIONAL`); twice the
            time. The matchability stays the forward pass's.
    """

    def __init__(self, net: torch.nn.Module, meta: dict | None = None,
                 device: str | torch.device = "auto", input_size: int | None = None,
                 precision: str = "float32", channels_last: bool = True, refine=None,
                 bidirectional: bool = False):
        self.refine = parse_refine(refine)
        self.bidirectional = bool(bidirectional)
        self.device = resolve_device(device)
        precision_context(self.device, precision)  # validates
        self.precision = precision
        if input_size is not None:
            net.set_input_size(input_size)
        net = net.to(self.device).eval()
        self.channels_last = channels_last
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self.meta = dict(meta or {})
        self.size = int(net.config.image_size)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike | None = None, device: str = "auto",
                        category: str = "car", input_size: int | None = None,
                        precision: str = "float32", refine=None,
                        bidirectional: bool = False) -> Matcher:
        """Load a model file; ``path=None`` loads the model shipped with the package for
        ``category``.

        ``input_size``: the side both images are resized to (default: the size the model was
        trained at, 128 for the shipped model). Larger sizes suit whole photos in which the object
        is small. ``precision``: ``"float32"`` or ``"bf16"``; ``refine``, ``bidirectional``: see
        the class. The file's path is recorded in ``meta["path"]``."""
        p = Path(path) if path is not None else shipped_model_path(category)
        net, meta = load_model(p)
        meta["path"] = str(p)
        return cls(net, meta, device, input_size, precision, refine=refine,
                   bidirectional=bidirectional)

    @property
    def bidirectional_px(self) -> tuple[float, float, float]:
        """``(tau, sigma, max_spread)`` of :attr:`bidirectional` in pixels at the network's input
        size (from :data:`BIDIRECTIONAL` and :attr:`size`)."""
        tau, sigma, spread = BIDIRECTIONAL
        return tau * self.size, sigma * self.size, spread * sigma * self.size

    @torch.inference_mode()
    def predict(self, src: torch.Tensor, tgt: torch.Tensor) -> dict[str, torch.Tensor]:
        """The network's output (float32, on :attr:`device`) for ``(B, 3, S, S)`` batches in
        [0, 1] at the network's size: ``flow`` ``(B, 2, S, S)``, ``matchability`` ``(B, 1, S, S)``,
        ``matchability_logits``. With :attr:`refine`, ``flow`` is the refined flow and
        ``network_flow`` the network's; with :attr:`bidirectional`, ``flow`` is the two
        directions' flow (:func:`~cyclecorr.geometry.bidirectional_flow`), ``forward_flow`` the
        forward pass's and ``reverse_flow`` the flow from ``tgt`` to ``src``."""
        if not self.bidirectional:
            return self._predict(src, tgt)
        b = src.shape[0]
        both = self._predict(torch.cat((src, tgt)), torch.cat((tgt, src)))
        out = {k: v[:b] for k, v in both.items()}
        out["forward_flow"], out["reverse_flow"] = out["flow"], both["flow"][b:]
        tau, sigma, spread = self.bidirectional_px
        out["flow"] = bidirectional_flow(out["forward_flow"], out["reverse_flow"], tau, sigma,
                                         max_spread=spread)
        return out

    def _predict(self, src: torch.Tensor, tgt: torch.Tensor) -> dict[str, torch.Tensor]:
        mf = torch.channels_last if self.channels_last else torch.contiguous_format
        with precision_context(self.device, self.precision):
            out = self.net(src.to(self.device, memory_format=mf),
                           tgt.to(self.device, memory_format=mf))
        out = {k: v.float().contiguous() for k, v in out.items()}
        if self.refine is not None:
            from cyclecorr.siftflow import sift_flow_tensors  # numba: imported when needed

            level, window, stop = self.refine
            out["network_flow"] = out["flow"]
            flow, _ = sift_flow_tensors(src.float().cpu(), tgt.float().cpu(),
                                        init_flow=out["flow"].cpu(), init_level=level,
                                        init_window=window, stop_level=stop)
            out["flow"] = flow.to(self.device)
        return out

    def match(self, src, tgt) -> dict[str, np.ndarray]:
        """Dense correspondence from ``src`` to ``tgt`` (images of any size).

        Returns:
            ``{"flow": (H_src, W_src, 2) float32, "matchability": (H_src, W_src) float32}``;
            the flow is in source pixels and points into target pixels:
            ``q = p + flow[p_y, p_x]``.

        Raises:
            ImageError: an image outside the input contract (:mod:`cyclecorr.images`), e.g. a
                float image in 0–255, an int64 array, NaN values or a side below
                :data:`~cyclecorr.images.MIN_SIDE` pixels.
        """
        s, t = to_tensor_image(src, "src"), to_tensor_image(tgt, "tgt")
        out = self.predict(resize_tensor(s, self.size)[None], resize_tensor(t, self.size)[None])
        return to_image_pixels(out["flow"], out["matchability"], s.shape[-2:], t.shape[-2:])

    def transfer_keypoints(self, src, tgt, kps) -> np.ndarray:
        """Transfer ``(N, 2)`` (x, y) 0-based keypoints of ``src`` into ``tgt``'s pixels (finite
        numbers; points outside the source are allowed and read the flow at the nearest edge)."""
        try:
            kps = np.asarray(kps, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise ValueError(f"kps: not an (N, 2) array of numbers ({e})") from e
        if kps.ndim != 2 or kps.shape[1] != 2:
            raise ValueError(f"kps must have shape (N, 2), got {kps.shape}")
        bad = ~np.isfinite(kps).all(axis=1)
        if bad.any():
            raise ValueError(f"kps: {int(bad.sum())} keypoint(s) are NaN or infinite (first: row "
                             f"{int(np.flatnonzero(bad)[0])})")
        flow = torch.from_numpy(self.match(src, tgt)["flow"]).permute(2, 0, 1)
        return transfer_keypoints(torch.from_numpy(kps), flow).numpy()
