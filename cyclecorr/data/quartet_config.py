"""Parameters of a quartet preparation (a light module: the command line reads its defaults
without importing torch or the renderer)."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["QuartetConfig"]


@dataclass
class QuartetConfig:
    """Parameters of a quartet preparation (all recorded in the manifest)."""

    category: str = "car"
    size: int = 128
    k: int = 20
    azimuth_step: float = 15.0
    elevations: tuple = (0, 10, 20, 30)
    distance: float = 2.5
    k_vp: int = 3
    use_pose_tags: bool = True
    max_azimuth_gap: float = 45.0
    max_elevation_gap: float = 20.0
    min_matchable: float = 0.2
    shard_size: int = 64
    seed: int = 0
    light: str = "default"
    background: tuple = (0, 0, 0)
    require_pose: bool = False

    def __post_init__(self):
        self.elevations = tuple(float(e) for e in self.elevations)
        if self.size < 16:
            raise ValueError(f"size must be ≥ 16, got {self.size}")
        if self.k < 1:
            raise ValueError(f"k must be ≥ 1, got {self.k}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be ≥ 1, got {self.shard_size}")
        if not 0.0 <= self.min_matchable <= 1.0:
            raise ValueError(f"min_matchable must be in [0, 1], got {self.min_matchable}")
        if self.light not in ("default", "random"):
            raise ValueError(f"light must be 'default' or 'random', got {self.light!r}")
        self.background = tuple(int(c) for c in self.background)
        if len(self.background) != 3 or not all(0 <= c <= 255 for c in self.background):
            raise ValueError(f"background must be 3 values in 0..255, got {self.background}")
