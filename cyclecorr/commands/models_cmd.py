"""``cyclecorr models``: the models shipped with the package, one line each.

    cyclecorr models            # category, file, size, model card
    cyclecorr models --json     # the same as JSON (with the network configuration)

A shipped model is ``cyclecorr/weights/<category>.safetensors`` with its model card
``<category>.md``; ``Matcher.from_checkpoint(category=...)`` and ``cyclecorr match --category``
load it.
"""
from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args) -> int:
    from cyclecorr.checkpoint import shipped_models  # on use: loads torch, not for --help

    models = shipped_models()
    if args.json:
        print(json.dumps([{**m, "file": str(m["file"]),
                           "card": str(m["card"]) if m["card"] else None} for m in models],
                         indent=1))
        return 0
    if not models:
        print("no shipped models in this installation")
        return 0
    rows = [("category", "file", "size", "model card")]
    for m in models:
        card = m["card"].name if m["card"] else "(none)"
        if m.get("title"):
            card += f": {m['title']}"
        if m.get("error"):
            card += f" [unreadable: {m['error']}]"
        rows.append((m["category"], m["file"].name, f"{m['size_bytes'] / 2 ** 20:.1f} MiB", card))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:>{w[2]}}  {r[3]}")
    folder = models[0]["file"].parent
    print(f"\n(in {folder}; load with Matcher.from_checkpoint(category=...) or "
          "cyclecorr match --category ...)")
    return 0
