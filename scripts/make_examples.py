"""Render the example photos in ``examples/`` from the Sweet Home 3D car models of the shared data.

The three pictures are renders of CC BY 3.0 car models (see ``examples/README.md`` for the
attribution) in front of a procedural sky-and-road background, at natural aspect ratio, from
front-left three-quarter viewpoints. The output is deterministic for a given data folder::

    .venv/bin/python scripts/make_examples.py [--data ../shared/data] [--out examples]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

# (output name, model folder under cad/car/sweethome3d, azimuth, elevation in degrees)
EXAMPLES = (
    ("car_a.jpg", "blendswap-cc-by-fordFocus", 35.0, 8.0),
    ("car_b.jpg", "scopia-seat_leon", 50.0, 12.0),
    ("car_c.jpg", "scopia-renault-scenic", 25.0, 6.0),
)
HEIGHT = 160


def scene_background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A sky (blue gradient with soft clouds) above a grey road: ``height×width×3`` uint8."""
    import torch
    import torch.nn.functional as F

    y = np.linspace(0.0, 1.0, height)[:, None, None]
    sky = np.array([120.0, 160.0, 210.0]) * (1 - y) + np.array([205.0, 215.0, 228.0]) * y
    noise = torch.from_numpy(rng.uniform(0, 1, (1, 1, 6, 10)).astype(np.float32))
    clouds = F.interpolate(noise, size=(height, width), mode="bicubic", align_corners=False)
    sky = sky + 40.0 * np.clip(clouds[0, 0].numpy()[..., None] - 0.5, 0, None)
    road = np.array([92.0, 92.0, 98.0]) + rng.normal(0.0, 7.0, (height, width, 1))
    horizon = int(0.58 * height)
    img = np.where(np.arange(height)[:, None, None] < horizon, sky, road)
    img[horizon:horizon + 2] = (170.0, 170.0, 160.0)  # kerb line
    return np.clip(img + rng.normal(0.0, 2.0, img.shape), 0, 255).astype(np.uint8)


def render_example(obj_path: Path, azimuth: float, elevation: float,
                   rng: np.random.Generator) -> np.ndarray:
    """One render of the model at ``HEIGHT`` px, its box's aspect ratio kept (margin 12 %)."""
    from cyclecorr.render import Light, Viewpoint, default_renderer, load_mesh

    mesh = load_mesh(obj_path)
    r = default_renderer()
    view = Viewpoint(azimuth, elevation, 0.0, 2.5)
    probe = r.render(mesh, view, 64, rgb=False)
    sx, sy = probe.crop.scale  # crop pixels per image pixel, x and y
    width = int(round(HEIGHT * sy / sx))
    light = Light(direction=(-0.5, -1.0, -0.8), intensity=3.2, ambient=0.4)
    return r.render(mesh, view, (width, HEIGHT), light=light,
                    background=scene_background(width, HEIGHT, rng), margin=0.12).rgb


def main(argv: list[str] | None = None) -> int:
    from PIL import Image

    root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(root.parent / "shared" / "data"),
                    help="data root holding cad/car/sweethome3d (default: ../shared/data)")
    ap.add_argument("--out", default=str(root / "examples"), help="output folder")
    args = ap.parse_args(argv)
    folder = Path(args.data) / "cad" / "car" / "sweethome3d"
    if not folder.is_dir():
        raise SystemExit(f"make_examples: {folder} not found (give --data)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, (name, model, az, el) in enumerate(EXAMPLES):
        obj = sorted((folder / model).glob("*.obj"))
        if not obj:
            raise SystemExit(f"make_examples: no .obj in {folder / model}")
        rgb = render_example(obj[0], az, el, np.random.default_rng(i))
        Image.fromarray(rgb).save(out / name, quality=92)
        print(f"{out / name}: {rgb.shape[1]}×{rgb.shape[0]} from {model}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
