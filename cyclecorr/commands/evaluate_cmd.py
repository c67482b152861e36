"""``cyclecorr evaluate``: run methods (baselines and models) on benchmark sets and write
``DIR/results.json`` (every number with its protocol) and ``DIR/results.md`` (tables).

    cyclecorr evaluate --model PATH|shipped --methods zero,siftflow,model \\
        --sets flowweb-car,pf-willow,tss,synthetic-car --out DIR [--data ROOT] [--limit N]

Methods: ``zero`` (zero flow), ``siftflow`` (SIFT flow, published parameters), ``model`` (the
``--model`` file), ``NAME=PATH`` (another model file under a row name, e.g.
``stage1=runs/stage1/model.safetensors``); a network's spec may end in ``+siftflow[:L:W[:S]]``
(its flow refined by SIFT flow) and then ``+bidir`` (matched both ways), e.g.
``model+siftflow+bidir``.
Sets: ``flowweb-car``, ``pf-willow``, ``tss``, ``synthetic-car``, ``synthetic-chair``,
``synthetic-aeroplane`` (same-model and cross-model PASCAL3D+ render pairs), ``synth-kp-car``,
``synth-kp-chair``, ``synth-kp-aeroplane`` (the cross-instance keypoint benchmark: renders of two
different PASCAL3D+ models, :func:`cyclecorr.evaluate.datasets.make_synthetic_pairs` with
``mode="cross"``), ``shape2image-car`` (a retrieved CAD render's mask carried onto the FlowWeb
cars), ``embedding-car`` (the feature-embedding picture; needs a model), ``pascal3d-car``,
``pascal3d-chair``, ``pascal3d-aeroplane`` (keypoint transfer on PASCAL3D+'s ImageNet photos, a
real-photo set outside the evaluation sets for choosing settings; needs ``--pascal3d DIR``).
``--limit N``: first N images per set (per class for PF-WILLOW; N pairs for TSS/synthetic).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from cyclecorr._runtime import PRECISIONS, keep_freed_memory
from cyclecorr.commands._checks import check_device, check_out_dir
from cyclecorr.data.holdout import EVALUATION_ONLY, TRAINING_ALLOWED

SETS = ("flowweb-car", "pf-willow", "tss", "synthetic-car", "synthetic-chair",
        "synthetic-aeroplane", "synth-kp-car", "synth-kp-chair", "synth-kp-aeroplane",
        "shape2image-car", "embedding-car", "pascal3d-car", "pascal3d-chair",
        "pascal3d-aeroplane")
#: rendered pairs per set when --synthetic-pairs is not given; drawn photo pairs of pascal3d-*
DEFAULT_PAIRS = {"synthetic": 40, "synth-kp": 200, "pascal3d": 500}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="shipped",
                        help="model file for the 'model' method, 'shipped' (default: the car "
                             "model) or shipped:CATEGORY (`cyclecorr models` lists them)")
    parser.add_argument("--methods", default="zero,siftflow,model",
                        help="comma list: zero, siftflow, model, NAME=PATH (PATH may be "
                             "shipped:CATEGORY); a network's spec may end in +siftflow (refined "
                             "by SIFT flow) and then +bidir (matched both ways) "
                             "(default: %(default)s)")
    parser.add_argument("--sets", default="flowweb-car,pf-willow,tss",
                        help=f"comma list of {', '.join(SETS)}, or all (default: %(default)s)")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--data", default=None,
                        help="data root holding real/ and cad/ (default: the shared data folder)")
    parser.add_argument("--pascal3d", default=None, metavar="DIR",
                        help="the PASCAL3D+ release folder (Annotations/, Images/) for the "
                             "pascal3d-* sets")
    parser.add_argument("--limit", type=int, default=None,
                        help="quick run: first N images per set/class (N pairs for tss/synthetic)")
    parser.add_argument("--synthetic-pairs", type=int, default=None,
                        help="rendered pairs per synthetic set (default 40 for synthetic-*, "
                             "200 for synth-kp-*)")
    parser.add_argument("--seed", type=int, default=0, help="seed of synthetic pairs (default 0)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="pairs per forward pass (default 16: fastest on CPU)")
    parser.add_argument("--device", default="auto",
                        help="where the networks run: auto (default: cuda when available, else "
                             "cpu), cpu, cuda, cuda:1, …")
    parser.add_argument("--precision", default="float32", choices=PRECISIONS,
                        help="the networks' inference precision (default float32, the protocol; "
                             "bf16: autocast, faster on CPUs with bf16 units; recorded in the "
                             "report)")
    parser.add_argument("--net-size", type=int, default=None,
                        help="run the networks at S×S (a multiple of 16; default: the size each "
                             "was trained at, 128 for the shipped model); baselines stay at 128. "
                             "Not the standard protocol: the report names each method's size")


def set_category(set_name: str) -> str | None:
    """The one object category a set shows (``"synth-kp-chair"`` → ``"chair"``); None for the
    sets of several categories (PF-WILLOW, TSS)."""
    if set_name in ("pf-willow", "tss"):
        return None
    return set_name.rsplit("-", 1)[-1]


def category_mismatches(methods, sets) -> list[str]:
    """A note for each network evaluated on a set of another category than it was trained on
    (e.g. the shipped car model on synth-kp-chair; ``shipped:chair`` names the chair model)."""
    notes = []
    for m in methods:  # baselines have no meta; a network's names its training configuration
        trained = (getattr(m, "meta", None) or {}).get("train_config", {}).get("category")
        for s in sets:
            cat = set_category(s)
            if trained and cat and cat != trained:
                notes.append(f"note: {m.name} was trained on {trained}s and {s} shows {cat}s "
                             f"(a shipped model of that category: shipped:{cat})")
    return notes


def _split(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def run(args) -> int:
    # on use: these load torch; `cyclecorr --help` imports every command module
    import torch

    from cyclecorr.evaluate import benchmarks as B
    from cyclecorr.evaluate import datasets as D
    from cyclecorr.evaluate.embedding_set import feature_embedding_pictures
    from cyclecorr.evaluate.methods import NetworkMethod, make_method
    from cyclecorr.evaluate.report import write_results
    from cyclecorr.evaluate.shape_transfer import build_template_bank, evaluate_shape_to_image
    from cyclecorr.evaluate.stats import compare_set

    sets = _split(args.sets)
    if sets == ["all"]:  # the pascal3d-* sets only where their data is given
        sets = [s for s in SETS if args.pascal3d or not s.startswith("pascal3d-")]
    bad = [s for s in sets if s not in SETS]
    if bad or not sets:
        raise ValueError(f"unknown set(s) {bad}; choose from {', '.join(SETS)}")
    if args.limit is not None and args.limit < 2:
        raise ValueError(f"--limit must be ≥ 2, got {args.limit}")
    specs = _split(args.methods)
    if not specs:
        raise ValueError("--methods is empty")
    if args.data is not None and not Path(args.data).is_dir():
        raise FileNotFoundError(f"data folder not found: {args.data}")
    p3d = [s for s in sets if s.startswith("pascal3d-")]
    if p3d and args.pascal3d is None:
        raise ValueError(f"{', '.join(p3d)} needs --pascal3d DIR (the PASCAL3D+ release folder "
                         "holding Annotations/ and Images/)")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be ≥ 1, got {args.batch_size}")
    if args.synthetic_pairs is not None and args.synthetic_pairs < 1:
        raise ValueError(f"--synthetic-pairs must be ≥ 1, got {args.synthetic_pairs}")
    if args.net_size is not None and (args.net_size < 16 or args.net_size % 16):
        raise ValueError(f"--net-size must be a positive multiple of 16, got {args.net_size}")
    check_out_dir(args.out)
    if check_device(args.device).type == "cpu":
        # the forward's large activations stay in the heap between batches instead of being
        # mapped and page-faulted in again (cyclecorr._runtime; results unchanged)
        keep_freed_memory()
    methods = [make_method(s, model=args.model, device=args.device, net_size=args.net_size,
                           precision=args.precision) for s in specs]
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"two methods share a row name: {names} (use NAME=PATH)")
    torch.manual_seed(args.seed)
    out = Path(args.out)
    cmd = (f"cyclecorr evaluate --model {args.model} --methods {args.methods} --sets {args.sets} "
           f"--out {args.out}" + (f" --data {args.data}" if args.data else "")
           + (f" --limit {args.limit}" if args.limit else "")
           + (f" --net-size {args.net_size}" if args.net_size else "")
           + (f" --precision {args.precision}" if args.precision != "float32" else "")
           + f" --seed {args.seed}")
    results = {"command": cmd, "seed": args.seed, "limit": args.limit,
               "methods": {m.name: m.describe() for m in methods}, "sets": {},
               "versions": {"torch": torch.__version__, "numpy": np.__version__}}
    print(f"cyclecorr evaluate: methods {names} on sets {sets}; writing to {out}")
    for line in category_mismatches(methods, sets):
        print(line, file=sys.stderr)
    lim = args.limit
    for set_name in sets:
        t0 = time.perf_counter()
        res = {}
        if set_name == "flowweb-car":
            samples = D.load_flowweb_car(args.data, limit=lim)
            for m in methods:
                res[m.name] = B.evaluate_flowweb_car(m, samples, batch_size=args.batch_size,
                                                     progress=True, seed=args.seed)
        elif set_name == "pf-willow":
            by_class = D.load_pf_willow(args.data, limit=lim)
            for m in methods:
                res[m.name] = B.evaluate_pck_pf_willow(m, samples_by_class=by_class, limit=lim,
                                                       batch_size=args.batch_size, progress=True)
                res[m.name]["protocol"]["seed"] = args.seed
        elif set_name == "tss":
            pairs = D.load_tss(args.data, limit=lim)
            for m in methods:
                res[m.name] = B.evaluate_tss(m, pairs, progress=True, seed=args.seed)
        elif set_name.startswith(("synthetic-", "synth-kp-")):
            cross = set_name.startswith("synth-kp-")
            cat = set_category(set_name)
            n = args.synthetic_pairs or DEFAULT_PAIRS["synth-kp" if cross else "synthetic"]
            n = min(n, lim) if lim else n
            pairs = D.make_synthetic_pairs(args.data, cat, n_pairs=n, seed=args.seed,
                                           progress=True, mode="cross" if cross else "mixed")
            gen = {"category": cat, "n_pairs": n, "seed": args.seed,
                   "models": "cad/pascal3d PASCAL3D+ CAD, even pairs same model, odd pairs "
                             "different models", "viewpoints": "azimuth U[0,360), target "
                             "azimuth +-U(0,45), elevation U[0,30], distance 2.5"}
            if cross:
                gen.update(
                    models=sorted({p.meta["model_a"] for p in pairs}
                                  | {p.meta["model_b"] for p in pairs}),
                    pairs="two different models per pair (ordered model pair uniform); "
                          "pair 'i-j#k' = models i, j; intervals resample models",
                    viewpoints=D.SYNTH_KP_VIEWPOINTS,
                    held_out=(f"evaluation-only: {EVALUATION_ONLY[cat]}" if cat in EVALUATION_ONLY
                              else f"not held out: {TRAINING_ALLOWED.get(cat, '')}"))
            for m in methods:
                res[m.name] = B.evaluate_synthetic(m, pairs, batch_size=args.batch_size,
                                                   progress=True, set_name=set_name,
                                                   seed=args.seed, generation=gen)
        elif set_name.startswith("pascal3d-"):
            samples, pairs = D.load_pascal3d_set(args.pascal3d, set_category(set_name),
                                                 DEFAULT_PAIRS["pascal3d"], seed=args.seed,
                                                 limit=lim)
            for m in methods:
                res[m.name] = B.evaluate_pascal3d(m, samples, pairs, set_name=set_name,
                                                  batch_size=args.batch_size, progress=True,
                                                  seed=args.seed)
        elif set_name == "shape2image-car":
            samples = D.load_flowweb_car(args.data, limit=lim)
            bank = build_template_bank(args.data, "car", progress=True)
            for m in methods:
                res[m.name] = evaluate_shape_to_image(m, samples, bank, progress=True,
                                                      seed=args.seed)
        elif set_name == "embedding-car":
            nets = [m for m in methods if isinstance(m, NetworkMethod)]
            if not nets:
                if args.sets.strip() == "all":
                    print("  embedding-car: skipped (needs a model method)")
                    continue
                raise ValueError("set embedding-car needs a model method (model or NAME=PATH)")
            for m in nets:
                res[m.name] = feature_embedding_pictures(m, args.data, out, n=lim or 120,
                                                         seed=args.seed)
        results["sets"][set_name] = res
        comparisons = compare_set(set_name, res, seed=args.seed)
        if comparisons:
            results.setdefault("comparisons", {})[set_name] = comparisons
        print(f"  {set_name}: done in {time.perf_counter() - t0:.1f} s")
        write_results(results, out)  # keep partial results if a later set fails
    j, md = write_results(results, out)
    print(f"cyclecorr evaluate: wrote {j} and {md}")
    print(md.read_text())
    return 0
