"""``cyclecorr demo``: the whole method end to end on embedded data, in a few minutes on a CPU.

Procedural CAD models (box-and-wheels cars or box chairs) are rendered into quartets (renders
with textured backgrounds and random lights stand in for real photos), a small network trains a
few steps of stage 1 and stage 2, and a held-out pair is matched with it (and with the shipped
model when present). Nothing is downloaded."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder (index.html, quartets.png, run/, match_*/, "
                             "summary.json)")
    parser.add_argument("--category", choices=("car", "chair"), default="car",
                        help="procedural category (default car)")
    parser.add_argument("--quartets", type=int, default=48,
                        help="training quartets to render (default 48)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the procedural models, the renders and the training "
                             "(default 0; the same seed gives the same demo)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                        metavar="KEY=VALUE", help="override fields of the demo preset")
    parser.add_argument("--no-shipped", action="store_true",
                        help="do not also match with the shipped model")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (for logs and CI)")


def run(args) -> int:
    from cyclecorr.commands._checks import check_out_dir
    from cyclecorr.train.config import load_config
    from cyclecorr.train.demo import run_demo  # on use: loads torch and the renderer

    if args.quartets < 2:
        raise ValueError(f"--quartets must be at least 2, got {args.quartets}")
    check_out_dir(args.out)
    load_config("demo", list(args.overrides))  # a bad --set fails here, before any work
    print(f"cyclecorr demo: rendering {args.quartets} procedural {args.category} quartets, "
          f"training a small network (demo preset), matching a held-out pair; writing to "
          f"{args.out}")
    s = run_demo(args.out, quartets=args.quartets, category=args.category, seed=args.seed,
                 overrides=args.overrides, progress=not args.no_progress,
                 shipped=not args.no_shipped)
    v = s.get("validation") or {}
    print(f"done in {s['seconds']['total']:.0f} s (render {s['seconds']['render']:.0f} s, "
          f"train {s['seconds']['train']:.0f} s)")
    if v:
        print(f"held-out synthetic quartets: cycle EPE {v['cycle_epe']:.2f} px, direct s1→s2 "
              f"EPE {v['direct_epe']:.2f} px, PCK@{v['pck_alpha']} {v['direct_pck']:.3f}")
    print(f"outputs in {s['out']}:")
    print(f"  {s['page']}  (open in a browser: what ran, the training quartets, the matched "
          f"pair with an interactive viewer)")
    print(f"  {s['out']}/quartets.png  (training quartets: s1 s2 r1 r2 | GT flow | GT "
          "matchability)")
    print(f"  {s['final_model']}  (the demo model; log and cycle pictures in run/)")
    return 0
