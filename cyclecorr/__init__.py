"""cyclecorr: dense correspondence across object instances by 3D-guided cycle consistency.

Reference implementation of Zhou, Krähenbühl, Aubry, Huang, Efros, "Learning Dense Correspondence
via 3D-guided Cycle Consistency" (CVPR 2016). Conventions (used everywhere):

- images ``(B, 3, H, W)`` float in [0, 1]; flows ``(B, 2, H, W)`` with channel 0 = x, 1 = y, in
  pixels; matchability ``(B, 1, H, W)`` in [0, 1];
- pixel centres at integer coordinates ``0 … W−1``; ``flow_ab(p) = q − p`` where q is p's match
  in b;
- keypoints ``(N, 2)`` as (x, y), 0-based.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Matcher", "__version__"]


def __getattr__(name):
    if name == "Matcher":
        from cyclecorr.matcher import Matcher  # on use: `import cyclecorr` stays free of torch

        return Matcher
    raise AttributeError(f"module 'cyclecorr' has no attribute {name!r}")
