"""Benchmark of the guided SIFT flow (a network's flow refined by SIFT flow searched around it):
seconds per pair at 128×128 for the network alone, the refinement at several (level, window)
settings, ``cyclecorr match``'s car default (the default refinement, both ways: ``Matcher(
refine="siftflow", bidirectional=True)``) and the splat-and-gate step of the two directions alone
(``geometry.bidirectional_flow``) with its splat in both forms (the numba kernel a CPU runs, the
PyTorch form other devices run), and the full SIFT flow, measured in the same interleaved rounds
on the same pairs, and each one's ratio to the full SIFT flow (prints numbers; no assertions).

    .venv/bin/python bench/refine.py [--model PATH] [--pairs 16] [--rounds 3]

Pairs: consecutive FlowWeb car crops where the shared data is present (timing only: nothing is
scored), else smooth random textures and shifted copies.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _pairs(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    from cyclecorr._paths import shared_data_dir

    root = shared_data_dir()
    if root is not None and (root / "real" / "flowweb-car").is_dir():
        from cyclecorr.evaluate.benchmarks import resize_image
        from cyclecorr.evaluate.datasets import load_flowweb_car

        samples = load_flowweb_car(root, limit=n + 1)
        imgs = torch.stack([resize_image(s.image, size) for s in samples])
        return imgs[:-1][:n], imgs[1:][:n], f"{n} FlowWeb car crop pairs"
    from scipy import ndimage

    rs = np.random.RandomState(0)
    tex = ndimage.gaussian_filter(rs.rand(n, size + 8, size + 8, 3), sigma=(0, 2, 2, 0))
    tex = torch.from_numpy((tex - tex.min()) / np.ptp(tex)).permute(0, 3, 1, 2).float()
    return tex[..., :size, :size], tex[..., 5:size + 5, 3:size + 3], f"{n} texture pairs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default=None, help="model file (default: the shipped car model)")
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    ap.add_argument("--settings", default="2:8:1,2:4:1,2:4:0",
                    help="LEVEL:WINDOW[:STOP] settings of the refinement to time (STOP: the "
                         "finest level searched, default 0)")
    args = ap.parse_args()
    from cyclecorr._splat import splat_numba
    from cyclecorr.geometry import _splat_reference, bidirectional_flow
    from cyclecorr.matcher import Matcher
    from cyclecorr.siftflow import sift_flow_tensors

    m = Matcher.from_checkpoint(args.model, device="cpu")
    both = Matcher.from_checkpoint(args.model, device="cpu", refine="siftflow",
                                   bidirectional=True)
    src, tgt, what = _pairs(args.pairs, m.size)
    settings = [(*(int(v) for v in s.split(":")), 0)[:3] for s in args.settings.split(",")]
    net_flow = m.predict(src, tgt)["flow"]
    rev_flow = m.predict(tgt, src)["flow"]
    tau, sigma, spread = both.bidirectional_px
    size = tuple(src.shape[-2:])

    def run_refine(level, window, stop):
        return lambda: sift_flow_tensors(src, tgt, init_flow=net_flow, init_level=level,
                                         init_window=window, stop_level=stop)

    fns = {"network": lambda: m.predict(src, tgt),
           **{f"refine {lv}:{w}:{st} (search only)": run_refine(lv, w, st)
              for lv, w, st in settings},
           "both ways, refined (match)": lambda: both.predict(src, tgt),
           "both ways: splat + gate": lambda: bidirectional_flow(net_flow, rev_flow, tau, sigma,
                                                                  max_spread=spread),
           "splat (numba kernel)": lambda: splat_numba(rev_flow, sigma, size, True),
           "splat (PyTorch form)": lambda: _splat_reference(rev_flow, sigma, size, True),
           "SIFT flow": lambda: sift_flow_tensors(src, tgt)}
    sift_flow_tensors(src[:1], tgt[:1])  # compile the belief propagation (numba) first
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) / len(src))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpu count "
          f"{os.cpu_count()}, {what} at {m.size}×{m.size}, {args.rounds} interleaved rounds "
          f"(best of each)")
    ref = min(times["SIFT flow"])
    print(f"{'':<28} {'s/pair':>8} {'pairs/s':>8} {'× SIFT flow time':>17}")
    for k, v in times.items():
        best = min(v)
        print(f"{k:<28} {best:8.4f} {1 / best:8.1f} {best / ref:17.2f}")
    net = min(times["network"])
    for lv, w, st in settings:
        t = net + min(times[f"refine {lv}:{w}:{st} (search only)"])
        print(f"network + refine {lv}:{w}:{st}: {t:.4f} s/pair, {t / ref:.2f} × SIFT flow's "
              f"time")


if __name__ == "__main__":
    main()
