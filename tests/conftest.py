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
