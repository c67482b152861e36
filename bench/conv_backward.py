"""Benchmark: where a 3×3 convolution's backward time goes on this CPU, and two prototypes of the
weight gradient measured against oneDNN's (not used by the package; docs/RESULTS.md, "Two more
routes").

For layer shapes of the paper network at a cycle step's batch (channels-last, float32) it prints
GFLOP/s of: oneDNN's forward, its data gradient and its weight gradient (``aten.
convolution_backward`` with one output at a time), then the weight gradient as

- ``shifted``: nine GEMMs of the output gradient against the input laid out as zero-padded,
  flattened rows, each shifted by one tap (no im2col copy);
- ``im2col-cached``: im2col of ``--chunk`` samples at a time (kept in cache) and one ``addmm_``.

Each prototype is checked against oneDNN's gradient first (relative error < 1e-4).

    python bench/conv_backward.py [--threads 2] [--batch 40] [--chunk 1]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

SHAPES = [(64, 64, 64), (128, 128, 32), (32, 32, 128), (256, 256, 16), (512, 512, 8)]


def best_time(fn, reps=3) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def onednn(go, x, w, mask):
    return torch.ops.aten.convolution_backward(go, x, w, None, [1, 1], [1, 1], [1, 1], False,
                                               [0, 0], 1, mask)


def wgrad_shifted(x, go):
    """dW (O, C, 3, 3) of a 3×3, stride-1, padding-1 convolution: per tap one GEMM over rows of
    width W + 2, with the output gradient zero in the two padding columns of each row."""
    n, c, h, w = x.shape
    o = go.shape[1]
    wp, block = w + 2, (h + 2) * (w + 2) + 2
    xa = x.new_zeros(n + 1, block, c)  # one spare block: the last taps read past the end
    xa[:n, :(h + 2) * wp].view(n, h + 2, wp, c)[:, 1:h + 1, 1:w + 1] = x.permute(0, 2, 3, 1)
    ga = go.new_zeros(n, block, o)
    ga[:, :h * wp].view(n, h, wp, o)[:, :, :w] = go.permute(0, 2, 3, 1)
    xf, gf = xa.view(-1, c), ga.view(n * block, o).t()
    out = x.new_empty(3, 3, o, c)
    for kh in range(3):
        for kw in range(3):
            off = kh * wp + kw
            torch.mm(gf, xf[off:off + n * block], out=out[kh, kw])
    return out.permute(2, 3, 0, 1)


def wgrad_im2col_cached(x, go, chunk):
    """dW by im2col (N H W, 9 C) built ``chunk`` samples at a time, accumulated by ``addmm_``."""
    n, c, h, w = x.shape
    o = go.shape[1]
    xp = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)
    g = go.permute(0, 2, 3, 1)
    out = x.new_zeros(o, 9 * c)
    for s in range(0, n, chunk):
        xs = xp[s:s + chunk]
        k = xs.shape[0]
        cols = x.new_empty(k, h, w, 9, c)
        for kh in range(3):
            for kw in range(3):
                cols[:, :, :, kh * 3 + kw] = xs[:, kh:kh + h, kw:kw + w]
        out.addmm_(g[s:s + chunk].reshape(k * h * w, o).t(), cols.view(k * h * w, 9 * c))
    return out.view(o, 3, 3, c).permute(0, 3, 1, 2)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--batch", type=int, default=40, help="images per convolution")
    ap.add_argument("--chunk", type=int, default=1, help="samples per im2col block")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    a = torch.randn(2048, 2048)
    mm = 2 * 2048 ** 3 / best_time(lambda: a @ a)
    print(f"threads {torch.get_num_threads()}, batch {args.batch}; matmul {mm / 1e9:.1f} GFLOP/s")
    for c, o, h in SHAPES:
        cl = torch.channels_last
        x = torch.randn(args.batch, c, h, h).to(memory_format=cl)
        w = torch.randn(o, c, 3, 3).to(memory_format=cl)
        go = torch.randn(args.batch, o, h, h).to(memory_format=cl)
        flops = 2 * args.batch * o * c * 9 * h * h
        ref = onednn(go, x, w, [False, True, False])[1]
        for name, fn in (("shifted", lambda: wgrad_shifted(x, go)),
                         ("im2col-cached", lambda: wgrad_im2col_cached(x, go, args.chunk))):
            err = float((fn() - ref).abs().max() / ref.abs().max())
            if err > 1e-4:
                raise SystemExit(f"{name} weight gradient differs from oneDNN's: {err:.1e}")
        rate = {
            "forward": best_time(lambda: F.conv2d(x, w, padding=1)),
            "data grad": best_time(lambda: onednn(go, x, w, [True, False, False])),
            "weight grad": best_time(lambda: onednn(go, x, w, [False, True, False])),
            "shifted": best_time(lambda: wgrad_shifted(x, go)),
            "im2col-cached": best_time(lambda: wgrad_im2col_cached(x, go, args.chunk)),
        }
        wg = rate["weight grad"]
        print(f"{c:>3}->{o:<3} at {h:>3}px: " + ", ".join(
            f"{k} {flops / t / 1e9:.1f}" for k, t in rate.items())
            + f" GFLOP/s; prototypes / oneDNN weight grad: shifted {wg / rate['shifted']:.2f}x, "
            f"im2col-cached {wg / rate['im2col-cached']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
