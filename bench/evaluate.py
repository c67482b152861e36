"""Benchmark of evaluation speed (prints measured numbers and ratios; no assertions).

1. Matcher throughput at 128×128 on this machine's CPU (pairs/s, batched), for variants of the
   forward pass: plain ``torch.no_grad`` (the baseline), ``torch.inference_mode``,
   channels-last memory format, thread count, bf16 autocast, ``torch.compile``; target ≥ 60
   pairs/s.
2. Wall time of a full PF-WILLOW evaluation (900 pairs) with the network alone, zero flow, and
   SIFT flow (``--skip-siftflow`` to leave the slow one out, ``--siftflow-pairs N`` to time N
   pairs and extrapolate).

    .venv/bin/python bench/evaluate.py [--model PATH] [--batch 32] [--seconds 3] [--compile]

``--arch costvol`` instead compares the cost-volume network (:mod:`cyclecorr.costvol`, random
weights, or ``--model``) with the paper network at width 1/2 in the same interleaved rounds:
channels-last, inference mode, float32 and bf16 autocast, each at batches 8, 16 and 32; it prints
both networks' best pairs/s, their ratio and the cost-volume network's targets (≥ 40 pairs/s
float32, ≥ 60 bf16 at 128×128).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cyclecorr.model import CorrespondenceNet, build_network  # noqa: E402


def _net(model: str | None) -> torch.nn.Module:
    if model:
        from cyclecorr.checkpoint import load_model

        return load_model(model)[0]
    torch.manual_seed(0)
    return build_network().eval()


def throughput(fn, batch: int, seconds: float) -> float:
    """Pairs per second of ``fn()`` (one call = ``batch`` pairs), after 1 warm-up call; at least
    2 timed calls."""
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 2:
        fn()
        n += 1
    return n * batch / (time.perf_counter() - t0)


def bench_forward(args) -> dict:
    """Every variant is timed in ``--rounds`` short windows, interleaved round-robin, so that load
    from other processes hits all variants alike; the best and the median window are reported."""
    net = _net(args.model)
    b, s = args.batch, net.config.image_size
    src = torch.rand(b, 3, s, s)
    tgt = torch.rand(b, 3, s, s)
    net_cl = _net(args.model).to(memory_format=torch.channels_last)
    cl = dict(mf=torch.channels_last)

    def make(net_, mode, batch=b, mf=torch.contiguous_format, autocast=False, threads=None):
        x, y = src[:batch].contiguous(memory_format=mf), tgt[:batch].contiguous(memory_format=mf)
        ctx = torch.inference_mode if mode == "inference" else torch.no_grad

        def f():
            old = torch.get_num_threads()
            if threads:
                torch.set_num_threads(threads)
            try:
                with ctx(), (torch.autocast("cpu", dtype=torch.bfloat16) if autocast
                             else nullcontext()):
                    out = net_(x, y)
                    return out["flow"].float(), out["matchability"].float()
            finally:
                torch.set_num_threads(old)
        return f, batch

    variants = {
        "plain no_grad (baseline)": make(net, "no_grad"),
        "inference_mode": make(net, "inference"),
        "inference_mode + channels_last": make(net_cl, "inference", mf=torch.channels_last),
        "inference_mode + channels_last + bf16 autocast": make(net_cl, "inference",
                                                               mf=torch.channels_last,
                                                               autocast=True),
        "inference_mode + channels_last + bf16 autocast, batch 16 (--precision bf16)": make(
            net_cl, "inference", 16, mf=torch.channels_last, autocast=True),
        "inference_mode + channels_last, batch 1": make(net_cl, "inference", 1, **cl),
        "inference_mode + channels_last, batch 4": make(net_cl, "inference", 4, **cl),
        "inference_mode + channels_last, batch 8": make(net_cl, "inference", 8, **cl),
        "inference_mode + channels_last, batch 16": make(net_cl, "inference", 16, **cl),
        "no_grad, contiguous, batch 8": make(net, "no_grad", 8),
    }
    if torch.get_num_threads() > 1:
        variants["inference_mode + channels_last, 1 thread"] = make(
            net_cl, "inference", mf=torch.channels_last, threads=1)
        variants["inference_mode + channels_last, batch 8, 1 thread"] = make(
            net_cl, "inference", 8, mf=torch.channels_last, threads=1)
    if args.compile:
        try:
            t0 = time.perf_counter()
            comp = torch.compile(net_cl)
            fc = make(comp, "inference", mf=torch.channels_last)
            fc[0]()
            print(f"torch.compile warm-up: {time.perf_counter() - t0:.1f} s")
            variants["torch.compile + inference_mode + channels_last"] = fc
        except Exception as e:  # compile needs a C++ toolchain
            print(f"torch.compile failed: {type(e).__name__}: {str(e)[:200]}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {b}, {s}x{s}, "
          f"cpu count {os.cpu_count()}, {net.flops_per_pair() / 1e9:.2f} GFLOP/pair, "
          f"{args.rounds} interleaved rounds of {args.seconds:g} s per variant")
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for k, (f, bs) in variants.items():
            samples[k].append(throughput(f, bs, args.seconds))
    res = {k: (max(v), sorted(v)[len(v) // 2]) for k, v in samples.items()}
    base_best, base_med = res["plain no_grad (baseline)"]
    print(f"\n{'variant':<52} {'best':>7} {'median':>7} {'ratio(best)':>11} {'ratio(med)':>10}")
    for k, (best, med) in res.items():
        print(f"{k:<52} {best:7.1f} {med:7.1f} {best / base_best:11.2f} {med / base_med:10.2f}")
    top = max(res, key=lambda k: res[k][0])
    print(f"fastest: {top}: {res[top][0]:.1f} pairs/s (target >= 60: "
          f"{'met' if res[top][0] >= 60 else 'NOT met'} on this machine)")
    return res


def bench_costvol(args) -> dict:
    """The cost-volume network beside the paper network at width 1/2, interleaved (see the
    module doc); returns ``{(network, precision): (best pairs/s, median, best batch)}``."""
    from cyclecorr.costvol import CostVolumeNet

    if args.model:
        from cyclecorr.checkpoint import load_model

        cv = load_model(args.model)[0]
    else:
        torch.manual_seed(0)
        cv = CostVolumeNet().eval()
    torch.manual_seed(0)
    nets = {"paper (width 0.5)": CorrespondenceNet(width=0.5).eval(), "costvol": cv.eval()}
    s = cv.config.image_size
    for n in nets.values():
        n.set_input_size(s)
        n.to(memory_format=torch.channels_last)
    batches = sorted({8, 16, 32, args.batch} if args.batch > 2 else {args.batch})
    big = max(batches)
    g = torch.Generator().manual_seed(0)
    src = torch.rand(big, 3, s, s, generator=g).contiguous(memory_format=torch.channels_last)
    tgt = torch.rand(big, 3, s, s, generator=g).contiguous(memory_format=torch.channels_last)

    def make(net, bs, bf16):
        x, y = src[:bs], tgt[:bs]

        def f():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                        enabled=bf16):
                out = net(x, y)
                return out["flow"].float(), out["matchability"].float()
        return f

    keys = [(name, prec, bs) for name in nets for prec in ("float32", "bf16") for bs in batches]
    samples: dict = {k: [] for k in keys}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {s}x{s}, cpu count "
          f"{os.cpu_count()}, channels-last, inference mode, {args.rounds} interleaved rounds of "
          f"{args.seconds:g} s per variant")
    for name, net in nets.items():
        print(f"  {name}: {net.flops_per_pair() / 1e9:.3f} GFLOP/pair")
    for _ in range(args.rounds):
        for k in keys:
            name, prec, bs = k
            samples[k].append(throughput(make(nets[name], bs, prec == "bf16"), bs, args.seconds))
    res = {}
    print(f"\n{'network':<20} {'precision':<9} {'batch':>5} {'best':>7} {'median':>7}")
    for name in nets:
        for prec in ("float32", "bf16"):
            rows = [(max(samples[(name, prec, bs)]),
                     sorted(samples[(name, prec, bs)])[len(samples[(name, prec, bs)]) // 2], bs)
                    for bs in batches]
            for best, med, bs in rows:
                print(f"{name:<20} {prec:<9} {bs:>5} {best:7.1f} {med:7.1f}")
            res[(name, prec)] = max(rows)
    print()
    for prec, target in (("float32", 40), ("bf16", 60)):
        (pb, pm, pbs), (cb, cm, cbs) = res[("paper (width 0.5)", prec)], res[("costvol", prec)]
        print(f"{prec}: costvol {cb:.1f} pairs/s (batch {cbs}), paper width 0.5 {pb:.1f} (batch "
              f"{pbs}): ratio {cb / pb:.2f} (medians {cm / pm:.2f}); target >= {target}: "
              f"{'met' if cb >= target else 'NOT met'} on this machine")
    return res


def bench_pf_willow(args) -> None:
    from cyclecorr._paths import shared_data_dir
    from cyclecorr.evaluate import (
        NetworkMethod,
        SiftFlowMethod,
        ZeroFlow,
        evaluate_pck_pf_willow,
        load_pf_willow,
    )

    root = shared_data_dir()
    if root is None:
        print("PF-WILLOW timing skipped: shared data not found")
        return
    t0 = time.perf_counter()
    by_class = load_pf_willow(root)
    t_load = time.perf_counter() - t0
    print(f"\nPF-WILLOW: {sum(map(len, by_class.values()))} images loaded in {t_load:.1f} s")
    net = _net(args.model)
    for m in (ZeroFlow(), NetworkMethod(net, {}, name="model", device="cpu")):
        r = evaluate_pck_pf_willow(m, samples_by_class=by_class, batch_size=args.batch)
        print(f"  {m.name:<10} {r['n_pairs']} pairs: {r['seconds']:.1f} s "
              f"({r['n_pairs'] / r['seconds']:.1f} pairs/s), PCK@0.1 "
              f"{r['pck']['mean_over_groups']['per_pair']['0.1']:.3f}")
    if args.skip_siftflow:
        print("  siftflow: skipped (--skip-siftflow)")
        return
    sf = SiftFlowMethod()
    if args.siftflow_pairs:
        one = {c: v for c, v in by_class.items()}
        pairs_per_class = 90
        # time the first N pairs of the first class and extrapolate to 900
        from cyclecorr.evaluate import evaluate_keypoint_transfer

        cls = next(iter(one))
        pairs = [(i, j) for i in range(10) for j in range(10) if i != j][:args.siftflow_pairs]
        r = evaluate_keypoint_transfer(sf, one[cls], pairs=pairs, reference="keypoint-box")
        per = r["seconds"] / len(pairs)
        print(f"  siftflow   {len(pairs)} pairs timed: {per:.2f} s/pair -> full PF-WILLOW "
              f"(900 pairs) ≈ {per * pairs_per_class * len(one) / 60:.1f} min (extrapolated)")
    else:
        r = evaluate_pck_pf_willow(sf, samples_by_class=by_class, batch_size=args.batch,
                                   progress=True)
        print(f"  siftflow   {r['n_pairs']} pairs: {r['seconds']:.1f} s, PCK@0.1 "
              f"{r['pck']['mean_over_groups']['per_pair']['0.1']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default=None, help="model file (default: a random paper network)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=1.5, help="timing window per variant")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--compile", action="store_true", help="also try torch.compile")
    ap.add_argument("--arch", choices=("paper", "costvol"), default="paper",
                    help="costvol: compare the cost-volume network with the paper network at "
                         "width 1/2 (see above) instead of the variant table")
    ap.add_argument("--skip-pf-willow", action="store_true")
    ap.add_argument("--skip-siftflow", action="store_true")
    ap.add_argument("--siftflow-pairs", type=int, default=0,
                    help="time SIFT flow on N pairs and extrapolate (0 = run all 900)")
    args = ap.parse_args()
    if args.arch == "costvol":
        bench_costvol(args)
        return
    bench_forward(args)
    if not args.skip_pf_willow:
        bench_pf_willow(args)


if __name__ == "__main__":
    main()
