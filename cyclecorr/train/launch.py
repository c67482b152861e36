"""Multi-process training on one machine without ``torchrun`` (CPU gloo or one GPU per process).

``torchrun --standalone --nproc_per_node N -m cyclecorr.cli train …`` is the usual way (several
machines too: ``--nnodes``, ``--rdzv-endpoint``). :func:`run_local_ddp` does the same from
Python with ``torch.multiprocessing.spawn``: it sets ``MASTER_ADDR``/``MASTER_PORT``/``RANK``/
``WORLD_SIZE`` for each child and calls :func:`cyclecorr.train.loop.train` there.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import torch.multiprocessing as mp

from cyclecorr.train.config import TrainConfig
from cyclecorr.train.loop import train

__all__ = ["run_local_ddp", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, world: int, port: int, cfg_dict: dict, run_dir: str, resume: bool,
           threads: int):
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    if threads > 0:
        os.environ["CYCLECORR_THREADS"] = str(threads)

    train(TrainConfig.from_dict(cfg_dict), run_dir, resume=resume, progress=False)


def run_local_ddp(cfg, run_dir: str | os.PathLike, nprocs: int = 2, resume: bool = False,
                  threads_per_process: int = 1) -> Path:
    """Train ``cfg`` with ``nprocs`` DDP processes on this machine; returns the final model path.

    The global batch sizes of ``cfg`` are split evenly across the processes (they must divide).
    """
    for name in ("stage1", "stage2"):
        bs = getattr(cfg, name).batch_size
        if getattr(cfg, name).iterations and bs % nprocs:
            raise ValueError(f"{name}.batch_size={bs} is not divisible by {nprocs} processes")
    port = free_port()
    mp.spawn(_child, args=(nprocs, port, cfg.to_dict(), str(run_dir), resume,
                           threads_per_process), nprocs=nprocs, join=True)
    return Path(run_dir) / "final.safetensors"
