"""How a model splits the cycle s1 → r1 → r2 → s2 between its three legs, on prepared quartets.

    .venv/bin/python scripts/cycle_legs.py --data runs/q_car MODEL.safetensors [MODEL ...]

For each model, on ``--count`` quartets spread over the folder: the mean flow magnitude of each
predicted leg (``|s1r1|``, ``|r1r2|``, ``|r2s2|``, over s1's matchable pixels), of the composed
cycle, and the end-point error of the cycle and of the direct s1 → s2 prediction against the
renderer's flow (the zero flow's error for scale). s1 is rendered from r1's viewpoint and s2 from
r2's, so a model that matches real images puts the viewpoint change into ``|r1r2|``; a model that
took the synthetic-leg shortcut (see ``CycleLossConfig.leg_weight``) has ``|r1r2| ≈ 0`` and large
synthetic–real legs.
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
    ap.add_argument("--count", type=int, default=64, help="quartets (spread evenly over the folder)")
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

    print(f"{len(items)} quartets of {args.data}; renderer flow |s1s2| {mag(gt):.2f} px, "
          f"zero-flow EPE {epe(gt * 0):.2f} px")
    print("| model | |s1r1| | |r1r2| | |r2s2| | |cycle| | cycle EPE | direct |s1s2| | direct EPE |")
    print("|---|---|---|---|---|---|---|---|")
    for path in args.models:
        net, _ = load_model(path)
        with torch.inference_mode():
            p = CycleModule(net)(b["s1"], b["r1"], b["r2"], b["s2"])
            cyc, _ = compose_cycle(p["flow_s1r1"], p["flow_r1r2"], p["flow_r2s2"],
                                   p["match_r1r2"], "border")
            direct = net(b["s1"], b["s2"])["flow"]
        print(f"| {Path(path).name} | {mag(p['flow_s1r1']):.2f} | {mag(p['flow_r1r2']):.2f} | "
              f"{mag(p['flow_r2s2']):.2f} | {mag(cyc):.2f} | {epe(cyc):.2f} | {mag(direct):.2f} | "
              f"{epe(direct):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
