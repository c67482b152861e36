"""Low-level readers with clear errors: images, MATLAB ``.mat`` files, Middlebury ``.flo`` flows.

Every reader raises :class:`DataError` (a ``ValueError``) or ``FileNotFoundError`` whose message
names the offending file and the problem, so that a corrupt item in a folder of thousands is easy
to find.

Conventions: numpy images are ``H×W×3`` uint8 RGB; flows returned here are ``(2, H, W)`` float32
(channel 0 = x, channel 1 = y, pixels) with invalid entries set to NaN.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cyclecorr._io import atomic_path, atomic_write_bytes
from cyclecorr.images import MAX_PIXELS, ImageError, check_size, image_array, pil_to_array, to_uint8

__all__ = ["DataError", "read_image", "read_mask", "load_mat", "read_flo", "write_flo",
           "atomic_write_bytes", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")

# Middlebury .flo: magic float 202021.25, then int32 width, int32 height, then H*W*2 float32.
_FLO_MAGIC = 202021.25
_FLO_UNKNOWN = 1e9  # values above this (the format uses 1e10) mean "unknown flow"


class DataError(ValueError):
    """A data file is missing, malformed or inconsistent; the message names the file."""


def _require_file(path: Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    return path


def read_image(path, min_side: int = 1) -> np.ndarray:
    """Read an image file as ``H×W×3`` uint8 RGB, under the input contract of
    :mod:`cyclecorr.images`: every PIL mode is converted by its value range (16-bit grey from
    0–65535, alpha dropped, palettes expanded), files above :data:`~cyclecorr.images.MAX_PIXELS`
    pixels are refused from their header before decoding, and so are images with a side below
    ``min_side`` pixels.

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: the file is not a decodable image, is too large or too small, or holds values
            outside the contract (message names the file).
    """
    path = _require_file(path)
    try:
        with warnings.catch_warnings():  # PIL's decompression-bomb guard: _check_pixels decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _check_pixels(path, *im.size)
                im.load()
                arr = pil_to_array(im, str(path))
    except DataError:
        raise
    except ImageError as e:
        raise DataError(str(e)) from e
    except Image.DecompressionBombError:  # beyond PIL's own limit, raised while opening
        _check_pixels(path, *_declared_size(path))
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise DataError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{path}: empty image (shape {arr.shape})")
    try:
        check_size(arr.shape[0], arr.shape[1], str(path), min_side)
        if arr.dtype != np.uint8:
            arr = to_uint8(image_array(arr, str(path), min_side))
    except ImageError as e:
        raise DataError(str(e)) from e
    return np.ascontiguousarray(arr)


def _check_pixels(path: Path, w: int, h: int) -> None:
    if w * h > MAX_PIXELS:
        raise DataError(f"{path}: image is {w}×{h} px ({w * h / 1e6:.0f} Mpx), larger than the "
                        f"{MAX_PIXELS / 1e6:.0f} Mpx accepted; downscale it first")


def _declared_size(path: Path) -> tuple[int, int]:
    """The size an image file declares in its header, read past PIL's decompression-bomb
    guard (nothing is decoded)."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as im:
            return im.size
    finally:
        Image.MAX_IMAGE_PIXELS = old


def read_mask(path) -> np.ndarray:
    """Read a mask image (any mode) as an ``H×W`` bool array.

    Palette images: True where the palette index is non-zero. Other images: True where the value
    is > 127 (for colour images any channel), or > 0 when the image only holds 0/1 values.
    """
    path = _require_file(path)
    try:
        with Image.open(path) as im:
            im.load()
            palette = im.mode == "P"
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot decode mask image ({e})") from e
    if palette:
        return arr > 0
    if arr.dtype == bool:
        return arr if arr.ndim == 2 else arr.any(axis=-1)
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=-1)
    if arr.ndim != 2:
        raise DataError(f"{path}: mask must be a 2-D image, got shape {arr.shape}")
    return arr > (0 if arr.size and arr.max() <= 1 else 127)


def load_mat(path, required: tuple[str, ...] = ()) -> dict:
    """Load a MATLAB ``.mat`` file (v5; v7.3/HDF5 via h5py when installed) and check that the
    ``required`` variables are present.

    Raises:
        FileNotFoundError: missing file.
        DataError: unreadable/truncated file, or a required variable is missing.
    """
    import scipy.io  # on use: 0.2 s to import, kept out of the command line's start-up

    path = _require_file(path)
    try:
        data = scipy.io.loadmat(str(path), squeeze_me=False, struct_as_record=True)
    except NotImplementedError:  # v7.3 (HDF5)
        data = _load_mat_h5(path)
    except Exception as e:  # scipy raises many types (ValueError, TypeError, MatReadError, …)
        raise DataError(f"{path}: malformed .mat file ({type(e).__name__}: {e})") from e
    missing = [k for k in required if k not in data]
    if missing:
        have = sorted(k for k in data if not k.startswith("__"))
        raise DataError(f"{path}: .mat file lacks variable(s) {missing} (has {have})")
    return data


def _load_mat_h5(path: Path) -> dict:
    try:
        import h5py  # optional (the dev extra): only MATLAB v7.3 files need it
    except ImportError as e:  # pragma: no cover - optional
        raise DataError(f"{path}: MATLAB v7.3 file needs h5py to be read") from e
    try:
        with h5py.File(path, "r") as f:
            return {k: np.asarray(f[k]).T for k in f.keys() if isinstance(f[k], h5py.Dataset)}
    except OSError as e:
        raise DataError(f"{path}: malformed .mat (HDF5) file ({e})") from e


def read_flo(path) -> np.ndarray:
    """Read a Middlebury ``.flo`` file → ``(2, H, W)`` float32, channel 0 = x, 1 = y, pixels.

    Unknown flow (stored as 1e10 or any magnitude above 1e9) becomes NaN in both channels.
    """
    path = _require_file(path)
    raw = path.read_bytes()
    if len(raw) < 12:
        raise DataError(f"{path}: truncated .flo file ({len(raw)} bytes)")
    magic = np.frombuffer(raw[:4], dtype="<f4")[0]
    if magic != np.float32(_FLO_MAGIC):
        raise DataError(f"{path}: not a Middlebury .flo file (magic {magic!r}, expected 202021.25)")
    w, h = (int(v) for v in np.frombuffer(raw[4:12], dtype="<i4"))
    if w <= 0 or h <= 0 or w > 100000 or h > 100000:
        raise DataError(f"{path}: invalid .flo size {w}×{h}")
    n = w * h * 2
    if len(raw) < 12 + 4 * n:
        raise DataError(f"{path}: truncated .flo file (expected {12 + 4 * n} bytes, got "
                        f"{len(raw)})")
    flow = np.frombuffer(raw[12:12 + 4 * n], dtype="<f4").reshape(h, w, 2).astype(np.float32)
    bad = (np.abs(flow) > _FLO_UNKNOWN).any(axis=-1) | ~np.isfinite(flow).all(axis=-1)
    flow[bad] = np.nan
    return np.ascontiguousarray(flow.transpose(2, 0, 1))


def write_flo(path, flow: np.ndarray, layout: str = "chw") -> None:
    """Write a ``(2, H, W)`` flow (``layout="hw2"``: ``(H, W, 2)``) as Middlebury ``.flo`` (NaN
    written as 1e10), atomically."""
    flow = np.asarray(flow)
    if layout == "chw":
        if flow.ndim != 3 or flow.shape[0] != 2:
            raise ValueError(f"write_flo expects a (2, H, W) flow, got shape {flow.shape}")
        flow = flow.transpose(1, 2, 0)
    elif flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"write_flo expects an (H, W, 2) flow, got shape {flow.shape}")
    hw2 = np.array(flow, dtype="<f4")  # one copy, in the file's layout
    hw2[~np.isfinite(hw2)] = 1e10
    h, w = hw2.shape[:2]
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(np.array([_FLO_MAGIC], "<f4").tobytes() + np.array([w, h], "<i4").tobytes())
            hw2.tofile(f)
            f.flush()
            os.fsync(f.fileno())


def read_pairs_file(path) -> list[tuple[Path, Path]]:
    """A list of image pairs: one ``src tgt`` per line (space or comma separated; ``#`` starts a
    comment), relative paths taken from the file's folder. Raises ``FileNotFoundError`` /
    ``ValueError`` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text file (byte {e.start} is not UTF-8); expected one "
                        f"'src tgt' pair of image paths per line") from e
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{n}: expected two image paths 'src tgt', got {line!r}")
        pairs.append(tuple(path.parent / q for q in parts))  # an absolute q stays as it is
    if not pairs:
        raise ValueError(f"{path}: no pairs found")
    return pairs
