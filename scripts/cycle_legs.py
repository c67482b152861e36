"""How a model splits the cycle s1 → r1 → r2 → s2 between its three legs, on prepared quartets.

    .venv/bin/python scripts/cycle_legs.py --data runs/q_car MODEL.safetensors [MODEL ...]

For each model, on ``--count`` quartets spread over the folder: the mean flow magnitude of each
predicted leg (``|s1r1|``, ``|r1r2|``, ``|r2s2|``, over s1's matchable pixels), of the composed
cycle, and the end-point error of the cycle and of the direct s1 → s2 prediction against the
renderer's flow (the zero flow's error for scale), the share of matchable pixels whose cycle
error exceeds the loss's truncation ``--truncation`` (they give the flow loss no gradient) and the
median coverage of the true flow (the cycle's projection on the renderer's flow over its squared
length; 1 = the whole motion). s1 is rendered from r1's viewpoint and s2 from
r2's, so a model that matches real images puts the viewpoint change into ``|r1r2|``; a model that
took the synthetic-leg shortcut (see ``CycleLossConfig.leg_weight``) has ``|r1r2| ≈ 0`` and large
synthetic–real legs. ``--picture PATH`` draws one quartet and each model's three legs, composed
cycle and the renderer's flow, all colour-coded on one scale (``cyclecorr.viz.flow_to_color``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from cyclecorr.checkpoint import load_model  # noqa: E402
from cyclecorr.losses import compose_cycle  # noqa: E402
from cyclecorr.train.data import collate  # noqa: E402
from cyclecorr.train.modules import CycleModule  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="model files (safetensors)")
    ap.add_argument("--data", required=True, help="quartet folder written by `cyclecorr prepare`")
    ap.add_argument("--count", type=int, default=64,
                    help="quartets (spread evenly over the folder)")
    ap.add_argument("--truncation", type=float, default=15.0,
                    help="T of the flow loss in px (default 15, the paper's)")
    ap.add_argument("--picture", metavar="PNG", help="draw the legs of each model on one quartet")
    ap.add_argument("--picture-quartet", type=int, default=0,
                    help="which of the --count quartets to draw (default 0)")
    args = ap.parse_args(argv)
    from cyclecorr.data import QuartetDataset

    ds = QuartetDataset(args.data)
    step = max(1, len(ds) // args.count)
    items = [ds[i] for i in range(0, len(ds), step)][:args.count]
    b = collate([{k: torch.as_tensor(v).float() for k, v in it.items() if hasattr(v, "shape")}
                 for it in items])
    m, gt = b["match_s1s2"], b["flow_s1s2"]

    def mean_on_mask(x):
        return float((x * m).sum() / m.sum().clamp_min(1))

    def mag(f):
        return mean_on_mask(f.norm(dim=1, keepdim=True))

    def epe(f):
        return mean_on_mask((f - gt).norm(dim=1, keepdim=True))

    on = m[:, 0] > 0.5
    gt_len = gt.norm(dim=1)[on]
    t = args.truncation
    print(f"{len(items)} quartets of {args.data}; renderer flow |s1s2| {mag(gt):.2f} px, "
          f"zero-flow EPE {epe(gt * 0):.2f} px; |s1s2| > T = {t:g} px on "
          f"{float((gt_len > t).float().mean()):.1%} of matchable pixels")

    def beyond_t(f):  # share of matchable pixels whose error is past the truncation
        return float(((f - gt).norm(dim=1)[on] > t).float().mean())

    def coverage(f):  # median of <f, gt> / |gt|² over matchable pixels
        return float(((f * gt).sum(1)[on] / gt_len.pow(2).clamp_min(1)).median())

    drawn = []
    print("| model | |s1r1| | |r1r2| | |r2s2| | |cycle| | cycle EPE | direct |s1s2| | direct EPE | "
          "cycle error > T | coverage |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in args.models:
        net, _ = load_model(path)
        with torch.inference_mode():
            p = CycleModule(net)(b["s1"], b["r1"], b["r2"], b["s2"])
            cyc, _ = compose_cycle(p["flow_s1r1"], p["flow_r1r2"], p["flow_r2s2"],
                                   p["match_r1r2"], "border")
            direct = net(b["s1"], b["s2"])["flow"]
        print(f"| {Path(path).name} | {mag(p['flow_s1r1']):.2f} | {mag(p['flow_r1r2']):.2f} | "
              f"{mag(p['flow_r2s2']):.2f} | {mag(cyc):.2f} | {epe(cyc):.2f} | {mag(direct):.2f} | "
              f"{epe(direct):.2f} | {beyond_t(cyc):.1%} | {coverage(cyc):.2f} |")
        k = min(args.picture_quartet, len(items) - 1)
        drawn.append((Path(path).stem, [p["flow_s1r1"][k], p["flow_r1r2"][k], p["flow_r2s2"][k],
                                        cyc[k]]))
    if args.picture:
        k = min(args.picture_quartet, len(items) - 1)
        _picture(args.picture, [b[key][k] for key in ("s1", "r1", "r2", "s2")], gt[k], m[k],
                 drawn)
        print(f"picture: {args.picture}")
    return 0


def _picture(path, images, gt, match, drawn, scale: float = 30.0):
    """Row 0: s1, r1, r2, s2 and the renderer's flow s1→s2 (unmatchable pixels black); one row per
    model: its legs s1→r1, r1→r2, r2→s2 and the composed cycle. Colours saturate at ``scale`` px."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cyclecorr._io import atomic_path
    from cyclecorr.viz import flow_to_color

    def img(t):
        return (t.permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype("uint8")

    rows = 1 + len(drawn)
    fig, axes = plt.subplots(rows, 5, figsize=(10, 2.1 * rows), squeeze=False)
    gt_col = flow_to_color(gt.numpy(), max_flow=scale) * (match.numpy().transpose(1, 2, 0) > 0.5)
    for ax, pic, title in zip(axes[0], [img(x) for x in images] + [gt_col],
                              ("s1 (render)", "r1 (photo)", "r2 (photo)", "s2 (render)",
                               "renderer flow s1→s2")):
        ax.imshow(pic)
        ax.set_title(title, fontsize=8)
    for r, (name, flows) in enumerate(drawn, start=1):
        for c, (f, title) in enumerate(zip(flows, ("s1→r1", "r1→r2", "r2→s2", "cycle s1→s2"))):
            mag = float(f.norm(dim=0).mean())
            axes[r][c].imshow(flow_to_color(f.numpy(), max_flow=scale))
            axes[r][c].set_title(f"{title} ({mag:.1f} px)", fontsize=8)
        axes[r][4].text(0.02, 0.5, name, fontsize=8, va="center", wrap=True)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"flow colours saturate at {scale:g} px (hue = direction)", fontsize=9)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
