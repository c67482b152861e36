"""Dense-correspondence geometry: pixel grids, bilinear sampling, warping, flow composition.

Conventions (shared by the whole package):

- a flow ``flow_ab`` has shape ``(B, 2, H_a, W_a)``; channel 0 is x, channel 1 is y, in pixels;
- pixel centres sit at integer coordinates ``0 … W−1`` (x) and ``0 … H−1`` (y);
- ``flow_ab(p) = q − p`` where ``q`` (in b's pixels) is the match of the a-pixel ``p``;
- matchability ``match_ab`` has shape ``(B, 1, H_a, W_a)`` with values in [0, 1];
- keypoints are ``(N, 2)`` or ``(B, N, 2)`` as (x, y), 0-based.

Sampling at a non-integer point is bilinear. What happens outside the image is explicit:
``padding="zeros"`` reads 0 there (and fades to 0 within one pixel of the border), ``"border"``
repeats the edge. Every function is differentiable with respect to the sampled field *and* the
sampling position; batch, dtype and device follow the inputs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "pixel_grid",
    "sample",
    "inside_mask",
    "warp",
    "compose_flow",
    "compose_matchability",
    "transfer_keypoints",
    "resample_flow",
    "rescale_points",
    "affine_flow",
    "invert_flow",
    "bidirectional_flow",
]

_PADDINGS = ("zeros", "border")


def _check_field(name: str, t: torch.Tensor, channels: int | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4 or (channels is not None and t.shape[1] != channels):
        want = f"(B, {channels}, H, W)" if channels is not None else "(B, C, H, W)"
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")


def _check_padding(padding: str) -> None:
    if padding not in _PADDINGS:
        raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}")


def rescale_points(points, scale):
    """Pixel coordinates after resizing an image by ``scale`` (new size / old size, per axis).

    The pixel-area convention used everywhere in the package: pixel centres sit at integers and a
    resize maps the image's edges onto each other, so ``p' = (p + 0.5)·scale − 0.5``. ``points``
    and ``scale`` broadcast (numpy arrays or tensors alike): ``(N, 2)`` points with a ``(2,)``
    scale ``(s_x, s_y)``, or ``(B, 2, H, W)`` grids with a ``(1, 2, 1, 1)`` scale. NaN stays NaN.
    """
    return (points + 0.5) * scale - 0.5


def pixel_grid(height: int, width: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Pixel-centre coordinates of an ``height × width`` image, shape ``(1, 2, H, W)``.

    ``grid[0, 0, y, x] = x`` and ``grid[0, 1, y, x] = y``.
    """
    ys = torch.arange(height, dtype=dtype, device=device)
    xs = torch.arange(width, dtype=dtype, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=0).unsqueeze(0)


def sample(field: torch.Tensor, points: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Bilinearly sample ``field`` at absolute pixel positions.

    Args:
        field: ``(B, C, H, W)`` values to read.
        points: ``(B, 2, H', W')`` positions (x, y) in ``field``'s pixel coordinates.
        padding: ``"zeros"`` or ``"border"`` (value used outside ``[0, W−1] × [0, H−1]``).

    Returns:
        ``(B, C, H', W')`` with ``out[b, :, i, j] = field[b, :, y, x]`` at
        ``(x, y) = points[b, :, i, j]``, bilinear.
    """
    _check_field("field", field)
    _check_field("points", points, 2)
    _check_padding(padding)
    if points.shape[0] != field.shape[0]:
        raise ValueError(
            f"batch sizes differ: field {tuple(field.shape)} vs points {tuple(points.shape)}")
    h, w = field.shape[-2:]
    # align_corners=True maps -1/+1 to the centres of the first/last pixel: x_norm = 2x/(W-1) - 1.
    sx = 2.0 / max(w - 1, 1)
    sy = 2.0 / max(h - 1, 1)
    gx = points[:, 0] * sx - 1.0
    gy = points[:, 1] * sy - 1.0
    grid = torch.stack((gx, gy), dim=-1)
    return F.grid_sample(field, grid, mode="bilinear", padding_mode=padding, align_corners=True)


def inside_mask(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(B, 1, H', W')`` float mask: 1 where ``points`` lie inside ``[0, W−1] × [0, H−1]``."""
    _check_field("points", points, 2)
    x, y = points[:, 0:1], points[:, 1:2]
    ok = (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
    return ok.to(points.dtype)


def warp(image_b: torch.Tensor, flow_ab: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Warp ``image_b`` into a's frame: ``out(p) = image_b(p + flow_ab(p))``.

    Args:
        image_b: ``(B, C, H_b, W_b)``.
        flow_ab: ``(B, 2, H_a, W_a)`` in pixels.
        padding: out-of-image policy, ``"zeros"`` or ``"border"``.

    Returns:
        ``(B, C, H_a, W_a)``, an image aligned with a.
    """
    _check_field("flow_ab", flow_ab, 2)
    grid = pixel_grid(*flow_ab.shape[-2:], dtype=flow_ab.dtype, device=flow_ab.device)
    return sample(image_b, grid + flow_ab, padding)


def compose_flow(flow_ab: torch.Tensor, flow_bc: torch.Tensor,
                 padding: str = "border") -> torch.Tensor:
    """Compose two flows: ``flow_ac(p) = flow_ab(p) + flow_bc(p + flow_ab(p))``.

    ``flow_bc`` is read bilinearly at the non-integer point ``p + flow_ab(p)``; the result is
    differentiable in both fields and in the position. Points that leave b read ``flow_bc``
    by ``padding`` (default ``"border"``: the nearest edge value; ``compose_matchability`` marks
    such points unmatchable).

    Args:
        flow_ab: ``(B, 2, H_a, W_a)``.
        flow_bc: ``(B, 2, H_b, W_b)``.

    Returns:
        flow_ac: ``(B, 2, H_a, W_a)``.
    """
    _check_field("flow_ab", flow_ab, 2)
    _check_field("flow_bc", flow_bc, 2)
    return flow_ab + warp(flow_bc, flow_ab, padding)


def compose_matchability(match_ab: torch.Tensor | None, match_bc: torch.Tensor,
                         flow_ab: torch.Tensor) -> torch.Tensor:
    """Compose matchability: ``match_ac(p) = match_ab(p) · match_bc(p + flow_ab(p))``.

    A point whose flow leaves b (outside ``[0, W_b−1] × [0, H_b−1]``) gets 0. ``match_ab=None``
    means "all ones" (the paper fixes ``M_s1r1 = 1``).

    Args:
        match_ab: ``(B, 1, H_a, W_a)`` or ``None``.
        match_bc: ``(B, 1, H_b, W_b)``.
        flow_ab: ``(B, 2, H_a, W_a)``.

    Returns:
        match_ac: ``(B, 1, H_a, W_a)`` in [0, 1].
    """
    _check_field("match_bc", match_bc, 1)
    _check_field("flow_ab", flow_ab, 2)
    grid = pixel_grid(*flow_ab.shape[-2:], dtype=flow_ab.dtype, device=flow_ab.device)
    q = grid + flow_ab
    out = sample(match_bc, q, "zeros") * inside_mask(q, *match_bc.shape[-2:])
    if match_ab is not None:
        _check_field("match_ab", match_ab, 1)
        out = match_ab * out
    return out


def transfer_keypoints(kps_a: torch.Tensor, flow_ab: torch.Tensor) -> torch.Tensor:
    """Carry keypoints of a into b: ``kps_b = kps_a + flow_ab(kps_a)`` (bilinear read, border).

    Args:
        kps_a: ``(N, 2)`` with ``flow_ab`` ``(2, H, W)`` or ``(1, 2, H, W)``; or ``(B, N, 2)`` with
            ``flow_ab`` ``(B, 2, H, W)``. (x, y), 0-based, may be non-integer. NaN keypoints
            stay NaN.

    Returns:
        kps_b with the shape of ``kps_a``.
    """
    if flow_ab.dim() == 3:
        flow_ab = flow_ab.unsqueeze(0)
    _check_field("flow_ab", flow_ab, 2)
    single = kps_a.dim() == 2
    if single:
        kps_a = kps_a.unsqueeze(0)
    if kps_a.dim() != 3 or kps_a.shape[-1] != 2:
        raise ValueError(f"kps_a must have shape (N, 2) or (B, N, 2), got {tuple(kps_a.shape)}")
    if kps_a.shape[0] != flow_ab.shape[0]:
        raise ValueError(
            f"batch sizes differ: kps_a {tuple(kps_a.shape)} vs flow_ab {tuple(flow_ab.shape)}")
    kps_a = kps_a.to(flow_ab.dtype)
    pts = kps_a.permute(0, 2, 1).unsqueeze(-1)  # (B, 2, N, 1)
    f = sample(flow_ab, torch.nan_to_num(pts), "border")
    kps_b = kps_a + f.squeeze(-1).permute(0, 2, 1)
    return kps_b[0] if single else kps_b


def resample_flow(flow_ab: torch.Tensor, src_size: tuple[int, int],
                  tgt_size: tuple[int, int], padding: str = "border") -> torch.Tensor:
    """Re-express a flow computed between resized images in the original images' pixels.

    ``flow_ab`` maps a resized source (its own ``(h, w)``) into a resized target of the same
    ``(h, w)``; images are resized with the pixel-area convention
    (``x' = (x + 0.5)·w/W − 0.5``). The
    result maps every pixel of the original source (``src_size = (H_a, W_a)``) into the original
    target's pixels (``tgt_size = (H_b, W_b)``): shape ``(B, 2, H_a, W_a)``.
    """
    _check_field("flow_ab", flow_ab, 2)
    h, w = flow_ab.shape[-2:]
    (ha, wa), (hb, wb) = src_size, tgt_size
    dt, dev = flow_ab.dtype, flow_ab.device
    grid_a = pixel_grid(ha, wa, dtype=dt, device=dev).expand(flow_ab.shape[0], -1, -1, -1)
    scale_a = torch.tensor([w / wa, h / ha], dtype=dt, device=dev).view(1, 2, 1, 1)
    scale_b = torch.tensor([wb / w, hb / h], dtype=dt, device=dev).view(1, 2, 1, 1)
    p_small = rescale_points(grid_a, scale_a)
    q_small = p_small + sample(flow_ab, p_small, padding)
    q = rescale_points(q_small, scale_b)
    return q - grid_a


def affine_flow(matrix: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The flow of an affine map ``q = A p + t``: ``flow(p) = A p + t − p``.

    Args:
        matrix: ``(2, 3)`` or ``(B, 2, 3)`` affine matrices ``[A | t]`` in pixel coordinates.

    Returns:
        ``(B, 2, H, W)`` flow.
    """
    if matrix.dim() == 2:
        matrix = matrix.unsqueeze(0)
    if matrix.shape[-2:] != (2, 3):
        raise ValueError(f"matrix must have shape (2, 3) or (B, 2, 3), got {tuple(matrix.shape)}")
    grid = pixel_grid(height, width, dtype=matrix.dtype, device=matrix.device)
    pts = grid.flatten(2)  # (1, 2, HW)
    q = matrix[:, :, :2] @ pts + matrix[:, :, 2:]
    return (q - pts).view(matrix.shape[0], 2, height, width)


def _splat_reference(flow_ba: torch.Tensor, sigma: float, size_a: tuple[int, int],
                     spread: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`invert_flow`'s splat in PyTorch (any device, differentiable): ``(den, mean)`` as
    :func:`cyclecorr._splat.splat_numba` returns them."""
    b, _, hb, wb = flow_ba.shape
    ha, wa = size_a
    x = pixel_grid(hb, wb, dtype=flow_ba.dtype, device=flow_ba.device).flatten(2)  # (1, 2, N)
    land = (x + flow_ba.flatten(2))  # (B, 2, N)
    base = land.floor()
    r = int(math.ceil(3 * sigma))
    batch = torch.arange(b, device=flow_ba.device).view(b, 1) * (ha * wa)
    xs = x.expand(b, -1, -1)
    # the splatted quantities per b-pixel: x, y (and x² + y² for the spread)
    vals = torch.cat((xs, xs.square().sum(1, keepdim=True)), 1) if spread else xs
    den = flow_ba.new_zeros(b * ha * wa)
    num = flow_ba.new_zeros(vals.shape[1], b * ha * wa)
    for dy in range(-r + 1, r + 1):  # the integer a-pixels within 3σ of each landing point
        for dx in range(-r + 1, r + 1):
            px, py = base[:, 0] + dx, base[:, 1] + dy  # (B, N)
            d2 = (px - land[:, 0]).square() + (py - land[:, 1]).square()
            keep = (d2 < 9 * sigma * sigma) & (px >= 0) & (px <= wa - 1) & (py >= 0) & (
                py <= ha - 1)
            w = torch.where(keep, torch.exp(d2 * (-0.5 / (sigma * sigma))), 0.0)
            idx = (batch + py.clamp(0, ha - 1).long() * wa + px.clamp(0, wa - 1).long()).flatten()
            den.index_add_(0, idx, w.flatten())
            num.index_add_(1, idx, (w.unsqueeze(1) * vals).transpose(0, 1).flatten(1))
    den = den.view(b, 1, ha, wa)
    mean = num.view(-1, b, ha, wa).transpose(0, 1) / den.clamp_min(1e-12)
    if spread:  # the variance E‖x‖² − ‖E x‖²
        mean = torch.cat((mean[:, :2], (mean[:, 2:] - mean[:, :2].square().sum(
            1, keepdim=True)).clamp_min(0)), 1)
    return den, mean


def invert_flow(flow_ba: torch.Tensor, sigma: float, size_a: tuple[int, int] | None = None,
                spread: bool = False):
    """The inverse of a flow by Gaussian splatting: ``(flow_ab, weight)`` on a's grid (and
    ``spread`` with ``spread=True``).

    Every b-pixel ``x`` lands at ``l(x) = x + flow_ba(x)`` in a; an a-pixel ``p`` takes the
    weighted mean of the b-pixels that land near it, ``q(p) = Σ w·x / Σ w`` with
    ``w = exp(−‖l(x) − p‖² / 2σ²)`` for ``‖l(x) − p‖ < 3σ`` (0 beyond), and
    ``flow_ab(p) = q(p) − p``. ``weight`` ``(B, 1, H_a, W_a)`` is ``Σ w``: 0 where nothing
    landed (there ``flow_ab`` is 0, not a match; test ``weight``). ``spread`` ``(B, 1, H_a, W_a)``
    is the weighted standard deviation of those b-pixels around ``q(p)``,
    ``√(Σ w·‖x − q‖² / Σ w)``: ≈ σ√2 where one smooth piece of a map near the identity lands at
    ``p`` (σ√2 over the map's local scale), about their distance where two distant parts of b
    land on the same ``p`` (their mean is no match); 0 where nothing landed (no useful gradient).

    Args:
        flow_ba: ``(B, 2, H_b, W_b)``.
        sigma: the splat's width in a's pixels (> 0).
        size_a: ``(H_a, W_a)``; default b's size.
        spread: also return ``spread``.
    """
    _check_field("flow_ba", flow_ba, 2)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    bad = int((~torch.isfinite(flow_ba)).sum())
    if bad:
        raise ValueError(f"flow_ba has {bad} NaN or infinite value(s): a splat needs every "
                         f"landing point")
    hb, wb = flow_ba.shape[-2:]
    ha, wa = size_a if size_a is not None else (hb, wb)
    if flow_ba.device.type == "cpu" and not (flow_ba.requires_grad and torch.is_grad_enabled()):
        from cyclecorr._splat import splat_numba  # numba: imported when needed

        den, mean = splat_numba(flow_ba, sigma, (ha, wa), spread)
    else:
        den, mean = _splat_reference(flow_ba, sigma, (ha, wa), spread)
    q = mean[:, :2]
    grid_a = pixel_grid(ha, wa, dtype=flow_ba.dtype, device=flow_ba.device)
    flow_ab = torch.where(den > 0, q - grid_a, torch.zeros_like(q))
    if not spread:
        return flow_ab, den
    return flow_ab, den, mean[:, 2:].sqrt()  # both forms give a variance of 0 where den is 0


def bidirectional_flow(flow_ab: torch.Tensor, flow_ba: torch.Tensor, tau: float,
                       sigma: float, min_weight: float = 1e-3,
                       max_spread: float | None = None) -> torch.Tensor:
    """``flow_ab`` made consistent with the reverse flow: where the inverse of ``flow_ba``
    (:func:`invert_flow`, splat width ``sigma``, splat weight above ``min_weight``) lies within
    ``tau`` pixels of ``flow_ab``, the mean of the two; elsewhere ``flow_ab`` unchanged.

    Two estimates of each match, from the two directions, that agree roughly are averaged (their
    errors partly cancel); where they disagree by more than ``tau`` one of them is wrong and the
    forward flow is kept; with ``max_spread``, also where the inverse's spread
    (:func:`invert_flow`) exceeds this many pixels (distant parts of b land there).
    ``flow_ab`` ``(B, 2, H_a, W_a)``, ``flow_ba`` ``(B, 2, H_b, W_b)``."""
    _check_field("flow_ab", flow_ab, 2)
    if not tau >= 0:
        raise ValueError(f"tau must be ≥ 0, got {tau}")
    inv, weight, *rest = invert_flow(flow_ba.to(flow_ab.dtype), sigma, tuple(flow_ab.shape[-2:]),
                                     spread=max_spread is not None)
    agree = (weight > min_weight) & ((inv - flow_ab).norm(dim=1, keepdim=True) <= tau)
    if max_spread is not None:
        agree = agree & (rest[0] <= max_spread)
    return torch.where(agree, 0.5 * (flow_ab + inv), flow_ab)
