"""``cyclecorr compare``: put the methods of one or more ``cyclecorr evaluate`` result files side
by side and compare every pair of them on every keypoint set they share (paired bootstrap,
:mod:`cyclecorr.evaluate.stats`), without running anything again.

    cyclecorr compare runs/eval_baselines/results.json runs/eval_new/results.json --out DIR \\
        [--methods siftflow,new] [--sets pf-willow] [--unit image|pair] [--draws N]

Typical use: SIFT flow takes minutes per set, a model seconds; evaluate the baselines once and
compare each new model's file against them. Methods are matched by row name; a name that means
two different things in two files (another checkpoint, another size) is refused, as are sets
evaluated on different pairs (``--limit``). Writes ``DIR/results.json`` and ``DIR/results.md``.

One training run of a recipe is one draw of its training noise. When a recipe was trained several
times (seeds), name its runs as a group and compare groups by their means, with the runs and the
evaluation images redrawn together (:func:`cyclecorr.evaluate.stats.replicate_bootstrap`)::

    cyclecorr compare runs/eval_seeds/results.json --out DIR \\
        --replicates bent='bent*' --replicates ctrl='ctrl*' --paired-runs
"""
from __future__ import annotations

import argparse
import json
from fnmatch import fnmatchcase
from pathlib import Path

from cyclecorr.commands._checks import check_out_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", help="results.json files of cyclecorr evaluate")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--methods", default=None,
                        help="comma list of row names, in the order to compare (default: all, "
                             "in the order met)")
    parser.add_argument("--sets", default=None, help="comma list of sets (default: all shared)")
    parser.add_argument("--unit", default="auto", choices=("auto", "image", "pair"),
                        help="what the bootstrap draws (default: images where pairs are named "
                             "by them)")
    parser.add_argument("--draws", type=int, default=10000, help="bootstrap draws (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--replicates", action="append", default=[], metavar="GROUP=ROWS",
                        help="a method trained several times: GROUP=ROW+ROW+… (row names or "
                             "shell patterns, e.g. bent=bent* or sift=siftflow); repeat for each "
                             "group. Groups are compared by means over their runs with runs and "
                             "images redrawn together (and the per-row comparisons are then made "
                             "only among --methods when given)")
    parser.add_argument("--paired-runs", action="store_true",
                        help="run k of each replicate group shares a seed (its batches) with run "
                             "k of the others: redraw them together")


def _identity(desc: dict) -> tuple:
    """What makes two rows of the same name the same method (a refinement's and the two
    directions' settings too)."""
    post = {k: desc[k] for k in ("refine", "bidirectional") if desc.get(k) is not None}
    return (desc.get("kind"), desc.get("size"), desc.get("sha256"), desc.get("name"),
            json.dumps(post, sort_keys=True) if post else None)


def merge_results(files: list[str | Path]) -> dict:
    """One results dict holding every method of ``files`` (first occurrence of each row name);
    raises ``ValueError`` naming the file when a row name is another method there, or a set was
    evaluated on other pairs."""
    merged: dict = {"methods": {}, "sets": {}, "sources": []}
    pairs_of: dict[str, object] = {}
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise FileNotFoundError(f"results file not found: {path}")
        try:
            res = json.loads(path.read_text())
        except (OSError, ValueError) as e:  # JSON and UTF-8 decoding errors are ValueErrors
            raise ValueError(f"{path}: not a readable results.json ({e})") from e
        if not isinstance(res, dict) or not isinstance(res.get("sets"), dict):
            raise ValueError(f"{path}: no 'sets' (not written by cyclecorr evaluate)")
        merged["sources"].append({"file": str(path), "command": res.get("command")})
        for name, desc in (res.get("methods") or {}).items():
            old = merged["methods"].get(name)
            if old is not None and _identity(old) != _identity(desc):
                raise ValueError(f"{path}: row {name!r} is another method than in an earlier file "
                                 f"({_identity(desc)} vs {_identity(old)}); rename it with "
                                 "NAME=PATH when evaluating")
            merged["methods"].setdefault(name, desc)
        for set_name, by_method in res["sets"].items():
            for name, r in by_method.items():
                if not isinstance(r, dict):
                    continue
                n = r.get("n_pairs")
                seen = pairs_of.setdefault(set_name, n)
                if seen != n:
                    raise ValueError(f"{path}: set {set_name} has {n} pairs for {name!r}, an "
                                     f"earlier file {seen} (another --limit?)")
                merged["sets"].setdefault(set_name, {}).setdefault(name, r)
    return merged


def _choose(what: str, spec: str | None, have: list[str]) -> list[str]:
    """The comma list ``spec`` (all of ``have`` when None), each checked to be in ``have``."""
    if not spec:
        return have
    wanted = [x.strip() for x in spec.split(",") if x.strip()]
    missing = [x for x in wanted if x not in have]
    if missing:
        raise ValueError(f"{what} {missing} are in none of the files (have {have})")
    return wanted


def parse_replicates(specs: list[str], have: list[str]) -> dict[str, list[str]]:
    """``["bent=bent*", "ctrl=ctrl1+ctrl2"]`` → ``{"bent": [rows matching bent*, in the order
    met], "ctrl": ["ctrl1", "ctrl2"]}``; each item must match a row of ``have``."""
    groups: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, rows = spec.partition("=")
        name = name.strip()
        if not sep or not name or not rows.strip():
            raise ValueError(f"--replicates {spec!r}: expected GROUP=ROW+ROW+… (e.g. bent=bent*)")
        if name in groups:
            raise ValueError(f"--replicates: group {name!r} given twice")
        chosen: list[str] = []
        for item in _split_rows(rows, have):
            hits = [m for m in have if fnmatchcase(m, item)]
            if not item or not hits:
                raise ValueError(f"--replicates {spec!r}: {item!r} matches none of the rows "
                                 f"{have}")
            chosen += [m for m in hits if m not in chosen]
        groups[name] = chosen
    return groups


def _split_rows(rows: str, have: list[str]) -> list[str]:
    """``ROW+ROW+…`` → items; row names may hold ``+`` themselves (``model+siftflow``): from each
    position the longest run of ``+``-joined pieces that matches a row is one item."""
    parts = [x.strip() for x in rows.split("+")]
    items, i = [], 0
    while i < len(parts):
        j = next((j for j in range(len(parts), i + 1, -1)
                  if any(fnmatchcase(m, "+".join(parts[i:j])) for m in have)), i + 1)
        items.append("+".join(parts[i:j]))
        i = j
    return items


def run(args) -> int:
    # on use: cyclecorr.evaluate loads torch; `cyclecorr --help` imports every command module
    from cyclecorr.evaluate.report import write_results
    from cyclecorr.evaluate.stats import compare_replicates, compare_set

    check_out_dir(args.out)
    if args.draws < 1:
        raise ValueError(f"--draws must be ≥ 1, got {args.draws}")
    merged = merge_results(args.results)
    chosen = _choose("methods", args.methods, list(merged["methods"]))
    replicates = parse_replicates(args.replicates, list(merged["methods"]))
    names = list(chosen)
    for rows in replicates.values():  # the groups' rows are shown with the others
        names += [m for m in rows if m not in names]
    sets = _choose("sets", args.sets, list(merged["sets"]))
    out = {"command": "cyclecorr compare " + " ".join(str(f) for f in args.results)
           + f" --out {args.out}" + (f" --methods {args.methods}" if args.methods else "")
           + (f" --sets {args.sets}" if args.sets else "")
           + "".join(f" --replicates {r}" for r in args.replicates)
           + (" --paired-runs" if args.paired_runs else "")
           + f" --unit {args.unit} --draws {args.draws} --seed {args.seed}",
           "seed": args.seed, "sources": merged["sources"],
           "methods": {m: merged["methods"][m] for m in names}, "sets": {}, "comparisons": {}}
    if replicates:
        out["replicates"] = replicates
        out["replicate_comparisons"] = {}
    # with replicate groups, row-by-row comparisons only among the rows asked for by name
    pairwise = names if not replicates else (chosen if args.methods else [])
    for s in sets:
        rows = {m: merged["sets"][s][m] for m in names if m in merged["sets"][s]}
        out["sets"][s] = rows
        comp = compare_set(s, {m: rows[m] for m in pairwise if m in rows}, n_boot=args.draws,
                           seed=args.seed, unit=args.unit)
        if comp:
            out["comparisons"][s] = comp
        if replicates:
            rep = compare_replicates(s, rows, replicates, paired_runs=args.paired_runs,
                                     unit=args.unit, n_boot=args.draws, seed=args.seed)
            if rep:
                out["replicate_comparisons"][s] = rep
    if not out["comparisons"] and not out.get("replicate_comparisons"):
        raise ValueError("no set has per-pair keypoint results for two of the methods "
                         "(files from before per-pair records, or non-keypoint sets only)")
    j, md = write_results(out, args.out)
    print(f"cyclecorr compare: wrote {j} and {md}")
    print(md.read_text())
    return 0
