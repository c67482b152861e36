"""Training: stage 1 (imitate SIFT flow) then stage 2 (3D-guided cycle consistency).

Quick start::

    from cyclecorr.train import load_config, train
    cfg = load_config("cpu", ["stage2.batch_size=4"])     # presets: paper, cpu, demo, smoke
    result = train(cfg, "runs/car", resume=False)           # → runs/car/final.safetensors

or ``cyclecorr train --preset cpu --data quartets/ --out runs/car`` (``--resume`` continues a
killed run exactly; ``torchrun --standalone --nproc_per_node N -m cyclecorr.cli train …`` trains
on N GPUs).

Modules: :mod:`~cyclecorr.train.config` (presets, overrides), :mod:`~cyclecorr.train.data`
(deterministic batch order, augmentation, synthetic quartets, SIFT-flow pairs),
:mod:`~cyclecorr.train.run_data` (a run's quartets, stage-1 pairs and data hash),
:mod:`~cyclecorr.train.modules` (DDP-friendly views of the network),
:mod:`~cyclecorr.train.steps` (one step's predictions and loss), :mod:`~cyclecorr.train.state`
(checkpoints), :mod:`~cyclecorr.train.loop` (the loop), :mod:`~cyclecorr.train.monitor` (log,
validation, real-photo PCK), :mod:`~cyclecorr.train.process` (device, threads, DDP set-up, stop
signals), :mod:`~cyclecorr.train.launch` (local multi-process), :mod:`~cyclecorr.train.demo`
(the embedded end-to-end demo).
"""
from __future__ import annotations

import importlib

__all__ = ["TrainConfig", "load_config", "train", "TrainResult", "run_local_ddp", "run_demo",
           "write_model_card"]

_LAZY = {
    "TrainConfig": "cyclecorr.train.config",
    "load_config": "cyclecorr.train.config",
    "train": "cyclecorr.train.loop",
    "TrainResult": "cyclecorr.train.loop",
    "run_local_ddp": "cyclecorr.train.launch",
    "run_demo": "cyclecorr.train.demo",
    "write_model_card": "cyclecorr.train.card",
}


def __getattr__(name):  # on use: importing cyclecorr.train stays cheap
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cyclecorr.train' has no attribute {name!r}")
