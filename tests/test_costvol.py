"""The cost-volume network (cyclecorr.costvol): the dense-SIFT layer against the numpy reference
and closed-form properties, the correlation operators (peaks at known shifts, float64 gradcheck),
and the network's interface, dtypes and closed-form translation recovery."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from cyclecorr.costvol import dense_sift_liu, orientation_bands, sift_level
from cyclecorr.siftflow.dense_sift import dense_sift


def _texture(h: int, w: int, seed: int = 0, sigma: float = 1.0, channels: int = 3) -> np.ndarray:
    """A smooth random colour texture ``(h, w, channels)`` on [0, 1] (float64)."""
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random((h, w, channels)), (sigma, sigma, 0))
    img -= img.min()
    return img / img.max()


def _as_batch(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]


# --- dense SIFT -------------------------------------------------------------------------------

@pytest.mark.parametrize("channels,cell", [(3, 3), (1, 2)])
def test_dense_sift_liu_equals_the_numpy_reference(channels, cell):
    img = _texture(26, 31, seed=channels, channels=channels)
    ref = dense_sift(img[..., 0] if channels == 1 else img, cell_size=cell)
    out = dense_sift_liu(_as_batch(img), cell_size=cell)[0].permute(1, 2, 0).numpy()
    assert out.shape == ref.shape == (26, 31, 128)
    assert ref.max() > 100  # textured: descriptors near the 255 scale
    np.testing.assert_allclose(out, ref, atol=1e-3)


def test_orientation_bands_rotate_with_the_image():
    """Rotating the image by 90° (torch.rot90, x → y) turns every gradient by −90°: band k of the
    rotated image is band k + 2 of the original at the rotated pixel, borders included."""
    x = _as_batch(_texture(20, 27, seed=3))
    b = orientation_bands(x)
    br = orientation_bands(torch.rot90(x, 1, (2, 3)))
    assert b.shape == (1, 8, 20, 27) and b.amax() > 0.05
    torch.testing.assert_close(br, torch.rot90(b.roll(-2, 1), 1, (2, 3)), atol=1e-12, rtol=0)


def test_orientation_bands_of_a_ramp_fill_the_bands_of_its_direction():
    """A linear ramp I = 0.01·x has gradient (0.01, 0) everywhere: band 0 (θ = 0) holds 0.01 and
    the bands at ±45° hold 0.01·cos(45°)^9; the rest are 0 (edges replicated: no interior
    difference; the two columns at each edge see a clamped derivative)."""
    h, w = 9, 16
    ramp = torch.arange(w, dtype=torch.float64).view(1, 1, 1, w).expand(1, 3, h, w) * 0.01
    b = orientation_bands(ramp)[0, :, :, 2:-2]
    torch.testing.assert_close(b[0], torch.full_like(b[0], 0.01))
    side = 0.01 * np.cos(np.pi / 4) ** 9
    torch.testing.assert_close(b[1], torch.full_like(b[1], side))
    torch.testing.assert_close(b[7], torch.full_like(b[7], side))
    assert b[2:7].abs().max() < 1e-12


def test_sift_level_invariances_and_translation():
    img = _texture(64, 64, seed=5)
    x = _as_batch(img)
    for stride in (2, 4, 8):
        d = sift_level(orientation_bands(x), stride)
        assert d.shape == (1, 128, 64 // stride, 64 // stride)
        norms = d.norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=2e-2)  # textured: unit vectors
        # adding a constant changes no gradient
        torch.testing.assert_close(sift_level(orientation_bands(x + 0.3), stride), d)
        # a translation by whole cells translates the descriptors (away from the replicated edges)
        k = 2
        shifted = torch.roll(x, (k * stride, k * stride), (2, 3))
        ds = sift_level(orientation_bands(shifted), stride)
        n = 64 // stride
        inner = slice(k + 2, n - 3)
        torch.testing.assert_close(ds[..., inner, inner],
                                   d[..., k + 2 - k:n - 3 - k, k + 2 - k:n - 3 - k],
                                   atol=1e-6, rtol=0)
    # a flat image matches nothing: (near-)zero descriptors; low contrast gives short ones
    flat = sift_level(orientation_bands(torch.full((1, 3, 32, 32), 0.4)), 4)
    assert flat.norm(dim=1).max() < 1e-3
    faint = sift_level(orientation_bands(0.5 + 1e-4 * x), 4).norm(dim=1)
    assert 0.01 < faint.median() < 0.5
    with pytest.raises(ValueError, match="multiple of the stride 8"):
        sift_level(orientation_bands(x[..., :60, :60]), 8)
