"""Training throughput: iterations/s and pairs or quartets/s of each stage, and the share of
time the loop waits for data (loading must not starve the model).

    .venv/bin/python bench/train.py                      # cpu-preset network, synthetic quartets
    .venv/bin/python bench/train.py --data quartets/     # a folder from `cyclecorr prepare`
    .venv/bin/python bench/train.py --preset paper --device cuda

Prints one JSON line per (stage, device) with: it_per_s, items_per_s, data_wait_share (time
blocked on the DataLoader / total), step_ms (compute) and the settings. Synthetic quartets are
generated once before timing (the loader then only augments and collates them). Timings exclude
the first ``--warmup`` iterations. The data source is the training loop's own pipeline
(AugmentedDataset + StepBatchSampler + DataLoader with ``--workers`` processes).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from cyclecorr._runtime import precision_context  # noqa: E402
from cyclecorr.losses import CycleLossConfig  # noqa: E402
from cyclecorr.model import build_network  # noqa: E402
from cyclecorr.train.config import AugmentConfig, load_config  # noqa: E402
from cyclecorr.train.data import QUARTET_KEYS, AugmentedDataset, StepBatchSampler, collate  # noqa: E402
from cyclecorr.train.modules import CycleModule, FlowModule  # noqa: E402
from cyclecorr.train.run_data import RenderPairs, build_quartets  # noqa: E402
from cyclecorr.train.steps import cycle_step_loss, stage1_step_loss  # noqa: E402


def bench_stage(stage, cfg, trainset, device, steps, warmup, workers):
    st = cfg.stage1 if stage == 1 else cfg.stage2
    torch.manual_seed(0)
    net = build_network(cfg.net).to(device)
    if cfg.runtime.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if stage == 1:
        base, keys, module = RenderPairs(trainset), ("src", "tgt", "flow", "valid"), FlowModule(net)
        fn = lambda m, b: stage1_step_loss(m, b, cfg.stage1_reduction)  # noqa: E731
    else:
        base, keys, module = trainset, QUARTET_KEYS, CycleModule(net)
        lc = CycleLossConfig(**cfg.loss.to_dict())
        fn = lambda m, b: cycle_step_loss(m, b, lc)  # noqa: E731
    aug = AugmentConfig(hflip=cfg.augment.hflip, color_jitter=cfg.augment.color_jitter)
    ds = AugmentedDataset(base, 0, aug, keys=keys)
    sampler = StepBatchSampler(len(ds), st.batch_size, 0, 0, steps + warmup)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=workers, pin_memory=device.type == "cuda",
                                         prefetch_factor=4 if workers else None)
    opt = torch.optim.Adam(net.parameters(), st.optim.lr)
    t_data = t_comp = 0.0
    it = iter(loader)
    for i in range(steps + warmup):
        t0 = time.perf_counter()
        batch = {k: v.to(device, non_blocking=True) for k, v in next(it).items()}
        t1 = time.perf_counter()
        with precision_context(device, cfg.runtime.precision):  # --set runtime.precision=bf16
            loss, _ = fn(module, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if i >= warmup:
            t_data += t1 - t0
            t_comp += t2 - t1
    total = t_data + t_comp
    return {"stage": stage, "device": str(device), "batch": st.batch_size,
            "items": "pairs" if stage == 1 else "quartets", "steps": steps,
            "it_per_s": round(steps / total, 3),
            "items_per_s": round(steps * st.batch_size / total, 2),
            "step_ms": round(1000 * t_comp / steps, 1),
            "data_wait_share": round(t_data / total, 3)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[])
    ap.add_argument("--data", default="synthetic", help="quartet folder or 'synthetic'")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--workers", type=int, default=None, help="default: the preset's data.workers")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="all", help="cpu, cuda or all (cpu + cuda when present)")
    ap.add_argument("--stages", default="1,2")
    args = ap.parse_args(argv)
    cfg = load_config(args.preset, args.overrides + [f"data.quartets={args.data}",
                                                     "data.synthetic_size=64", "data.val_count=2"])
    if args.threads:
        torch.set_num_threads(args.threads)
    elif cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    workers = cfg.data.workers if args.workers is None else args.workers
    trainset, _, _ = build_quartets(cfg)
    if args.data == "synthetic":
        # generate the 64 procedural quartets once: on a GPU the generator, not the loop, was the
        # bottleneck (80-96 % of the time waiting), which hid the step's own speed
        trainset = [trainset[i] for i in range(len(trainset))]
    if not cfg.runtime.deterministic:
        torch.backends.cudnn.benchmark = True  # as the training loop does on CUDA
    devices = [args.device] if args.device != "all" else \
        ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    info = {"preset": args.preset, "width": cfg.net.width, "image_size": cfg.net.image_size,
            "threads": torch.get_num_threads(), "workers": workers, "data": args.data,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "load_avg_1min": round(os.getloadavg()[0], 2)}
    for dev in devices:
        for stage in (int(s) for s in args.stages.split(",")):
            r = bench_stage(stage, cfg, trainset, torch.device(dev), args.steps, args.warmup,
                            workers)
            print(json.dumps({**r, **info}), flush=True)


if __name__ == "__main__":
    main()
