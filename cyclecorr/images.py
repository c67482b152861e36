"""The one input contract for images, shared by the Python API (:class:`cyclecorr.Matcher`), every
command that reads images (:func:`cyclecorr.data.io.read_image`) and the evaluation.

What is accepted (anything else is refused with an :class:`ImageError` naming the input and the
problem; nothing is clamped or guessed):

* numpy arrays ``H×W×3`` (RGB), ``H×W×4`` (RGBA: alpha dropped), ``H×W×1`` or ``H×W`` (grey);
* torch tensors ``(3, H, W)`` or ``(1, H, W)`` (channels first, as the network takes them), on any
  device;
* PIL images of any mode PIL can read: 8-bit modes (``1``, ``L``, ``P``, ``LA``, ``PA``, ``RGB``,
  ``RGBA``, ``CMYK``, ``YCbCr``, …) through PIL's own conversion to RGB; 16-bit grey (``I;16``,
  ``I;16B``, ``I;16L``, and ``I`` holding values in 0–65535, as 16-bit PNG and TIFF files load)
  rescaled from 0–65535; ``F`` (32-bit float) under the float rule below.

Values, by element type:

* ``uint8``: 0–255; ``uint16``: 0–65535 (rescaled from its own range);
* floating point (float16/32/64, bfloat16): must be finite and within [0, 1] (a rounding overshoot
  of :data:`FLOAT_TOLERANCE` is accepted and clipped); values above 1 are refused with the hint
  to divide by 255, negative values and NaN/inf are refused;
* every other type is refused by name: ``bool``, signed integers (``int8`` … ``int64``, which is
  also what ``np.array`` makes of a list of Python ints), ``uint32``/``uint64``, complex, object
  arrays, and Python lists, tuples, strings and paths.

Sizes: both sides at least :data:`MIN_SIDE` pixels (the network's coarsest grid at its 128-pixel
input is 8×8 cells; a smaller image holds less than one pixel per cell). Image *files* are read with
a limit of :data:`MAX_PIXELS` pixels, checked from the file's header before decoding.

:func:`image_array` applies the contract and returns ``H×W×3`` float32 in [0, 1];
:func:`pil_to_array` is the PIL half (also used by the file reader, which returns uint8).
"""
from __future__ import annotations

import sys

import numpy as np
from PIL import Image

__all__ = ["ImageError", "image_array", "pil_to_array", "to_uint8", "check_size", "MIN_SIDE",
           "MAX_PIXELS", "FLOAT_TOLERANCE"]

#: Smallest accepted image side in pixels (API, commands and evaluation alike).
MIN_SIDE = 8
#: Largest image file accepted, in pixels (W·H), checked before decoding: 10000×10000. A
#: decoded image of this size takes 300 MB as uint8 RGB.
MAX_PIXELS = 100_000_000
#: How far outside [0, 1] a float image may lie (rounding of a resampling) before it is refused;
#: half an 8-bit level.
FLOAT_TOLERANCE = 1.0 / 512

_GREY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageError(ValueError):
    """An image that does not meet the input contract; the message names the input and the
    problem."""


def check_size(h: int, w: int, name: str = "image", min_side: int = MIN_SIDE) -> None:
    """Refuse an image whose sides are below ``min_side`` pixels."""
    if h < min_side or w < min_side:
        raise ImageError(f"{name}: image is {w}×{h} px; the smallest accepted is "
                         f"{min_side}×{min_side} px")


def pil_to_array(im: Image.Image, name: str = "image") -> np.ndarray:
    """A PIL image as an ``H×W×3`` RGB array in its own value type: uint8 for 8-bit modes
    (converted by PIL), uint16 for 16-bit grey modes, float32 for mode ``F``. Raises
    :class:`ImageError` for a mode whose values cannot be placed on the contract's scale (an
    ``I`` image with values outside 0–65535)."""
    mode = im.mode
    if mode in _GREY16_MODES or mode == "I":
        a = np.asarray(im)
        if mode == "I":  # 32-bit signed: what older PIL and some TIFFs give 16-bit grey as
            lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
            if lo < 0 or hi > 65535:
                raise ImageError(f"{name}: 32-bit integer image (PIL mode I) with values "
                                 f"{lo}…{hi}; only 16-bit values (0–65535) can be read as an "
                                 f"image: convert it to 8 or 16 bits")
        a = a.astype(np.uint16)
        return np.repeat(a[..., None], 3, axis=2)
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        return np.repeat(a[..., None], 3, axis=2)
    if mode in ("RGB",):
        return np.asarray(im)
    if mode in ("LA", "PA", "RGBA", "RGBa", "La"):
        return np.asarray(im.convert("RGBA"))[..., :3]  # alpha dropped, as documented
    try:
        return np.asarray(im.convert("RGB"))
    except (ValueError, OSError) as e:
        raise ImageError(f"{name}: cannot convert a PIL {mode} image to RGB ({e})") from e


def _tensor_to_numpy(t, name: str) -> np.ndarray:
    """A torch tensor in the documented layout ``(3, H, W)`` / ``(1, H, W)`` → ``H×W×C`` numpy in
    its own value type (bfloat16 → float32, which holds it exactly)."""
    import torch  # already imported: a tensor exists

    shape = tuple(t.shape)
    if t.dim() != 3 or shape[0] not in (1, 3):
        hint = ""
        if t.dim() == 3 and shape[-1] in (1, 3, 4):
            hint = " (this looks channels-last: use tensor.permute(2, 0, 1), or pass a numpy array)"
        elif t.dim() == 4 and shape[0] == 1:
            hint = " (a batch of one: use tensor[0])"
        raise ImageError(f"{name}: a tensor image must be (3, H, W) or (1, H, W) (channels "
                         f"first), got {shape}{hint}")
    t = t.detach()
    if t.is_complex():
        raise ImageError(f"{name}: complex tensor ({t.dtype}) is not an image")
    if t.dtype == torch.bfloat16:
        t = t.float()
    try:
        return t.cpu().numpy().transpose(1, 2, 0)
    except (TypeError, RuntimeError) as e:
        raise ImageError(f"{name}: {t.dtype} tensor is not an image (pass torch.uint8 0–255 or "
                         f"a float type in [0, 1])") from e


def image_array(image, name: str = "image", min_side: int = MIN_SIDE) -> np.ndarray:
    """Apply the input contract (module doc): ``image`` → ``H×W×3`` float32 in [0, 1], a new
    array (the caller's image is never shared). Raises :class:`ImageError` naming ``name`` and
    the problem."""
    torch = sys.modules.get("torch")  # a tensor can only exist once torch is imported
    if isinstance(image, Image.Image):
        arr = pil_to_array(image, name)
    elif torch is not None and isinstance(image, torch.Tensor):
        arr = _tensor_to_numpy(image, name)
    elif isinstance(image, np.ndarray):
        arr = image
    else:
        kind = type(image).__name__
        hint = ("read the file first (PIL.Image.open or cyclecorr.data.io.read_image)"
                if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__")
                else "pass a numpy array H×W×3 (uint8 0–255, or float in [0, 1]), a PIL image "
                     "or a (3, H, W) tensor")
        raise ImageError(f"{name}: a {kind} is not an image: {hint}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        hint = ""
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4):
            hint = " (this looks channels-first: use array.transpose(1, 2, 0))"
        raise ImageError(f"{name}: image must be H×W×3 (RGB), H×W×4 (RGBA) or H×W (grey), got "
                         f"shape {arr.shape}{hint}")
    check_size(arr.shape[0], arr.shape[1], name, min_side)
    arr = arr[..., :3]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    dt = arr.dtype
    if dt == np.uint8:
        out = arr.astype(np.float32) / np.float32(255.0)
    elif dt == np.uint16:
        out = arr.astype(np.float32) / np.float32(65535.0)
    elif dt.kind == "f":
        out = np.array(arr, dtype=np.float32)
        finite = np.isfinite(out)
        if not finite.all():
            raise ImageError(f"{name}: float image holds {int((~finite).sum())} NaN or infinite "
                             f"value(s)")
        lo, hi = (float(out.min()), float(out.max())) if out.size else (0.0, 0.0)
        if lo < -FLOAT_TOLERANCE:
            raise ImageError(f"{name}: float image has values from {lo:g} to {hi:g}; float "
                             f"images must lie in [0, 1] (undo any normalisation, e.g. mean/std, "
                             f"first)")
        if hi > 1.0 + FLOAT_TOLERANCE:
            hint = (" (a 0–255 image: divide it by 255, or pass it as uint8)" if hi <= 255.0
                    else " (scale it to [0, 1])")
            raise ImageError(f"{name}: float image has values up to {hi:g}; float images must "
                             f"lie in [0, 1]{hint}")
        np.clip(out, 0.0, 1.0, out=out)
    elif dt == np.bool_:
        raise ImageError(f"{name}: bool array is not an image (a mask?): convert it, e.g. "
                         f"mask.astype(np.uint8) * 255")
    elif dt.kind in "iu":
        raise ImageError(f"{name}: {dt} image: its value range is ambiguous; pass uint8 "
                         f"(0–255), uint16 (0–65535) or float in [0, 1] (e.g. "
                         f"array.astype(np.uint8) if the values are 0–255)")
    else:
        raise ImageError(f"{name}: {dt} array is not an image (pass uint8, uint16 or float)")
    return out


def to_uint8(image_f32: np.ndarray) -> np.ndarray:
    """An ``H×W×3`` float image in [0, 1] → uint8 (rounded)."""
    return (np.asarray(image_f32, np.float32) * 255.0 + 0.5).astype(np.uint8)
