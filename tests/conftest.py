"""Shared pytest fixtures: the shared data folder (skipped with a reason where absent)."""
from __future__ import annotations

import os

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

import pytest

from cyclecorr._paths import shared_data_dir


@pytest.fixture(scope="session")
def data_dir():
    """The shared data folder; tests that need it skip where it is absent."""
    root = shared_data_dir()
    if root is None:
        pytest.skip("shared data not found (set CYCLECORR_DATA or provide ../shared/data)")
    return root


@pytest.fixture
def voc_folder(data_dir, tmp_path):
    """``voc_folder(category, n=12)``: a folder of ``n`` VOC 2007 crops of ``category`` (links to
    every 20th of the shared crops), as unlabelled real photos."""
    def make(category: str, n: int = 12) -> str:
        real = tmp_path / f"real-{category}"
        real.mkdir()
        for p in sorted((data_dir / "real" / "voc2007" / category).glob("*.jpg"))[:20 * n:20]:
            (real / p.name).symlink_to(p)
        return str(real)
    return make
