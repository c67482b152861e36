"""Checks every command makes before it starts working, so that a user error ends the command at
once with one line naming the option or file and the problem (``cyclecorr.cli.main`` prints it):
an output folder that cannot be written, a device this machine does not have."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["check_out_dir", "check_device", "positive_int"]


def check_out_dir(path, option: str = "--out") -> Path:
    """Refuse an output folder that cannot be written: an existing file, a path under a file, or
    a folder (or the nearest existing parent, when the folder is still to be made) without write
    permission. Nothing is created. Returns the path."""
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise ValueError(f"{option} {p}: is a file, not a folder")
        if not os.access(p, os.W_OK | os.X_OK):
            raise ValueError(f"{option} {p}: the folder is not writable")
        return p
    anc = p.absolute().parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise ValueError(f"{option} {p}: cannot create the folder, {anc} is a file")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {p}: cannot create the folder, {anc} is not writable")
    return p


def check_device(device, option: str = "--device"):
    """The ``torch.device`` of a ``--device`` value (see :func:`cyclecorr._runtime.
    resolve_device`); a name torch does not know or a device this machine lacks is a
    ``ValueError`` naming the option."""
    from cyclecorr._runtime import resolve_device  # imports torch: only when a command runs

    try:
        return resolve_device(device)
    except ValueError as e:
        raise ValueError(f"{option} {device}: {str(e).split(': ', 1)[-1]}") from e


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer ≥ 1."""
    import argparse

    try:
        v = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {text!r}") from e
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {v}")
    return v
