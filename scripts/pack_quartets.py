"""Pack a subset of a prepared quartet folder small enough to travel, and unpack it elsewhere.

A folder from ``cyclecorr prepare`` holds about 213 kB per quartet (6,000 car quartets: 1.3 GB),
mostly the float16 flow s1->s2. To train on a machine that can only receive a few tens of MB (a
lent GPU box, a laptop over a slow link) this writes the first ``--shards`` shards with

* the flow quantised to 1/8 px (error <= 1/16 px, against a loss truncated at 15 px), set to 0
  where ``match_s1s2`` is 0 (the losses mask those pixels), differenced along x and xz-compressed;
* every other array of the shard (renders, masks, indices, viewpoints) unchanged, xz-compressed;
* the real crops as lossless WebP (every crop, so the indices stay valid).

``unpack`` rebuilds an ordinary quartet folder (safetensors shards, ``real_crops.safetensors``,
``retrieval.safetensors``, a manifest with the subset's count and fresh sha256s) that
``cyclecorr train --data`` reads as usual.

    python scripts/pack_quartets.py pack runs/q_car .travel/q_car --shards 24
    python scripts/pack_quartets.py unpack .travel/q_car /tmp/q_car
"""
from __future__ import annotations

import argparse
import io
import json
import lzma
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load, load_file, save, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cyclecorr.checkpoint import atomic_write_bytes as _atomic  # noqa: E402
from cyclecorr.checkpoint import file_sha256 as _sha256  # noqa: E402

FLOW_STEP = 8.0  # quantisation: 1/8 px


def encode_flow(flow: np.ndarray, match: np.ndarray) -> np.ndarray:
    """(n,2,H,W) float flow, (n,H,W) {0,1} → int16 x-differences of round(flow·8)·match."""
    q = np.round(flow.astype(np.float32) * FLOW_STEP) * (match[:, None] > 0)
    if np.abs(q).max(initial=0) > np.iinfo(np.int16).max:
        raise ValueError("flow too large for 1/8-px int16 quantisation")
    return np.diff(q.astype(np.int32), axis=-1, prepend=0).astype(np.int16)


def decode_flow(code: np.ndarray) -> np.ndarray:
    return (np.cumsum(code.astype(np.int32), axis=-1) / FLOW_STEP).astype(np.float16)


def pack(src: Path, dst: Path, shards: int) -> None:
    from PIL import Image

    man = json.loads((src / "manifest.json").read_text())
    if not 1 <= shards <= len(man["shards"]):
        raise SystemExit(f"--shards must be in 1..{len(man['shards'])}")
    dst.mkdir(parents=True, exist_ok=True)
    for j, s in enumerate(man["shards"][:shards]):
        d = load_file(str(src / s["file"]))
        d["flow_s1s2"] = encode_flow(d["flow_s1s2"], d["match_s1s2"])
        _atomic(dst / f"shard-{j:05d}.xz", lzma.compress(save(d), preset=9))
        print(f"\rshard {j + 1}/{shards}", end="", file=sys.stderr)
    print(file=sys.stderr)
    real = load_file(str(src / man["files"]["real_crops"]["file"]))
    blobs = []
    for im in real["images"]:
        b = io.BytesIO()
        Image.fromarray(im).save(b, "WEBP", lossless=True)
        blobs.append(np.frombuffer(b.getvalue(), np.uint8))
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    extra = {k: v for k, v in real.items() if k != "images"}
    save_file({"webp": np.concatenate(blobs), "offsets": offsets, **extra},
              str(dst / "real_webp.safetensors"))
    (dst / "retrieval.safetensors").write_bytes(
        (src / man["files"]["retrieval"]["file"]).read_bytes())
    sub = dict(man)
    sub["shards"] = man["shards"][:shards]
    sub["num_quartets"] = int(sum(s["count"] for s in sub["shards"]))
    sub["packed_from"] = {"num_quartets": man["num_quartets"],
                          "flow": f"quantised to 1/{FLOW_STEP:g} px, 0 where unmatched"}
    _atomic(dst / "manifest.json", json.dumps(sub, indent=1).encode())
    size = sum(p.stat().st_size for p in dst.iterdir())
    print(f"{dst}: {sub['num_quartets']} quartets, {len(blobs)} real crops, {size / 2**20:.1f} MiB")


def unpack(src: Path, dst: Path) -> None:
    from PIL import Image

    man = json.loads((src / "manifest.json").read_text())
    (dst / "shards").mkdir(parents=True, exist_ok=True)
    for j, s in enumerate(man["shards"]):
        d = load(lzma.decompress((src / f"shard-{j:05d}.xz").read_bytes()))
        d["flow_s1s2"] = decode_flow(d["flow_s1s2"])
        save_file(d, str(dst / s["file"]))
        s["sha256"] = _sha256(dst / s["file"])
    w = load_file(str(src / "real_webp.safetensors"))
    off = w["offsets"]
    images = np.stack([np.asarray(Image.open(io.BytesIO(w["webp"][off[i]:off[i + 1]].tobytes()))
                                  .convert("RGB")) for i in range(len(off) - 1)])
    real = {"images": images, **{k: v for k, v in w.items() if k not in ("webp", "offsets")}}
    save_file(real, str(dst / man["files"]["real_crops"]["file"]))
    man["files"]["real_crops"]["sha256"] = _sha256(dst / man["files"]["real_crops"]["file"])
    (dst / man["files"]["retrieval"]["file"]).write_bytes(
        (src / "retrieval.safetensors").read_bytes())
    _atomic(dst / "manifest.json", json.dumps(man, indent=1).encode())
    print(f"{dst}: {man['num_quartets']} quartets, {len(images)} real crops")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--shards", type=int, required=True)
    u = sub.add_parser("unpack")
    u.add_argument("src", type=Path)
    u.add_argument("dst", type=Path)
    a = ap.parse_args(argv)
    pack(a.src, a.dst, a.shards) if a.cmd == "pack" else unpack(a.src, a.dst)


if __name__ == "__main__":
    main()
