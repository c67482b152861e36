"""Process set-up of a training run: the device, CPU threads and memory, distributed training, and
the stop signals.

Several processes (``torchrun --standalone --nproc_per_node N -m cyclecorr.cli train …``) join
one process group (:func:`init_distributed`): NCCL on CUDA, gloo on a CPU. Ctrl-C or SIGTERM in a
single process finishes the current iteration, writes a checkpoint and stops
(:func:`graceful_stop`, :class:`TrainingInterrupted`); DataLoader workers ignore both signals
(:func:`ignore_stop_signals`) so that the main process decides.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass

import torch
import torch.distributed

from cyclecorr._runtime import keep_freed_memory, resolve_device
from cyclecorr.train.config import RuntimeConfig

__all__ = ["DistInfo", "init_distributed", "training_device", "set_up_process",
           "TrainingInterrupted", "graceful_stop", "stop_requested", "ignore_stop_signals"]


@dataclass
class DistInfo:
    """This process's place in a distributed run (``world == 1``: a single process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> DistInfo:
        """Rank and world size as ``torchrun`` sets them (a single process without it)."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the
    environment): NCCL on CUDA, gloo on CPU. Returns rank / world size."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    here = False
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        here = True
    return DistInfo(rank, world, local, here)


def training_device(device: str, dist: DistInfo) -> torch.device:
    """``runtime.device`` resolved by :func:`cyclecorr._runtime.resolve_device`; a CUDA device
    without an index is this process's GPU (its local rank under DDP)."""
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        if not torch.cuda.is_available():
            raise ValueError("runtime.device=cuda but CUDA is not available")
        index = dist.local_rank if dist.world > 1 else torch.cuda.current_device()
        return torch.device("cuda", index)
    return dev


def set_up_process(runtime: RuntimeConfig) -> torch.device:
    """Apply ``runtime`` to this process (threads, kernel choices, allocator) and return the
    training device."""
    n = int(os.environ.get("CYCLECORR_THREADS", runtime.threads or 0))
    if n > 0:
        torch.set_num_threads(n)
    device = training_device(runtime.device, DistInfo.from_environment())
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL needs each process on its own GPU before init
    if device.type == "cpu" and runtime.keep_memory:
        keep_freed_memory()  # no page faults per step on activations (cyclecorr._runtime)
    if device.type == "cuda" and not runtime.deterministic:
        # fixed input sizes: let cuDNN pick the fastest convolution algorithms once
        torch.backends.cudnn.benchmark = True
    if runtime.deterministic and device.type == "cuda":
        # CPU kernels are already deterministic for a fixed thread count (and this call
        # imports torch._inductor, ~7 s), so it is only made for CUDA
        torch.use_deterministic_algorithms(True, warn_only=True)
    return device


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader workers ignore SIGINT / SIGTERM: a Ctrl-C (sent to the whole process group) or a
    ``pkill -f`` that matches the workers' command line too must not kill them mid-batch; the main
    process decides (it finishes the iteration, checkpoints and shuts the workers down), and
    workers still exit when the main process ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after Ctrl-C / SIGTERM once the current iteration is finished and checkpointed."""


_STOP = {"requested": None}


def stop_requested() -> str | None:
    """The name of the signal that asked training to stop (``"SIGINT"``, ``"SIGTERM"``), or None."""
    return _STOP["requested"]


@contextlib.contextmanager
def graceful_stop(enabled: bool):
    """While training in a single process, SIGINT / SIGTERM finish the current iteration, write a
    checkpoint and stop (a second Ctrl-C stops at once). Under DDP the default handlers stay
    (ranks would have to agree on the step); checkpoints every ``checkpoint_every`` cover it."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {}

    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:  # a forked DataLoader worker: the main process decides
            return
        if _STOP["requested"]:
            raise KeyboardInterrupt
        _STOP["requested"] = signal.Signals(signum).name
        print(f"\n{_STOP['requested']}: finishing this iteration and writing a checkpoint "
              "(press Ctrl-C again to stop at once)")

    for sig in (signal.SIGINT, signal.SIGTERM):
        old[sig] = signal.signal(sig, handler)
    _STOP["requested"] = None
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        _STOP["requested"] = None
