"""``cyclecorr siftflow``: SIFT flow (Liu et al., TPAMI 2011) for a list of image pairs.

Writes one ``<key>.npz`` per pair (``flow`` (2,H,W) flow_ab in pixels, ``cost`` (H,W), ``energy``)
and ``index.json`` into ``--out``; finished pairs are skipped, so re-running resumes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cyclecorr.commands._checks import check_out_dir
from cyclecorr.data.io import read_pairs_file

HELP = "SIFT flow baseline / stage-1 targets for a list of image pairs (cached, resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``siftflow`` options to ``parser``."""
    parser.description = (
        "Compute SIFT flow (dense SIFT + dual-layer belief propagation, published default "
        "parameters) from image a to image b for every pair; one .npz per pair in --out.")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--pairs", type=Path,
                     help="text file, one pair per line: 'path_a path_b' (whitespace, tab or "
                          "comma separated; '#' starts a comment; relative paths are relative "
                          "to the file's folder)")
    src.add_argument("--images", nargs=2, type=Path, metavar=("A", "B"),
                     help="a single pair of images")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--size", type=int, default=128,
                        help="resize both images to SIZE×SIZE first; 0 keeps them (default 128)")
    parser.add_argument("--data-threshold", default=None,
                        help="truncate the data term: 'median' or a number (default: none, as "
                             "in Liu's released code)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run the command; returns the exit status (a user error raises: ``cyclecorr.cli.main``
    prints it on one line and exits with 2)."""
    # on use: SIFT flow loads torch and compiles numba kernels
    from cyclecorr.siftflow import SiftFlowParams, compute_sift_flow_batch

    if args.workers < 1:
        raise ValueError(f"--workers must be ≥ 1, got {args.workers}")
    if args.size and args.size < 0:
        raise ValueError(f"--size must be ≥ 0, got {args.size}")
    thr = args.data_threshold
    if thr is not None and thr != "median":
        try:
            thr = float(thr)
        except ValueError as e:
            raise ValueError(f"--data-threshold must be 'median' or a number, got {thr!r}") from e
    pairs = read_pairs_file(args.pairs) if args.pairs else [tuple(args.images)]
    check_out_dir(args.out)
    params = SiftFlowParams(data_threshold=thr)
    size = args.size if args.size and args.size > 0 else None
    print(f"SIFT flow for {len(pairs)} pair(s), size {size or 'native'}, "
          f"{args.workers} worker(s) -> {args.out}")
    paths = compute_sift_flow_batch(pairs, args.out, workers=args.workers, size=size,
                                    params=params, progress=not args.no_progress)
    print(f"wrote {len(paths)} result(s) and {Path(args.out) / 'index.json'}")
    return 0


def main(argv=None) -> int:  # convenience: python -m cyclecorr.commands.siftflow_cmd
    from cyclecorr.cli import main as cli_main

    return cli_main(["siftflow", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
