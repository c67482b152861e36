"""Pictures of the cycle written during validation (PNG, one row per quartet).

Columns: s1, r1, r2, s2 | s2 warped into s1 by the composed cycle flow | by the ground truth |
composed flow (colour) | ground-truth flow (colour) | composed matchability | ground-truth
matchability. Flow colours: hue = direction, saturation = magnitude (normalised per row by the
ground truth's largest displacement).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cyclecorr.checkpoint import atomic_write_bytes
from cyclecorr.geometry import warp
from cyclecorr.viz.flow_color import flow_to_color

__all__ = ["flow_to_rgb", "cycle_picture"]


def flow_to_rgb(flow: torch.Tensor, max_norm: float | None = None) -> np.ndarray:
    """``(2, H, W)`` flow → ``H×W×3`` float RGB in [0, 1], in the package's one colour code
    (:func:`cyclecorr.viz.flow_to_color`, Middlebury wheel)."""
    return flow_to_color(flow.detach().float().cpu().numpy(), max_norm).astype(np.float64) / 255.0


def _img(t: torch.Tensor) -> np.ndarray:
    t = t.detach().float().cpu().clamp(0, 1)
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return t.permute(1, 2, 0).numpy()


def cycle_picture(batch: dict, pred: dict, flow_cyc: torch.Tensor, match_cyc: torch.Tensor,
                  path: str | Path, n: int = 4) -> Path:
    """Write the picture of the first ``n`` quartets of a validation batch to ``path`` (atomic)."""
    rows = []
    n = min(n, batch["s1"].shape[0])
    for i in range(n):
        gt = batch["flow_s1s2"][i]
        mx = float(gt.norm(dim=0).max()) or 1.0
        w_cyc = warp(batch["s2"][i:i + 1], flow_cyc[i:i + 1])[0]
        w_gt = warp(batch["s2"][i:i + 1], gt[None])[0]
        cols = [_img(batch[k][i]) for k in ("s1", "r1", "r2", "s2")]
        cols += [_img(w_cyc), _img(w_gt), flow_to_rgb(flow_cyc[i], mx), flow_to_rgb(gt, mx),
                 _img(match_cyc[i]), _img(batch["match_s1s2"][i])]
        sep = np.ones((cols[0].shape[0], 2, 3))
        row = np.concatenate(sum(([c, sep] for c in cols), [])[:-1], axis=1)
        rows.append(row)
        rows.append(np.ones((2, row.shape[1], 3)))
    pic = (np.concatenate(rows[:-1], axis=0) * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pic).save(buf, format="PNG")
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
