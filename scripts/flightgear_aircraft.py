"""Collect the FlightGear AI aircraft into one folder of links, for ``cyclecorr prepare --cad``.

Debian's ``flightgear-data-ai`` keeps each aircraft in ``AI/Aircraft/<name>/Models/`` beside
light flares, light cones, banners, refuelling probes and other props. This keeps, per
``Models/`` folder, the largest ``.ac`` file (the aircraft), drops files whose name says they
are not aircraft (``--exclude``), checks that each loads (single planes and broken files are
refused by :func:`cyclecorr.render.load_mesh`) and links the rest as
``OUT/flightgear/<name>.ac`` (the ``flightgear`` folder name selects the FlightGear frame, nose
towards −x; textures are looked up around the link's target too).

    python scripts/flightgear_aircraft.py --root /usr/share/games/flightgear/AI/Aircraft \\
        --out runs/cad_flightgear
    cyclecorr prepare --category aeroplane --cad runs/cad_flightgear …
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_EXCLUDE = ("balloon", "tux", "bomb", "light", "flare", "banner", "probe", "refuel",
                   "tank", "exhaust", "shadow", "cone")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True,
                   help="the AI/Aircraft folder of a FlightGear data installation")
    p.add_argument("--out", type=Path, required=True, help="folder for the links (created)")
    p.add_argument("--exclude", nargs="*", default=list(DEFAULT_EXCLUDE),
                   help="skip files whose name (lower case) contains one of these")
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from cyclecorr.render import load_mesh

    if not args.root.is_dir():
        print(f"not a folder: {args.root}", file=sys.stderr)
        return 2
    dest = args.out / "flightgear"
    dest.mkdir(parents=True, exist_ok=True)
    kept, skipped = [], []
    for models in sorted(args.root.glob("*/Models")):
        acs = [f for f in models.glob("*.ac")
               if not any(x in f.name.lower() for x in args.exclude)]
        if not acs:
            continue
        f = max(acs, key=lambda x: x.stat().st_size)
        try:
            load_mesh(f)
        except (ValueError, OSError) as e:
            skipped.append(f"{f}: {str(e).splitlines()[0][:160]}")
            continue
        link = dest / f"{models.parent.name}.ac"
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(f.resolve(), link)
        kept.append(link)
    print(f"linked {len(kept)} aircraft into {dest}; skipped {len(skipped)}")
    for s in skipped:
        print(f"  skipped {s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
