"""Benchmark: one cycle-consistency training step of the paper network (composition included).

Prints quartets/s, peak memory, and model FLOP utilisation (MFU): achieved FLOP/s of the step
(forward FLOPs counted by hooks on every convolution, ×3 for forward + backward) divided by the
machine's dense matmul FLOP/s measured in the same run, in the variant's precision: each timed
step is followed by a matmul measurement and MFU is the median of the per-step ratios (on a shared
machine the load drifts within seconds). Runs on CUDA when present.

    python bench/train_step.py [--batch 10] [--steps 5] [--variants plain,channels_last,compile]

On a CPU in float32 each step is also paired with the same GEMM through oneDNN (a 1×1
channels-last convolution), and a second MFU is printed against the faster of the two references:
on this project's AVX-512 AMD machines MKL's ``torch.matmul`` runs at about 0.7× oneDNN's GEMM, so
the first figure alone would flatter the step.

A variant named with ``stockdeconv`` swaps the network's transposed convolutions back to
``nn.ConvTranspose2d`` (whose CPU backward reduces the bias gradient slowly; the network's own
layer computes it as one sum), for a comparison in the same run.

A variant named with ``keepmem`` runs with the allocator setting that ``cyclecorr train`` uses on
a CPU (``runtime.keep_memory``): freed memory stays in the process, so a step does not page-fault
its activations in again.

Precision is part of a variant's name: none = strict float32 (on CUDA TF32 is switched off for
convolutions and matmuls alike), ``tf32`` = TF32 tensor cores for both, ``bf16`` = the step under
``torch.autocast(bfloat16)`` against a bfloat16 matmul. The reference matmul is n×n with n = 2048
on CPU and 8192 on CUDA (large enough to reach the tensor cores' peak).

``--procs N`` (CPU) splits each step's quartets over N ``DistributedDataParallel`` processes
(gloo), each with threads / N torch threads, as ``cyclecorr train`` runs under ``torchrun`` or
``cyclecorr.train.launch.run_local_ddp``; the step is timed between barriers and rank 0 measures
the matmul reference with all threads while the others wait.

``--arch costvol`` runs every variant three times in the same process: the paper network at
width 1 and at width 1/2 (names suffixed ``+width0.5``) and the cost-volume network
(:mod:`cyclecorr.costvol`, names prefixed ``costvol+``), whose FLOPs count its correlation matrix
products beside its convolutions (``flops_by_part``; its matchability is decoded with the whole
decoder, as ``CycleModule`` asks for it). A variant name may also carry ``costvol`` or a
width itself (``width0.5``, ``costvol+width2``: the channel multiplier of either network).

``--bind`` pins the OpenMP threads to cores (``OMP_PROC_BIND=true OMP_PLACES=cores``; the script
starts itself again with them, since OpenMP reads them when it loads). On the 2-core machine this
gave 2–5 MFU points in four paired runs, less than the machine's drift between runs
(docs/RESULTS.md). It is not a default anywhere: two
processes that each bind their threads to "the first cores" share those cores and leave the rest
idle (several CPU training processes on one machine, torchrun on a CPU).
"""
from __future__ import annotations

import os
import sys

if "--bind" in sys.argv and "OMP_PROC_BIND" not in os.environ:
    os.environ.update(OMP_PROC_BIND="true", OMP_PLACES="cores")
    os.execv(sys.executable, [sys.executable, *sys.argv])

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from cyclecorr._runtime import keep_freed_memory  # noqa: E402
from cyclecorr.costvol import CostVolumeNet  # noqa: E402
from cyclecorr.losses import CycleLossConfig  # noqa: E402
from cyclecorr.model import CorrespondenceNet  # noqa: E402
from cyclecorr.train.modules import CycleModule  # noqa: E402
from cyclecorr.train.steps import cycle_step_loss  # noqa: E402


def _gemm_rate(fn, n, reps, device) -> float:
    """FLOP/s of ``fn`` (one n×n×n GEMM) after two warm-up calls, over ``reps`` calls."""
    for _ in range(2):
        fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def matmul_flops(device, n=None, reps=10, dtype=torch.float32) -> float:
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return _gemm_rate(lambda: a @ b, n, reps, device)


def onednn_gemm_flops(n=2048, reps=3) -> float:
    """FLOP/s of the same n×n×n float32 GEMM through oneDNN (a 1×1 channels-last convolution),
    the library that runs the network's convolutions. On an AMD CPU with AVX-512 (this
    project's CI kind since 2026-11) MKL's ``torch.matmul`` takes a slower code path and
    oneDNN's GEMM was 1.3–1.4× faster: MFU against ``torch.matmul`` alone would flatter."""
    x = torch.randn(1, n, n, 1).contiguous(memory_format=torch.channels_last)
    w = torch.randn(n, n, 1, 1).contiguous(memory_format=torch.channels_last)
    return _gemm_rate(lambda: torch.nn.functional.conv2d(x, w), n, reps, torch.device("cpu"))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_batch(b, s, device, channels_last, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = {k: torch.rand(b, 3, s, s, generator=g) for k in ("s1", "s2", "r1", "r2")}
    batch["flow_s1s2"] = torch.randn(b, 2, s, s, generator=g) * 5
    batch["match_s1s2"] = (torch.rand(b, 1, s, s, generator=g) > 0.3).float()
    out = {}
    for k, v in batch.items():
        v = v.to(device)
        if channels_last and v.shape[1] == 3:
            v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


def make_net(name):
    """The network a variant names: ``costvol`` → the cost-volume network, else the paper
    network; ``widthX`` in the name (e.g. ``width0.5``, ``costvol+width2``) sets its channel
    multiplier (default 1)."""
    m = re.search(r"width([0-9]*\.?[0-9]+)", name)
    width = float(m.group(1)) if m else 1.0
    if "costvol" in name:
        return CostVolumeNet(width=width)
    return CorrespondenceNet(width=width)


def step_flops(net, b) -> float:
    """FLOPs of one cycle step, forward ×3 (fwd + bwd): 4b encoder passes, 3b flow-decoder passes
    and b matchability-decoder passes (only r1→r2's matchability is decoded; see CycleModule).
    The cost-volume network decodes flow and matchability in one pass (``CycleModule`` with
    ``decodes_jointly``): 4b encoder passes and 3b decoder passes."""
    f = net.flops_by_part()
    if isinstance(net, CostVolumeNet):
        return 3.0 * (4 * b * f["encoder"] + 3 * b * f["flow_decoder"])
    return 3.0 * (4 * b * f["encoder"] + 3 * b * f["flow_decoder"] + b * f["match_decoder"])


def set_precision(name, device):
    """TF32 on (``tf32`` in the name) or off for CUDA convolutions and matmuls; the autocast
    dtype (``bf16`` in the name) or None."""
    tf32 = "tf32" in name
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True
    return torch.bfloat16 if "bf16" in name else None


def run_variant(name, device, b, steps, world=1, threads=0):
    """One variant: ``steps`` timed steps of ``b`` quartets. With ``world`` > 1 (CPU only, inside
    one of :func:`_ddp_child`'s processes) each process runs b / world quartets of the same step
    through ``DistributedDataParallel`` (gloo), as ``cyclecorr train`` does under ``torchrun`` or
    ``cyclecorr.train.launch``; the step is timed between barriers and rank 0 measures the matmul
    reference alone, with all ``threads`` of the machine, while the other ranks wait."""
    import torch.distributed as dist

    rank = dist.get_rank() if world > 1 else 0
    torch.manual_seed(0)
    if "keepmem" in name and device.type == "cpu":
        # what `cyclecorr train` does on a CPU (runtime.keep_memory): freed activations stay in
        # the heap, so a step does not page-fault them in again
        if not keep_freed_memory():
            raise RuntimeError("keep_freed_memory: not supported here (glibc only)")
    amp = set_precision(name, device)
    net = make_net(name).to(device)
    if "stockdeconv" in name:  # the stock transposed convolution (slow CPU bias gradient)
        for m in net.modules():
            if isinstance(m, torch.nn.ConvTranspose2d):
                m.__class__ = torch.nn.ConvTranspose2d
    cl = "channels_last" in name or "compile" in name
    if cl:
        net = net.to(memory_format=torch.channels_last)
    flops = step_flops(net, b)  # of the whole step, all processes together
    model = torch.compile(net) if "compile" in name else net
    if isinstance(net, CostVolumeNet):
        if "compile" in name:
            raise ValueError("no compile variants for the cost-volume network")
        model = CycleModule(net)  # its joint decoder (decodes_jointly); also what DDP wraps
    if world > 1:
        if "compile" in name:
            raise ValueError("--procs runs DDP around the network's cycle view, which a compiled "
                             "network does not reach: no compile variants with --procs")
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model if isinstance(model, CycleModule) else CycleModule(net))
    # "fused": one fused Adam kernel per step (what cyclecorr train uses)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, fused="fused" in name)
    batch = make_batch(b // world, net.config.image_size, device, cl, seed=rank)
    cfg = CycleLossConfig()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, _ = cycle_step_loss(model, batch, cfg)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    step()  # warm-up (and compilation)
    step()
    sync(device)
    warm = time.perf_counter() - t0
    # Each timed step is paired with a matmul measurement right after it, and MFU is the median of
    # the per-pair ratios: on a shared machine the load drifts within seconds, and a reference
    # measured once, after all steps, can land in a quieter or busier moment than the steps did.
    barrier = dist.barrier if world > 1 else (lambda: None)
    times, ratios, refs, strict = [], [], [], []
    cpu_fp32 = device.type == "cpu" and amp is None

    def references():
        """(matmul FLOP/s, the faster of it and oneDNN's GEMM on a float32 CPU run)."""
        ref = matmul_flops(device, dtype=amp or torch.float32, reps=3)
        return ref, (max(ref, onednn_gemm_flops()) if cpu_fp32 else ref)
    for _ in range(steps):
        barrier()
        t = time.perf_counter()
        step()
        sync(device)
        barrier()  # the step ends when the slowest process has its averaged gradients
        dt = time.perf_counter() - t
        if world > 1:
            per_process = torch.get_num_threads()
            if rank == 0:
                torch.set_num_threads(threads)
                ref, best = references()
                torch.set_num_threads(per_process)
            barrier()
            if rank:
                continue
        else:
            ref, best = references()
        times.append(dt)
        refs.append(ref)
        ratios.append(flops / dt / ref)
        strict.append(flops / dt / best)
    if rank:
        return {}
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    dt, peak, mfu = med(times), med(refs), med(ratios)
    achieved = flops / dt
    if world > 1:
        name = f"{name}+procs{world}"
    return {"variant": name, "sec_per_step": dt, "quartets_per_s": b / dt,
            "gflop_per_step": flops / 1e9, "achieved_gflops": achieved / 1e9,
            "mfu": mfu, "mfu_min": min(ratios), "mfu_max": max(ratios),
            "mfu_best_gemm": med(strict), "mfu_best_gemm_min": min(strict),
            "mfu_best_gemm_max": max(strict),
            "matmul_gflops": peak / 1e9, "warmup_s": warm,
            "matmul_dtype": str(amp or torch.float32).replace("torch.", "") + (
                "+tf32" if "tf32" in name and device.type == "cuda" else "")}


def run_all(names, device, batch, steps, world=1, threads=0):
    """Every variant in turn (keepmem last); prints each row on rank 0 and returns the rows."""
    import torch.distributed as dist

    main_rank = world == 1 or dist.get_rank() == 0
    rows = []
    for v in names:
        try:
            r = run_variant(v, device, batch, steps, world, threads)
        except Exception as e:  # one variant failing (an op without bf16 support) ends no run
            if main_rank:
                print(f"{v:>14}: failed: {type(e).__name__}: {e}")
            if world > 1:
                raise  # the other processes would wait for this one at the next barrier
            continue
        if not main_rank:
            continue
        rows.append(r)
        print(f"{r['variant']:>14}: {r['sec_per_step']:.3f} s/step, "
              f"{r['quartets_per_s']:.2f} quartets/s, "
              f"{r['achieved_gflops']:.1f} GFLOP/s vs matmul {r['matmul_gflops']:.1f} GFLOP/s: "
              f"MFU {100 * r['mfu']:.1f} % (median of {steps} step/matmul pairs; "
              f"{100 * r['mfu_min']:.0f}–{100 * r['mfu_max']:.0f} %); against the faster of "
              f"matmul and oneDNN's GEMM {100 * r['mfu_best_gemm']:.1f} % "
              f"({100 * r['mfu_best_gemm_min']:.0f}–{100 * r['mfu_best_gemm_max']:.0f} %) "
              f"({r['gflop_per_step']:.1f} GFLOP/step, warm-up {r['warmup_s']:.1f} s)", flush=True)
    return rows


def _ddp_child(rank, world, port, names, batch, steps, threads, out):
    """One of ``--procs`` processes: gloo group on 127.0.0.1, threads / world torch threads."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, threads // world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        rows = run_all(names, torch.device("cpu"), batch, steps, world, threads)
        if rank == 0:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            with open(out, "w") as f:
                json.dump({"rows": rows, "peak_mem_mib": rss}, f)
    finally:
        dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=10, help="quartets per step (paper: 10)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--variants",
                    default="plain,channels_last,channels_last+fused,channels_last+fused+keepmem",
                    help="comma list; a name containing channels_last / fused / compile / tf32 / "
                         "bf16 / keepmem turns that on (keepmem variants run last: the allocator "
                         "setting cannot be undone in the process)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--procs", type=int, default=1,
                    help="CPU only: split each step's quartets over this many DDP processes "
                         "(gloo), each with threads / procs torch threads")
    ap.add_argument("--arch", choices=("paper", "costvol"), default="paper",
                    help="costvol: run each variant for the paper network at width 1 and 1/2 and "
                         "for the cost-volume network, in the same run")
    ap.add_argument("--bind", action="store_true",
                    help="pin OpenMP threads to cores (OMP_PROC_BIND=true OMP_PLACES=cores)")
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    binding = os.environ.get("OMP_PROC_BIND", "unset")
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.arch == "costvol":
        names = [n for v in names for n in (v, f"{v}+width0.5", f"costvol+{v}")]
    names = [v for v in names if "keepmem" not in v] + [v for v in names if "keepmem" in v]
    if args.procs > 1:
        if device.type != "cpu":
            ap.error("--procs is for CPU runs (on CUDA, one process per GPU: torchrun)")
        if os.environ.get("OMP_PROC_BIND", "false").lower() not in ("false", "unset"):
            ap.error("--procs with --bind (or OMP_PROC_BIND) would pin every process's threads "
                     "to the same first cores")
        if args.batch % args.procs or threads < args.procs:
            ap.error(f"--batch {args.batch} must divide into --procs {args.procs}, and "
                     f"--threads ({threads}) must be at least --procs")
        import tempfile

        import torch.multiprocessing as mp

        from cyclecorr.train.launch import free_port

        print(f"device cpu, {args.procs} processes × {threads // args.procs} threads "
              f"(matmul reference: {threads} threads), OMP_PROC_BIND {binding}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "rows.json")
            mp.spawn(_ddp_child, args=(args.procs, free_port(), names, args.batch, args.steps,
                                       threads, out), nprocs=args.procs, join=True)
            with open(out) as f:
                res = json.load(f)
        rows, peak_mem = res["rows"], res["peak_mem_mib"]
        print(f"peak memory {peak_mem:.0f} MiB (process max RSS of rank 0; each process holds "
              f"its own copy of the network)")
    else:
        print(f"device {device}, threads {threads}, OMP_PROC_BIND {binding}")
        rows = run_all(names, device, args.batch, args.steps)
        peak_mem = (torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda"
                    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        print(f"peak memory {peak_mem:.0f} MiB "
              f"({'CUDA allocated' if device.type == 'cuda' else 'process max RSS'})")
    print(json.dumps({"peak_mem_mib": peak_mem, "omp_proc_bind": binding, "procs": args.procs,
                      "rows": rows}))


if __name__ == "__main__":
    main()
