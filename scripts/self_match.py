"""How well a model matches a photo to a re-framed copy of itself, where the flow is exact.

    .venv/bin/python scripts/self_match.py MODEL.safetensors [MODEL ...] [--siftflow] [--zero]
    .venv/bin/python scripts/self_match.py MODEL ... --photos DIR [--limit N]

The easiest correspondence problem there is: the same photo, moved. For each image of the chosen
set (the FlowWeb car crops and the PF-WILLOW car photos by default, resized to 128×128 as the
evaluation sees them; used here for a diagnosis only, nothing is trained or selected on them), or
the photos of any folder (``--photos``: e.g. the VOC car crops, training photos without labels,
where a test-time rule may be selected), three tests:

- ``shift``: the photo against itself moved right by ``--shift`` pixels (edge pixels repeated);
  reported: the mean predicted x flow over the central region (the truth is ``--shift``) and the
  end-point error there;
- ``reframe``: the photo against a copy re-framed by :func:`cyclecorr.train.data.self_warp_pair`
  (both sides zoomed ×0.6–1.3, shifted up to 15 %, texture outside the old frame; seed 0, one draw
  per image), reported as EPE and the fraction of matchable pixels within 5 px;
- ``similarity``: the photo against a copy moved by a random similarity about the centre
  (scale ×0.85–1.15, rotation ±6°, shift ±10 px; seed 0, one draw per image; edge pixels
  repeated outside the frame), reported as the fraction of source pixels within 5 px among
  those whose match lies in the frame.

A network that learnt to match appearance gets these nearly right; one that learnt a layout
prior (a flow that depends on where things usually are, not on what they look like) does not.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def load_images(which: str, size: int) -> torch.Tensor:
    from cyclecorr.evaluate.benchmarks import resize_image
    from cyclecorr.evaluate.datasets import load_flowweb_car, load_pf_willow

    samples = []
    if which in ("all", "flowweb-car"):
        samples += load_flowweb_car()
    if which in ("all", "pf-willow-car"):
        samples += [s for k, v in load_pf_willow().items() if k.startswith("car") for s in v]
    if not samples:
        raise SystemExit(f"no images for set {which!r}")
    return torch.stack([resize_image(s.image, size) for s in samples])


def load_folder(folder: str, size: int, limit: int) -> torch.Tensor:
    """``limit`` photos of ``folder`` spread evenly over its sorted files (all when ``limit`` is
    0), each resized to ``size``×``size``."""
    from cyclecorr.data.datasets import list_images
    from cyclecorr.data.io import read_image
    from cyclecorr.evaluate.benchmarks import resize_image

    files = list_images(folder)
    if 0 < limit < len(files):
        files = [files[i * len(files) // limit] for i in range(limit)]
    return torch.stack([resize_image(read_image(f), size) for f in files])


def make_tests(images: torch.Tensor, shift: int, seed: int = 0) -> dict:
    from cyclecorr.geometry import warp
    from cyclecorr.train.data import collate, self_warp_pair

    b, _, s, _ = images.shape
    flow = torch.zeros(b, 2, s, s)
    flow[:, 0] = -shift  # tgt(q) = src(q − shift): the content moves right by `shift`
    shifted = warp(images, flow, "border")
    g = torch.Generator().manual_seed(seed)
    pairs = collate([self_warp_pair(im, g, (0.6, 1.3), 0.15, 0.1, "texture") for im in images])
    return {"shifted": shifted, "reframe": pairs, "similarity": similarity_pairs(images, seed)}


def similarity_pairs(images: torch.Tensor, seed: int = 0) -> dict:
    """Each image against a copy moved by a random similarity ``q = c + s·R(θ)(p − c) + t``
    (scale 0.85–1.15, θ within ±6°, t within ±10 px; ``c`` the image centre): the copy samples
    the image at the inverse map (edge pixels repeated), the flow is exactly ``q − p``, and a
    pixel counts where ``q`` lies in the frame."""
    from cyclecorr.geometry import pixel_grid, warp

    b, _, s, _ = images.shape
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(b, 4, generator=g) * 2 - 1
    scale, theta, t = 1 + 0.15 * u[:, 0], torch.deg2rad(6 * u[:, 1]), 10 * u[:, 2:]
    cos, sin = torch.cos(theta), torch.sin(theta)
    A = torch.stack((torch.stack((cos, -sin), 1), torch.stack((sin, cos), 1)), 1) * \
        scale.view(b, 1, 1)                                               # (b, 2, 2)
    c = (s - 1) / 2
    p = pixel_grid(s, s).expand(b, 2, s, s)                               # (b, 2, s, s): x, y
    q = torch.einsum("bij,bjhw->bihw", A, p - c) + c + t.view(b, 2, 1, 1)
    # the copy at q shows the image at p: copy(q') = image(A⁻¹(q' − c − t) + c)
    Ai = torch.linalg.inv(A)
    back = torch.einsum("bij,bjhw->bihw", Ai, p - c - t.view(b, 2, 1, 1)) + c
    copy = warp(images, back - p, "border")
    inside = ((q >= 0) & (q <= s - 1)).all(1, keepdim=True)
    return {"src": images, "tgt": copy, "flow": q - p, "match": inside.float()}


def measure(method, images, tests, shift: int, batch: int = 16) -> dict:
    from cyclecorr.evaluate.methods import predict_in_batches

    s = images.shape[-1]
    c = slice(s // 8 + shift, s - s // 8)
    f, _ = predict_in_batches(method, images, tests["shifted"], batch)
    fx = f[:, 0, c, c]
    err = (f[:, :, c, c] - torch.tensor([float(shift), 0.0]).view(1, 2, 1, 1)).norm(dim=1)
    p = tests["reframe"]
    f2, _ = predict_in_batches(method, p["warp_src"], p["warp_tgt"], batch)
    m = p["match_warp"][:, 0] > 0.5
    e2 = (f2 - p["flow_warp"]).norm(dim=1)[m]
    q = tests["similarity"]
    f3, _ = predict_in_batches(method, q["src"], q["tgt"], batch)
    e3 = (f3 - q["flow"]).norm(dim=1)[q["match"][:, 0] > 0.5]
    return {"shift_fx": float(fx.mean()), "shift_epe": float(err.mean()),
            "reframe_epe": float(e2.mean()), "reframe_px5": float((e2 <= 5).float().mean()),
            "similarity_px5": float((e3 <= 5).float().mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*",
                    help="model files (safetensors), each PATH or NAME=PATH (NAME: its row; "
                         "PATH may be shipped:CATEGORY)")
    ap.add_argument("--set", default="all", choices=("all", "flowweb-car", "pf-willow-car"))
    ap.add_argument("--photos", metavar="DIR",
                    help="the photos of this folder instead of --set (e.g. training photos)")
    ap.add_argument("--limit", type=int, default=100,
                    help="with --photos: this many, spread over the folder (0: all; default 100)")
    ap.add_argument("--shift", type=int, default=6, help="pixels of the shift test (default 6)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--zero", action="store_true", help="add the zero flow as a row")
    ap.add_argument("--siftflow", action="store_true", help="add SIFT flow (about 0.5 s a pair)")
    args = ap.parse_args(argv)
    from cyclecorr.evaluate.methods import NetworkMethod, SiftFlowMethod, ZeroFlow, make_method

    if args.photos:
        images = load_folder(args.photos, args.size, args.limit)
        args.set = args.photos
    else:
        images = load_images(args.set, args.size)
    tests = make_tests(images, args.shift)
    methods = [("zero flow", ZeroFlow(args.size))] if args.zero else []
    if args.siftflow:
        methods.append(("SIFT flow", SiftFlowMethod(args.size)))
    for m in args.models:
        if "=" in m:  # NAME=PATH as `cyclecorr evaluate --methods` reads it
            method = make_method(m, size=args.size, net_size=args.size)
            methods.append((method.name, method))
        else:
            methods.append((Path(m).name, NetworkMethod.from_file(m, size=args.size)))
    if not methods:
        ap.error("give at least one model, --zero or --siftflow")
    true = tests["reframe"]["flow_warp"].norm(dim=1)[tests["reframe"]["match_warp"][:, 0] > 0.5]
    print(f"{len(images)} images ({args.set}) at {args.size}×{args.size}; shift test: "
          f"+{args.shift} px in x; re-framing test: true flow {float(true.mean()):.1f} px on "
          "average")
    print(f"| method | shift: mean predicted x flow (true {args.shift}) | shift: EPE | "
          "re-framing: EPE | re-framing: within 5 px | similarity: within 5 px |")
    print("|---|---|---|---|---|---|")
    for name, method in methods:
        r = measure(method, images, tests, args.shift)
        print(f"| {name} | {r['shift_fx']:.2f} | {r['shift_epe']:.2f} | {r['reframe_epe']:.2f} | "
              f"{r['reframe_px5']:.3f} | {r['similarity_px5']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
