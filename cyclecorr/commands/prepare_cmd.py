"""``cyclecorr prepare``: real photos + CAD models → training quartets (cached shards).

Example::

    cyclecorr prepare --category car --real ../shared/data/real/voc2007/car \\
        --cad ../shared/data/cad/car/gsnet ../shared/data/cad/pascal3d \\
        --out data/car-quartets --quartets 20000 --workers 2

Resumable (run the same command again after a kill), splittable across machines writing to one
folder (``--shard i/n`` on each), and read back with ``cyclecorr.data.QuartetDataset(out)``.
"""
from __future__ import annotations

import argparse
import json
import os

from cyclecorr.commands._checks import check_out_dir
from cyclecorr.data.quartet_config import QuartetConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``prepare`` options on ``parser``."""
    d = QuartetConfig()
    parser.add_argument("--category", default=d.category, help="object category (default: car)")
    parser.add_argument("--real", nargs="+", required=True, metavar="DIR",
                        help="real-image folders: image folders (with boxes.tsv where present), "
                             "a VOC layout (Annotations/ + JPEGImages/) or a PASCAL3D+ release")
    parser.add_argument("--cad", nargs="+", required=True, metavar="DIR",
                        help="folders of CAD models (OBJ/ShapeNet/PASCAL3D+ JSON, recursive)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--quartets", type=int, required=True, metavar="N",
                        help="number of quartets (0: only crops + retrieval, for on-the-fly use)")
    parser.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                        help="worker processes for rendering (default: min(4, cores))")
    parser.add_argument("--shard", default=None, metavar="i/n",
                        help="only the shards j with j %% n == i (split across machines)")
    parser.add_argument("--shard-size", type=int, default=d.shard_size,
                        help=f"quartets per shard file (default {d.shard_size})")
    parser.add_argument("--k", type=int, default=d.k,
                        help=f"nearest CAD models per real crop (default {d.k}, the paper's K)")
    parser.add_argument("--azimuth-step", type=float, default=d.azimuth_step,
                        help=f"render-bank azimuth step in degrees (default {d.azimuth_step})")
    parser.add_argument("--elevations", type=float, nargs="+", default=list(d.elevations),
                        help="render-bank elevations in degrees (default 0 10 20 30)")
    parser.add_argument("--max-azimuth-gap", type=float, default=d.max_azimuth_gap,
                        help=f"max azimuth difference of r1, r2 (default {d.max_azimuth_gap})")
    parser.add_argument("--max-elevation-gap", type=float, default=d.max_elevation_gap,
                        help=f"max elevation difference of r1, r2 (default {d.max_elevation_gap})")
    parser.add_argument("--min-matchable", type=float, default=d.min_matchable,
                        help="min fraction of s1's object pixels matchable in s2 "
                             f"(default {d.min_matchable})")
    parser.add_argument("--no-pose-tags", action="store_true",
                        help="ignore VOC coarse pose tags when estimating viewpoints")
    parser.add_argument("--light", choices=("default", "random"), default=d.light,
                        help="render lighting: the renderer's default light, or a random light "
                             "per quartet shared by s1 and s2 (default: default)")
    parser.add_argument("--background", type=int, nargs=3, default=list(d.background),
                        metavar=("R", "G", "B"), help="render background colour (default 0 0 0)")
    parser.add_argument("--require-pose", action="store_true",
                        help="quartets only from real crops with an annotated viewpoint or a VOC "
                             "pose tag (HOG alone confuses front and rear views)")
    parser.add_argument("--seed", type=int, default=d.seed, help="random seed (default 0)")
    parser.add_argument("--bank-cache", default=None, metavar="DIR",
                        help="where render banks are cached (default: the user cache, "
                             "~/.cache/cyclecorr/banks)")
    parser.add_argument("--eval-data", default="auto", metavar="ROOT",
                        help="data root holding the evaluation sets (real/pf-willow, "
                             "real/flowweb-car, real/tss) whose images, and near-duplicates of "
                             "them, never enter training (default: the shared data folder, "
                             "../shared/data or $CYCLECORR_DATA)")
    parser.add_argument("--exclude-like", nargs="+", default=[], metavar="DIR",
                        help="further folders of images that no training photo may duplicate "
                             "(e.g. your own test photos)")
    parser.add_argument("--allow-evaluation-models", action="store_true",
                        help="let in the category's evaluation-only CAD models (the PASCAL3D+ "
                             "chairs and aeroplanes, rendered by the synth-kp-<category> "
                             "benchmark; refused otherwise). PASCAL3D+ cars are always allowed "
                             "(the shipped car model trained on them): cyclecorr.data.holdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Run the preparation; print what was found and written. Returns the exit status (a user
    error raises: ``cyclecorr.cli.main`` prints it on one line and exits with 2)."""
    # on use: the preparation loads the renderer, HOG and safetensors
    from cyclecorr.data.quartets import prepare_quartets

    for name, value, low in (("--workers", args.workers, 1), ("--shard-size", args.shard_size, 1),
                             ("--k", args.k, 1), ("--quartets", args.quartets, 0)):
        if value < low:
            raise ValueError(f"{name} must be ≥ {low}, got {value}")
    check_out_dir(args.out)
    cfg = QuartetConfig(category=args.category, k=args.k, azimuth_step=args.azimuth_step,
                        elevations=tuple(args.elevations),
                        max_azimuth_gap=args.max_azimuth_gap,
                        max_elevation_gap=args.max_elevation_gap,
                        min_matchable=args.min_matchable, shard_size=args.shard_size,
                        seed=args.seed, use_pose_tags=not args.no_pose_tags,
                        light=args.light, background=tuple(args.background),
                        require_pose=args.require_pose)
    summary = prepare_quartets(args.real, args.cad, args.out, args.quartets, cfg,
                               workers=args.workers, shard=args.shard,
                               progress=not args.quiet, bank_cache=args.bank_cache,
                               eval_data=args.eval_data, exclude_like=args.exclude_like,
                               allow_evaluation_models=args.allow_evaluation_models)
    t = summary["timing"]
    if t["total"] > 0:
        print("time in workers: " + ", ".join(
            f"{k} {100 * t[k] / t['total']:.0f}%" for k in ("render", "gt", "write")))
    if summary.get("skipped_models"):
        print(f"skipped {len(summary['skipped_models'])} model(s) that could not be rendered: "
              + ", ".join(summary["skipped_models"]))
    print(json.dumps({k: summary[k] for k in ("out", "real_crops", "excluded", "models",
                                              "quartets_total", "quartets_made")}))
    return 0


def main(argv=None) -> int:  # pragma: no cover - convenience for `python -m`
    import sys

    from cyclecorr.cli import main as cli_main

    return cli_main(["prepare", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
