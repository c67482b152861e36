"""Benchmark: the cost-volume network's CPU kernels against their PyTorch forms, in one run.

For the shapes of one cycle step of the cost-volume network (``--pairs`` decoded pairs; the
project's recipe decodes 6 pairs per quartet, 6 quartets: 36) it times, forward alone and forward
plus backward, median of ``--reps``:

- the local correlation (:mod:`cyclecorr._corr`): the numba kernel (what a CPU runs), the tiled
  matrix products (what other devices run) and one multiply-and-sum per displacement, at the
  three pyramid levels (1/8: 64 channels r 2, 1/4: 32 r 3, 1/2: 16 r 1) and for the 8 SIFT cell
  channels (forward only: they carry no gradient), in float32 and bfloat16;
- the convex up-sampling (:func:`cyclecorr.costvol.convex_upsample`): the numba kernel against
  :func:`cyclecorr.costvol.convex_upsample_reference` (float32 flow and logit, 2× at 1/2).

Each row prints the milliseconds and the PyTorch form's time over the kernel's (the speed-up);
each kernel's largest difference from the float64 loop (or the PyTorch form) is printed.

    python bench/kernels.py [--threads 1] [--pairs 36] [--reps 5]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cyclecorr._corr import correlation, correlation_reference, correlation_tiled  # noqa: E402
from cyclecorr.costvol import convex_upsample, convex_upsample_reference  # noqa: E402

# (name, side at 128×128 input, channels, radius, with gradient)
LEVELS = [("1/8 learned", 16, 64, 2, True), ("1/4 learned", 32, 32, 3, True),
          ("1/2 learned", 64, 16, 1, True), ("1/4 SIFT cells", 32, 8, 3, False),
          ("1/8 SIFT cells", 16, 8, 2, False)]


def median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * sorted(times)[len(times) // 2]


def _run(op, args, backward: bool):
    def go():
        leaves = [a.detach().requires_grad_(backward) for a in args[:2]]
        out = op(*leaves, *args[2:])
        if backward:
            out.float().square().sum().backward()
    return go


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--pairs", type=int, default=36)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = args.pairs
    rows = []
    print(f"threads {args.threads}, {n} pairs; ms (median of {args.reps}); speed-up = PyTorch "
          f"form / numba kernel")
    for dtype in (torch.float32, torch.bfloat16):
        for name, side, c, r, grad in LEVELS:
            a, b = (torch.randn(n, c, side, side).to(dtype).contiguous(
                memory_format=torch.channels_last) for _ in range(2))
            ref = correlation_reference(a.double(), b.double(), r)
            err = {k: float((f(a, b, r).double() - ref).abs().max())
                   for k, f in (("numba", correlation), ("tiled", correlation_tiled))}
            for backward in ((False, True) if grad else (False,)):
                t = {k: median_ms(_run(f, (a, b, r), backward), args.reps) for k, f in
                     (("numba", correlation), ("tiled", correlation_tiled),
                      ("loop", correlation_reference))}
                row = {"op": "correlation", "level": name, "dtype": str(dtype)[6:],
                       "pass": "fwd+bwd" if backward else "fwd", **t,
                       "max_err": err["numba"], "max_err_tiled": err["tiled"]}
                rows.append(row)
                up = {k: t[k] / t["numba"] for k in ("tiled", "loop")}
                print(f"correlation {name:15s} {row['dtype']:9s} {row['pass']:8s} numba "
                      f"{t['numba']:7.2f}  tiled {t['tiled']:7.2f} ({up['tiled']:4.1f}×)  loop "
                      f"{t['loop']:7.2f} ({up['loop']:4.1f}×)  max err {err['numba']:.1e} (tiled "
                      f"{err['tiled']:.1e})")
    x = torch.randn(n, 3, 64, 64)
    m = torch.randn(n, 36, 64, 64).bfloat16().contiguous(memory_format=torch.channels_last)
    err = float((convex_upsample(x, m, 2) - convex_upsample_reference(x, m, 2)).abs().max())
    for backward in (False, True):
        t = {k: median_ms(_run(f, (x, m, 2), backward), args.reps) for k, f in
             (("numba", convex_upsample), ("torch", convex_upsample_reference))}
        row = {"op": "convex_upsample", "pass": "fwd+bwd" if backward else "fwd", **t,
               "max_err": err}
        rows.append(row)
        print(f"convex up-sampling ×2, 64→128, bf16 mask {row['pass']:8s} numba {t['numba']:7.2f}"
              f"  torch {t['torch']:7.2f} ({t['torch'] / t['numba']:4.1f}×)  max err {err:.1e}")
    return {"threads": args.threads, "pairs": n, "rows": rows}


if __name__ == "__main__":
    main()
