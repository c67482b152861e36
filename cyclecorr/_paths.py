"""Where cyclecorr finds shared data and writes caches.

The project's data lives *beside* the checkout, in ``../shared/data`` (see its README); it is read
there and never copied into the repository. ``CYCLECORR_DATA`` overrides the location, and
``CYCLECORR_CACHE`` the folder for caches (default ``~/.cache/cyclecorr``).
"""
from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path | None:
    """Return the shared data folder, or ``None`` where it is absent.

    Order: ``$CYCLECORR_DATA``, then ``../shared/data`` beside the repository checkout.
    """
    env = os.environ.get("CYCLECORR_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(_REPO_ROOT.parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None


def require_shared_data(*parts: str) -> Path:
    """Return ``shared_data_dir()/parts…`` or raise ``FileNotFoundError`` naming what is missing."""
    root = shared_data_dir()
    if root is None:
        raise FileNotFoundError(
            "shared data folder not found: set CYCLECORR_DATA or place it at ../shared/data "
            "beside the checkout")
    p = root.joinpath(*parts)
    if not p.exists():
        raise FileNotFoundError(f"missing dataset path: {p}")
    return p


def cache_dir() -> Path:
    """A writable cache folder (``$CYCLECORR_CACHE`` or ``~/.cache/cyclecorr``), created on
    demand."""
    p = Path(os.environ.get("CYCLECORR_CACHE", Path.home() / ".cache" / "cyclecorr"))
    p.mkdir(parents=True, exist_ok=True)
    return p
