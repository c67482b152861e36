"""The training loop: stage 1 (SIFT-flow imitation) then stage 2 (3D-guided cycle), one run folder.

Use :func:`train` from Python or ``cyclecorr train`` from the shell. A run is resumable exactly:
``train(cfg, run_dir, resume=True)`` continues from ``last.json`` and reaches the same weights as an
uninterrupted run (the batch order, augmentation and learning rate are pure functions of the seed
and the iteration; model and Adam state are restored bit-for-bit).

Ctrl-C or SIGTERM (single process) finishes the current iteration, writes a checkpoint and stops
(:class:`TrainingInterrupted`); a SIGKILL loses at most the iterations since the last checkpoint.

Several processes (``torchrun --standalone --nproc_per_node N -m cyclecorr.cli train …``) train with
DistributedDataParallel: each takes a contiguous 1/N slice of the same global batch, gradients are
averaged, and rank 0 alone writes checkpoints and logs. With per-sample-mean losses (stage 2 with
``reduction="sum"``; stage 1 with ``stage1_reduction="sum"``, or "mean" when every pixel is valid)
N processes reach the weights of one process with the same global batch, up to float summation
order.

The jobs around the loop live beside it: :mod:`~cyclecorr.train.process` (device, threads,
distributed set-up, stop signals), :mod:`~cyclecorr.train.run_data` (the run's quartets and their
manifest hash), :mod:`~cyclecorr.train.monitor` (log, validation, real-photo PCK),
:mod:`~cyclecorr.train.state` (checkpoints) and :mod:`~cyclecorr.train.steps` (one step's loss).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from cyclecorr._io import file_sha256, remove_stale_temporaries
from cyclecorr._runtime import precision_context
from cyclecorr.checkpoint import atomic_write_bytes, load_weights, save_model
from cyclecorr.data.render_pairs import RenderPairDataset
from cyclecorr.losses import CycleLossConfig
from cyclecorr.model import build_network
from cyclecorr.train.card import write_model_card
from cyclecorr.train.config import StageConfig, TrainConfig
from cyclecorr.train.data import QUARTET_KEYS, AugmentedDataset, StepBatchSampler, collate
from cyclecorr.train.modules import CycleModule, FlowModule
from cyclecorr.train.monitor import Monitor
from cyclecorr.train.process import (
    DistInfo,
    TrainingInterrupted,
    graceful_stop,
    ignore_stop_signals,
    init_distributed,
    set_up_process,
    stop_requested,
)
from cyclecorr.train.run_data import build_quartets, build_stage1_pairs, manifest_sha256
from cyclecorr.train.state import (
    code_version,
    load_checkpoint_pointer,
    repair_last_model,
    restore_checkpoint,
    save_checkpoint,
)
from cyclecorr.train.steps import cycle_step_loss, stage1_step_loss

__all__ = ["train", "TrainResult", "TrainingInterrupted"]


@dataclass
class TrainResult:
    """What :func:`train` returns: the run folder, the final model file (rank 0), the stages run,
    the last logged training metrics and the last validation."""

    run_dir: Path
    final_model: Path | None
    stages_done: list = field(default_factory=list)
    last_metrics: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)


@dataclass
class _Run:
    """What every stage of one run shares."""

    cfg: TrainConfig
    cfg_dict: dict
    folder: Path
    net: torch.nn.Module
    device: torch.device
    dist: DistInfo
    trainset: Dataset
    valset: Dataset | None
    manifest: str
    monitor: Monitor
    result: TrainResult
    on_step: Callable[[int, int], None] | None
    progress: bool

    def global_step(self, stage: int, step: int) -> int:
        """Iterations since the run began: those of the stages before ``stage``, plus ``step``
        (stage 3 = the end of the run)."""
        return _global_step(self.cfg, stage, step)


@dataclass
class _Stage:
    """One stage as the loop runs it: its number and configuration, its optimiser and the step
    it starts from (> 0 when resuming)."""

    number: int
    config: StageConfig
    optimizer: torch.optim.Optimizer
    start: int = 0


@dataclass
class _Meter:
    """Training metrics and timings accumulated between two log records."""

    sums: dict = field(default_factory=dict)
    n: int = 0
    t_data: float = 0.0
    t_compute: float = 0.0
    t_last: float = field(default_factory=time.perf_counter)

    def add(self, metrics: dict, t_data: float, t_compute: float) -> None:
        self.t_data += t_data
        self.t_compute += t_compute
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.n += 1

    def means(self) -> dict:
        return {k: v / self.n for k, v in self.sums.items()}

    def rates(self, now: float) -> dict:
        return {"it_per_s": self.n / max(now - self.t_last, 1e-9),
                "data_share": self.t_data / max(self.t_data + self.t_compute, 1e-9)}


def train(cfg: TrainConfig, run_dir: str | os.PathLike, resume: bool = False,
          quartets=None, val_quartets=None, on_step: Callable[[int, int], None] | None = None,
          progress: bool | None = None) -> TrainResult:
    """Train stage 1 then stage 2 as configured, in ``run_dir``.

    Args:
        cfg: the configuration (see :mod:`cyclecorr.train.config`).
        run_dir: the run folder (created). An existing run with a checkpoint requires
            ``resume=True`` (refuses to overwrite it otherwise).
        resume: continue from ``run_dir/last.json``.
        quartets, val_quartets: datasets of quartet dicts to use instead of ``cfg.data``.
        on_step: called as ``on_step(stage, step)`` after each completed iteration (rank 0).
        progress: show a progress bar (default ``cfg.logging.progress``).

    Returns:
        :class:`TrainResult` (``final_model`` = ``run_dir/final.safetensors``).
    """
    cfg.validate()
    folder = Path(run_dir)
    device = set_up_process(cfg.runtime)
    dist = init_distributed(device)
    progress = cfg.logging.progress if progress is None else progress
    cfg_dict = cfg.to_dict()

    if dist.main:  # temporary files of a save that a kill interrupted
        for sub in (folder, folder / "checkpoints"):
            remove_stale_temporaries(sub)
    ptr = _resume_pointer(folder, cfg_dict, resume)
    net = _build_net(cfg, device, dist)
    if quartets is None:
        trainset, valset, manifest = build_quartets(cfg)
    else:
        trainset, valset = quartets, val_quartets
        manifest = manifest_sha256(cfg, quartets)
    if cfg.loss.pair_weight > 0:  # the render pairs are training data too
        pairs_manifest = Path(cfg.data.render_pairs) / "manifest.json"
        if not pairs_manifest.is_file():
            raise FileNotFoundError(f"{pairs_manifest}: no render-pair manifest "
                                    "(data.render_pairs; write it with `cyclecorr prepare-pairs`)")
        manifest = hashlib.sha256((manifest + file_sha256(pairs_manifest)).encode()).hexdigest()
    if ptr is not None and ptr.get("data_manifest_sha256") not in (None, manifest):
        raise ValueError(f"{folder / 'last.json'}: the training data changed since the checkpoint "
                         f"(manifest {ptr['data_manifest_sha256'][:12]}… vs {manifest[:12]}…)")
    if dist.main:  # written once the run is set to start: a refused run leaves no folder behind
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / "config.json", json.dumps(cfg_dict, indent=1).encode())

    resume_global = None if ptr is None else _global_step(cfg, ptr["stage"], ptr["step"])
    monitor = Monitor(cfg, folder, valset, device, dist.main, resume_global)
    if dist.main:
        monitor.log({"event": "start" if ptr is None else "resume", "config_name": cfg.name,
                     "code_version": code_version(), "world_size": dist.world,
                     "device": str(device),
                     "data_manifest_sha256": manifest, "n_train": len(trainset),
                     "n_val": len(valset) if valset is not None else 0,
                     "note": "validation sets are held out and used for monitoring only, "
                             "never for model selection; real evaluation images are never "
                             "trained on"}, resume_global or 0, "run")
    monitor.start_real_pck(resume_global or 0)
    run = _Run(cfg, cfg_dict, folder, net, device, dist, trainset, valset, manifest, monitor,
               TrainResult(folder, None), on_step, progress)

    if ptr is not None:
        restore_checkpoint(folder, ptr, net)
    elif cfg.init:  # start from a model file's weights (they must fit the network)
        grown = load_weights(net, cfg.init, grow=True)
        if grown and dist.main:
            monitor.log({"event": "init_grown", "init": str(cfg.init), "zero_layers": grown},
                        resume_global or 0, "run")
    with graceful_stop(dist.world == 1):
        try:
            _run_stages(run, ptr)
            if dist.main:
                _finish(run)
        finally:
            monitor.close()
            if dist.initialised_here:
                torch.distributed.destroy_process_group()
    return run.result


def _resume_pointer(folder: Path, cfg_dict: dict, resume: bool) -> dict | None:
    """The run's checkpoint pointer when resuming (None for a new run), after checking that the
    run may continue with this configuration."""
    ptr = load_checkpoint_pointer(folder)
    if ptr is not None:
        repair_last_model(folder, ptr)
    if ptr is not None and not resume:
        raise ValueError(f"{folder}: holds a checkpoint (stage {ptr['stage']}, step "
                         f"{ptr['step']}); pass --resume to continue it or choose another --out "
                         "folder")
    if resume and ptr is not None:
        a, b = _training_part(ptr["config"]), _training_part(cfg_dict)
        if a != b:
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise ValueError(f"{folder / 'last.json'}: the run was started with another "
                             f"configuration (sections differ: {diff}); resume with the run's "
                             "config.json")
    return ptr


def _build_net(cfg: TrainConfig, device: torch.device, dist: DistInfo) -> torch.nn.Module:
    """The network, seeded by ``cfg.seed``, on ``device`` in the configured memory format."""
    torch.manual_seed(cfg.seed)
    net = build_network(cfg.network()).to(device)
    if cfg.runtime.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if dist.world > 1 and cfg.network().norm == "batch":
        if device.type == "cuda":
            # batch statistics over the global batch, so N processes = 1 process
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)  # converts net's layers in place
        elif dist.main:
            print("note: net.norm=batch under CPU DDP uses per-process batch statistics "
                  "(SyncBatchNorm needs CUDA), so the result differs from one process")
    return net


def _run_stages(run: _Run, ptr: dict | None) -> None:
    """Run stage 1 then stage 2 (the stages and steps that ``ptr`` says are done are skipped)."""
    optimizer = None
    for number in (1, 2):
        st = run.cfg.stage1 if number == 1 else run.cfg.stage2
        if st.iterations == 0:
            continue
        start = 0
        restore_optim = False
        if ptr is not None:
            if ptr["stage"] > number or (ptr["stage"] == number and ptr["step"] >= st.iterations):
                run.result.stages_done.append(number)
                continue  # done before the interruption
            if ptr["stage"] == number:
                start, restore_optim = ptr["step"], True
            if ptr["stage"] < number and not st.reset_optimizer:
                restore_optim = True
        if optimizer is None or st.reset_optimizer or restore_optim:
            optimizer = torch.optim.Adam(_param_groups(run.net, st.optim), lr=st.optim.lr,
                                         betas=tuple(st.optim.betas), eps=st.optim.eps,
                                         weight_decay=st.optim.weight_decay,
                                         fused=True)  # one kernel per step (CPU and CUDA)
            if restore_optim and ptr is not None:
                restore_checkpoint(run.folder, ptr, run.net, optimizer)
        ptr = None  # consumed
        run.result.last_metrics = _run_stage(run, _Stage(number, st, optimizer, start))
        run.result.stages_done.append(number)


def _finish(run: _Run) -> None:
    """Write the final model and its model card; log the end of the run (rank 0)."""
    final = run.folder / "final.safetensors"
    end = run.global_step(3, 0)
    save_model(final, run.net, {"stage": max(run.result.stages_done or [0]), "step": end,
                                "train_config": run.cfg_dict,
                                "data_manifest_sha256": run.manifest,
                                "code_version": code_version()})
    run.result.final_model = final
    try:
        write_model_card(run.folder)
    except Exception as e:  # the card is documentation: never fail a finished run
        print(f"could not write {run.folder / 'MODEL_CARD.md'}: {e}")
    run.monitor.log({"event": "done", "final_model": str(final)}, end, "run")
    if run.progress:
        print(f"training done: final model {final}")


def _param_groups(net, optim) -> list[dict]:
    """Adam's parameter groups: one, or with ``net.skips`` and ``optim.skips_lr_mult != 1`` the
    skip layers in a second group whose rate is scaled by ``lr_mult``."""
    skips = list(net.flow_skips.parameters()) if hasattr(net, "flow_skips") else []
    if not skips or optim.skips_lr_mult == 1.0:
        return [{"params": list(net.parameters())}]
    ids = {id(p) for p in skips}
    return [{"params": [p for p in net.parameters() if id(p) not in ids]},
            {"params": skips, "lr_mult": float(optim.skips_lr_mult)}]


def _training_part(cfg_dict: dict) -> dict:
    """The part of a configuration that determines the weights: a resumed run may change how it
    runs and reports (runtime, logging, validation, worker counts) but nothing else, except the
    arithmetic precision (``runtime.precision``), which stays; of the network sections only the
    trained architecture's counts. (Exact equality with an
    uninterrupted run also needs the same runtime.threads.) A field the configuration lacks counts
    at its default: options added later default to what runs did before them."""
    try:
        d = TrainConfig.from_dict(json.loads(json.dumps(cfg_dict))).to_dict()
    except (TypeError, ValueError, KeyError):
        d = json.loads(json.dumps(cfg_dict))
    precision = (d.get("runtime") or {}).get("precision", "float32")
    for k in ("runtime", "logging", "validation"):
        d.pop(k, None)
    if precision != "float32":  # a configuration without the field compares as float32
        d["precision"] = precision
    for k in ("workers", "sift_workers"):
        d.get("data", {}).pop(k, None)
    # only the trained architecture's section counts (a configuration without ``arch`` is the
    # paper network's)
    if d.pop("arch", "paper") == "paper":
        d.pop("costvol", None)
    else:
        d["arch"] = "costvol"
        d.pop("net", None)
    return d


def _global_step(cfg: TrainConfig, stage: int, step: int) -> int:
    return (cfg.stage1.iterations if stage > 1 else 0) + \
        (cfg.stage2.iterations if stage > 2 else 0) + step


def _stage_data(run: _Run, number: int) -> tuple[Dataset, torch.nn.Module, Callable]:
    """A stage's augmented training items, the view of the network it trains and its loss
    function ``(module, batch) -> (loss, metrics)``."""
    cfg = run.cfg
    if number == 1:
        base = build_stage1_pairs(cfg, run.trainset, run.folder, run.dist)
        keys = ("src", "tgt", "flow", "valid")
        module = FlowModule(run.net)

        def step_fn(m, b):
            return stage1_step_loss(m, b, cfg.stage1_reduction)
    else:
        base = run.trainset
        keys = QUARTET_KEYS
        module = CycleModule(run.net)
        loss_cfg = cfg.loss if isinstance(cfg.loss, CycleLossConfig) else \
            CycleLossConfig(**cfg.loss.to_dict())

        def step_fn(m, b):
            return cycle_step_loss(m, b, loss_cfg)
    if run.dist.world > 1:
        module = DistributedDataParallel(
            module, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    if number == 2:
        real_keys, render_keys = ("r1", "r2"), ("s1", "s2")
    elif cfg.data.stage1_targets == "ground_truth":  # render pairs
        real_keys, render_keys = (), ("src", "tgt")
    else:  # real pairs: SIFT-flow targets, or a photo and a bent copy of itself
        real_keys, render_keys = ("src", "tgt"), ()
    pairs = None
    if number == 2 and cfg.loss.pair_weight > 0:
        pairs = RenderPairDataset(cfg.data.render_pairs, verify=True)
    ds = AugmentedDataset(base, cfg.seed + 1000 * number, cfg.augment, keys=keys,
                          real_keys=real_keys, render_keys=render_keys,
                          self_warp=number == 2 and cfg.loss.warp_weight > 0, pairs=pairs,
                          bend=number == 1 and cfg.data.stage1_targets == "self_warp")
    return ds, module, step_fn


def _run_stage(run: _Run, stage: _Stage) -> dict:
    """Train one stage from ``stage.start`` to its last iteration; returns the last logged
    training metrics."""
    cfg, st, optimizer, device = run.cfg, stage.config, stage.optimizer, run.device
    ds, module, step_fn = _stage_data(run, stage.number)
    sampler = StepBatchSampler(len(ds), st.batch_size, cfg.seed + stage.number, stage.start,
                               st.iterations, run.dist.rank, run.dist.world)
    workers = cfg.data.workers
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                        persistent_workers=False, pin_memory=device.type == "cuda",
                        prefetch_factor=4 if workers > 0 else None,
                        worker_init_fn=ignore_stop_signals if workers > 0 else None)
    run.net.train()
    meter = _Meter()
    bar = tqdm(total=st.iterations, initial=stage.start, desc=f"stage {stage.number}", unit="it",
               disable=not (run.progress and run.dist.main), dynamic_ncols=True)
    step = stage.start
    last = {}
    it = iter(loader)
    try:
        while step < st.iterations:
            t0 = time.perf_counter()
            batch = next(it)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            if cfg.runtime.channels_last:
                batch = {k: (v.contiguous(memory_format=torch.channels_last) if v.dim() == 4
                             and v.shape[1] == 3 else v) for k, v in batch.items()}
            t1 = time.perf_counter()
            lr = st.optim.lr_at(step)
            metrics = _optimizer_step(module, step_fn, batch, optimizer, lr, run, stage, step)
            t2 = time.perf_counter()
            step += 1
            meter.add(metrics, t1 - t0, t2 - t1)
            bar.update(1)
            if run.dist.main:
                bar.set_postfix(loss=f"{metrics['loss']:.4g}", lr=f"{lr:.2g}", refresh=False)
            if run.dist.main and (step % cfg.logging.log_every == 0 or step == st.iterations):
                now = time.perf_counter()
                last = meter.means()
                run.monitor.log({"stage": stage.number, "step": step, "lr": lr, **last,
                                 **meter.rates(now)},
                                run.global_step(stage.number, step), f"stage{stage.number}/train")
                meter = _Meter(t_last=now)
            _after_step(run, stage, step)
    finally:
        bar.close()
        # Shut the loader's workers down now, whatever ends the stage: an exception's traceback
        # keeps this frame (and the iterator) alive until the interpreter exits, whose
        # multiprocessing clean-up would then SIGTERM the workers, which ignore it
        # (ignore_stop_signals), and wait for them forever.
        del it
    return last


def _optimizer_step(module, step_fn, batch: dict, optimizer, lr: float, run: _Run,
                    stage: _Stage, step: int) -> dict:
    """One optimiser step at learning rate ``lr``; returns the step's metrics."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)
    with precision_context(run.device, run.cfg.runtime.precision):
        loss, metrics = step_fn(module, batch)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"stage {stage.number} step {step}: loss is "
                                 f"{float(loss.detach())} (metrics {metrics}); lower the "
                                 f"learning rate (stage{stage.number}.optim.lr = {lr:g} at "
                                 f"this step)")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if stage.config.optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.net.parameters(), stage.config.optim.grad_clip)
    optimizer.step()
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    return metrics


def _after_step(run: _Run, stage: _Stage, step: int) -> None:
    """Validation, checkpoints, the ``on_step`` callback and a requested stop, after ``step``
    iterations of ``stage``."""
    cfg, st, dist = run.cfg, stage.config, run.dist
    stop = stop_requested()
    is_ck = step % cfg.logging.checkpoint_every == 0 or step == st.iterations or stop
    is_val = (cfg.validation.every > 0 and step % cfg.validation.every == 0) \
        or step == st.iterations
    if dist.main and is_val and run.valset is not None and len(run.valset) > 0:
        run.result.validation = run.monitor.validation(run.net, stage.number, step,
                                                       run.global_step(stage.number, step))
    if is_ck and dist.main:
        save_checkpoint(run.folder, run.net, stage.optimizer, stage.number, step, run.cfg_dict,
                        run.manifest, keep=cfg.logging.keep_checkpoints)
        if step == st.iterations:  # each stage's end model survives checkpoint pruning
            save_model(run.folder / f"stage{stage.number}.safetensors", run.net,
                       {"stage": stage.number, "step": step, "train_config": run.cfg_dict,
                        "data_manifest_sha256": run.manifest})
    if dist.world > 1 and is_ck:
        torch.distributed.barrier()
    if run.on_step is not None and dist.main:
        run.on_step(stage.number, step)
    if stop:
        raise TrainingInterrupted(
            f"stopped by {stop} after stage {stage.number} step {step}; the checkpoint is in "
            f"{run.folder / 'last.json'}: run again with --resume to continue")
