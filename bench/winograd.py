"""Benchmark: Winograd 3×3 convolution against oneDNN's direct convolution, forward + backward.

Run from the repository root: ``.venv/bin/python bench/winograd.py [--threads 2] [--reps 5]``.
A measured and rejected route to a faster training step (docs/RESULTS.md, "Benchmarks"):
F(2×2, 3×3) and F(4×4, 3×3) written in plain PyTorch as input and weight transforms around one
batched matmul per layer, autograd for the backward. It first checks both against ``F.conv2d``
(float64 ``gradcheck`` and the float32 relative error), then times forward + backward of each on the
paper network's 3×3 stride-1 layers at the batch a 10-quartet cycle step gives them (30 decoder
pairs, 40 encoder images), channels-last, best of ``--reps``, and prints each time with its
ratio to the direct convolution measured in the same run (> 1: Winograd is faster).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

# (batch, in channels, out channels, side): the step's 3×3 stride-1 layers with ≥ 64 channels
LAYERS = [(30, 512, 512, 8), (30, 512, 256, 8), (30, 256, 256, 16), (30, 128, 128, 32),
          (30, 64, 64, 64), (40, 128, 128, 16), (40, 64, 64, 32)]


def winograd_matrices(m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Bᵀ, G, Aᵀ)`` of F(m×m, 3×3) for m = 2 or 4 (Lavin & Gray 2016, points 0, ±1, ±2, ∞)."""
    if m == 2:
        bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
        g = [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]
        at = [[1, 1, 1, 0], [0, 1, -1, -1]]
    elif m == 4:
        bt = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
              [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
        g = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
             [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
        at = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
    else:
        raise ValueError(f"tile size m must be 2 or 4, got {m}")
    return tuple(torch.tensor(t, dtype=torch.float64) for t in (bt, g, at))


def winograd_conv3x3(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None,
                     m: int = 2) -> torch.Tensor:
    """``F.conv2d(x, w, b, padding=1)`` for 3×3 kernels by Winograd F(m×m, 3×3).

    ``x`` ``(N, C, H, W)`` (channels-last is the fast layout), ``w`` ``(O, C, 3, 3)``; any H, W
    (padded up to whole tiles and cropped back). The separable transforms are small matmuls over
    strided views; the ``(m + 2)²`` products are one batched matmul.
    """
    bt, g, at = (t.to(x.dtype) for t in winograd_matrices(m))
    a = m + 2
    n, c, h, wd = x.shape
    th, tw = -(-h // m), -(-wd // m)
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1 + tw * m - wd, 1, 1 + th * m - h))  # NHWC
    rows = torch.stack([xp[:, k:k + m * th:m] for k in range(a)])           # (a, N, th, Wp, C)
    r = (bt @ rows.reshape(a, -1)).reshape(a, n, th, xp.shape[2], c)
    cols = torch.stack([r[:, :, :, k:k + m * tw:m] for k in range(a)])      # (aw, ah, N, th, tw, C)
    v = (bt @ cols.reshape(a, -1)).reshape(a * a, n * th * tw, c)
    u = (g @ w @ g.T).permute(3, 2, 1, 0).reshape(a * a, c, -1)             # (aw·ah, C, O)
    prod = torch.bmm(v, u)                                                  # (a², P, O)
    o = prod.shape[-1]
    y = torch.matmul(at, prod.reshape(a, a, -1))                            # (aw, m_h, P·O)
    y = (at @ y.reshape(a, -1)).reshape(m, m, n, th, tw, o)                 # (m_w, m_h, …)
    y = y.permute(2, 3, 1, 4, 0, 5).reshape(n, th * m, tw * m, o)[:, :h, :wd]
    if b is not None:
        y = y + b
    return y.permute(0, 3, 1, 2)


def check() -> None:
    torch.manual_seed(0)
    for m in (2, 4):
        x = torch.randn(2, 5, 9, 10, dtype=torch.float64, requires_grad=True)
        w = torch.randn(7, 5, 3, 3, dtype=torch.float64, requires_grad=True)
        b = torch.randn(7, dtype=torch.float64, requires_grad=True)
        ok = torch.autograd.gradcheck(lambda x, w, b: winograd_conv3x3(x, w, b, m), (x, w, b))
        x32, w32 = torch.randn(4, 256, 16, 16), torch.randn(256, 256, 3, 3) / 48
        ref = F.conv2d(x32, w32, padding=1)
        rel = float((winograd_conv3x3(x32, w32, None, m) - ref).abs().max() / ref.abs().max())
        print(f"F({m}x{m},3x3): float64 gradcheck {'passed' if ok else 'FAILED'}, "
              f"float32 relative error {rel:.1e}")


def time_fwd_bwd(fn, x, w, b, reps: int) -> float:
    best = float("inf")
    for i in range(reps + 1):  # the first call warms up
        t = time.perf_counter()
        y = fn(x, w, b)
        y.backward(torch.ones_like(y))
        if i:
            best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    check()
    print(f"forward + backward, channels-last, {args.threads} threads, best of {args.reps} (ms; "
          "ratio = direct time / Winograd time)")
    print("| layer | direct | F(2x2,3x3) | F(4x4,3x3) |")
    print("|---|---|---|---|")
    for n, ci, co, s in LAYERS:
        x = torch.randn(n, ci, s, s).contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        w = torch.randn(co, ci, 3, 3).contiguous(memory_format=torch.channels_last)
        w.requires_grad_()
        b = torch.zeros(co, requires_grad=True)
        direct = time_fwd_bwd(lambda x, w, b: F.conv2d(x, w, b, padding=1), x, w, b, args.reps)
        cells = [f"{1e3 * direct:.0f}"]
        for m in (2, 4):
            t = time_fwd_bwd(lambda x, w, b, m=m: winograd_conv3x3(x, w, b, m), x, w, b, args.reps)
            cells.append(f"{1e3 * t:.0f} ({direct / t:.2f}x)")
        print(f"| {ci}->{co} at {s}x{s}, batch {n} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
