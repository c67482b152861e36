"""``cyclecorr prepare-pairs``: render pairs across instances — two different CAD models of one
topology (the gsnet cars), each from its own viewpoint, with their exact correspondence — for
the supervised pair term of training (``loss.pair_weight``, ``data.render_pairs``).

Example::

    cyclecorr prepare-pairs --cad ../shared/data/cad/car/gsnet --out runs/pairs_car \\
        --pairs 20000 --workers 2

Resumable (run the same command again after a kill); read back by
``cyclecorr.data.render_pairs.RenderPairDataset(out)``.
"""
from __future__ import annotations

import argparse
import json
import os

from cyclecorr.commands._checks import check_out_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cad", nargs="+", required=True, metavar="DIR",
                        help="folders of CAD models; models of one topology (same vertices and "
                             "faces) form the pairs, the others are left out")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--pairs", type=int, required=True, metavar="N", help="number of pairs")
    parser.add_argument("--category", default="car", help="object category (default: car)")
    parser.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                        help="worker processes (default: min(4, cores))")
    parser.add_argument("--max-azimuth-gap", type=float, default=45.0,
                        help="largest azimuth difference of the two views (default 45)")
    parser.add_argument("--min-matchable", type=float, default=0.2,
                        help="min fraction of the source's object pixels matchable (default 0.2)")
    parser.add_argument("--light", choices=("default", "random"), default="random",
                        help="one random light per pair (default) or the renderer's default")
    parser.add_argument("--shard-size", type=int, default=64, help="pairs per shard file")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--allow-evaluation-models", action="store_true",
                        help="let the category's evaluation-only CAD models (the PASCAL3D+ "
                             "chairs and aeroplanes) into the pairs; refused by default")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Write the pairs; print a summary. A user error raises (one line from the CLI)."""
    from cyclecorr.data.render_pairs import PairConfig, prepare_render_pairs  # on use: renderer

    for name, value in (("--workers", args.workers), ("--pairs", args.pairs),
                        ("--shard-size", args.shard_size)):
        if value < 1:
            raise ValueError(f"{name} must be ≥ 1, got {value}")
    check_out_dir(args.out)
    cfg = PairConfig(category=args.category, seed=args.seed,
                     max_azimuth_gap=args.max_azimuth_gap, min_matchable=args.min_matchable,
                     light=args.light, shard_size=args.shard_size)
    s = prepare_render_pairs(args.cad, args.out, args.pairs, cfg, workers=args.workers,
                             progress=not args.quiet,
                             allow_evaluation_models=args.allow_evaluation_models)
    print(json.dumps({k: s[k] for k in ("out", "pairs", "made", "groups")}))
    return 0
