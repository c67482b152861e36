"""The ``cyclecorr`` command: thin argument parsing; each sub-command lives in
``cyclecorr/commands/<name>_cmd.py`` with ``add_arguments(parser)`` and ``run(args) -> int``.

A user error (a missing or unreadable file, a bad value, an image outside the input contract, a
folder that cannot be written, a device this machine lacks, a training run that diverges) ends
the command with exit status 2 and one line on stderr, ``cyclecorr COMMAND: error: …``, naming the
file or option and the problem; ``--debug`` (or ``CYCLECORR_DEBUG=1``) shows the traceback
instead. Anything else is a bug and keeps its traceback."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from cyclecorr import __version__

# name -> (module, one-line help)
COMMANDS = {
    "demo": ("cyclecorr.commands.demo_cmd",
             "end-to-end demo on embedded data: render, quartets, train, match, pictures"),
    "render": ("cyclecorr.commands.render_cmd",
               "render CAD models / synthetic ground-truth pairs to PNG"),
    "prepare": ("cyclecorr.commands.prepare_cmd",
                "build training quartets from real photos and CAD models"),
    "prepare-pairs": ("cyclecorr.commands.prepare_pairs_cmd",
                      "render pairs across instances of one topology (supervised pair term)"),
    "siftflow": ("cyclecorr.commands.siftflow_cmd",
                 "compute SIFT flow on image pairs (baseline / stage-1 targets)"),
    "train": ("cyclecorr.commands.train_cmd",
              "train a model (stage 1: SIFT-flow imitation, stage 2: cycle consistency)"),
    "evaluate": ("cyclecorr.commands.evaluate_cmd",
                 "evaluate models and baselines (PCK, matchability, segmentation, flow)"),
    "compare": ("cyclecorr.commands.compare_cmd",
                "compare the methods of evaluation result files pair by pair (bootstrap "
                "intervals)"),
    "match": ("cyclecorr.commands.match_cmd",
              "match two images (or a folder of pairs) and write pictures + HTML"),
    "models": ("cyclecorr.commands.models_cmd",
               "list the models shipped with the package (category, file, size, card)"),
}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    # the shipped models (cyclecorr.checkpoint.shipped_models), found without importing torch
    shipped = sorted(p.stem for p in (Path(__file__).parent / "weights").glob("*.safetensors"))
    parser = _Parser(
        prog="cyclecorr",
        description="Dense correspondence across object instances by 3D-guided cycle consistency.",
        epilog=f"shipped models: {', '.join(shipped) or 'none'} (`cyclecorr models` for details)")
    parser.add_argument("--version", action="version", version=f"cyclecorr {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of its one-line message")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:
                continue  # command not installed in this build
            raise
        p = sub.add_parser(name, help=help_, description=help_)
        mod.add_arguments(p)
        # also after the command's name; SUPPRESS keeps the sub-parser from resetting it
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback of an error instead of its one-line message")
        p.set_defaults(_run=mod.run)
    return parser


#: What a user can cause and fix: bad values and files (ValueError covers DataError, ImageError,
#: JSON and text-decoding errors), files and folders that are missing, in the way or not
#: writable (OSError), and a training run whose loss stops being finite (FloatingPointError).
USER_ERRORS = (ValueError, OSError, FloatingPointError)


def one_line(e: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    text = " ".join(str(e).split())
    return text or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    debug = args.debug or os.environ.get("CYCLECORR_DEBUG", "") not in ("", "0")
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if debug:
            raise
        print(f"cyclecorr {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
