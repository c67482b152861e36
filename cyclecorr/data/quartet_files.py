"""The on-disk layout of a quartet folder, shared by its writer (:mod:`cyclecorr.data.quartets`,
``cyclecorr prepare``) and its readers (:mod:`cyclecorr.data.quartet_datasets`).

``<folder>/manifest.json`` (:data:`MANIFEST`: generation parameters, models, every file with its
sha256), ``plan.json`` (the parameters, written first), ``real_crops.safetensors`` (the real
crops, uint8, with their sources and VOC pose tags), ``retrieval.safetensors`` (per crop its
viewpoint and K nearest models) and ``shards/quartets-NNNNN.safetensors``, each shard holding
``n ≤ shard_size`` quartets: ``s1``, ``s2`` (n,128,128,3) uint8, ``mask_s1``, ``mask_s2``,
``match_s1s2`` (n,128,128) uint8, ``flow_s1s2`` (n,2,128,128) **float16** (channel 0 = x, pixels,
``q − p``), ``r1_index``, ``r2_index`` (into the real crops), ``model_index`` (into the manifest's
models), ``viewpoint_s1``, ``viewpoint_s2`` (n,3: azimuth, elevation, theta in degrees). Every
file is written to a temporary name and renamed, so a killed preparation resumes by skipping the
complete shards. Each shard's SHA-256 is recorded beside it the moment it is written
(``quartets-NNNNN.safetensors.sha256``, :func:`shard_hash_path`) and, at the end, in the manifest:
a preparation run again re-verifies every existing shard against its record and regenerates one
that differs or has none (a shard's content depends only on the seed and its index).
"""
from __future__ import annotations

from pathlib import Path

from cyclecorr._io import file_sha256, read_format_json
from cyclecorr.data.io import DataError

__all__ = ["FORMAT", "VERSION", "MANIFEST", "REAL_FILE", "RETRIEVAL_FILE", "PLAN_FILE",
           "shard_path", "shard_hash_path", "read_manifest", "verify_quartets"]

FORMAT = "cyclecorr-quartets"
VERSION = 1
MANIFEST = "manifest.json"
REAL_FILE = "real_crops.safetensors"
RETRIEVAL_FILE = "retrieval.safetensors"
PLAN_FILE = "plan.json"


def shard_path(folder: str | Path, j: int) -> Path:
    """The file of shard ``j`` in a quartet folder."""
    return Path(folder) / "shards" / f"quartets-{j:05d}.safetensors"


def shard_hash_path(folder: str | Path, j: int) -> Path:
    """The file holding the SHA-256 (hex) of shard ``j``, written right after the shard."""
    p = shard_path(folder, j)
    return p.with_name(p.name + ".sha256")


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a prepared folder; ``FileNotFoundError`` / :class:`DataError` naming the
    file when it is missing or not a quartet manifest."""
    p = Path(folder) / MANIFEST
    if not p.exists():
        raise FileNotFoundError(f"{p}: no quartet manifest (run `cyclecorr prepare --out "
                                f"{folder}` first)")
    return read_format_json(p, FORMAT, "manifest", DataError)


def verify_quartets(folder) -> int:
    """Check every file listed in ``<folder>/manifest.json`` against its sha256.

    Returns the number of files checked; raises :class:`DataError` naming the first bad file.
    Cost: one read of every byte (about 1 s per GB from the page cache on the project's CPU).
    """
    folder = Path(folder)
    man = read_manifest(folder)
    files = list(man["files"].values()) + man["shards"]
    for f in files:
        p = folder / f["file"]
        if not p.exists():
            raise DataError(f"{p}: listed in {folder / MANIFEST} but missing")
        if file_sha256(p) != f["sha256"]:
            raise DataError(f"{p}: sha256 differs from {folder / MANIFEST} (corrupt or modified); "
                            f"run the same `cyclecorr prepare` again to regenerate it")
    return len(files)
