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
``reduction="sum"``; stage 1 with ``stage1_reduction="sum"``, or "mean" when every pixel is
valid) N processes reach the weights of one
process with the same global batch, up to float summation order.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from cyclecorr._runtime import keep_freed_memory, precision_context, resolve_device
from cyclecorr.checkpoint import atomic_write_bytes, save_model
from cyclecorr.losses import CycleLossConfig
from cyclecorr.model import CorrespondenceNet, build_network
from cyclecorr.train.config import TrainConfig
from cyclecorr.train.data import (QUARTET_KEYS, AugmentedDataset, StepBatchSampler,
                                  SyntheticQuartets, collate, sample_stage1_pairs)
from cyclecorr.train.modules import CycleModule, FlowModule
from cyclecorr.train.state import (load_checkpoint_pointer, restore_checkpoint,
                                   save_checkpoint)
from cyclecorr.train.steps import cycle_step_loss, stage1_step_loss

__all__ = ["train", "TrainResult", "TrainingInterrupted", "build_quartets", "manifest_sha256",
           "DistInfo", "init_distributed", "validate"]


@dataclass
class TrainResult:
    run_dir: Path
    final_model: Path | None
    stages_done: list = field(default_factory=list)
    last_metrics: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _param_groups(net, optim) -> list[dict]:
    """Adam's parameter groups: one, or with ``net.skips`` and ``optim.skips_lr_mult != 1`` the
    skip layers in a second group whose rate is scaled by ``lr_mult``."""
    skips = list(net.flow_skips.parameters())
    if not skips or optim.skips_lr_mult == 1.0:
        return [{"params": list(net.parameters())}]
    ids = {id(p) for p in skips}
    return [{"params": [p for p in net.parameters() if id(p) not in ids]},
            {"params": skips, "lr_mult": float(optim.skips_lr_mult)}]


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the
    environment): NCCL on CUDA, gloo on CPU. Returns rank / world size."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    here = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        here = True
    return DistInfo(rank, world, local, here)


# --------------------------------------------------------------------------- data

def _subset(ds, idx):
    return torch.utils.data.Subset(ds, list(idx))


def manifest_sha256(cfg: TrainConfig, dataset=None) -> str:
    """A hash identifying the training data (recorded in every checkpoint).

    Prefers the dataset's own ``manifest_sha256`` attribute (quartet shards); for synthetic data,
    the generator's parameters.
    """
    import hashlib

    for obj in (dataset, getattr(dataset, "dataset", None)):
        m = getattr(obj, "manifest_sha256", None)
        if m:
            return m() if callable(m) else str(m)
    for obj in (dataset, getattr(dataset, "dataset", None)):
        folder = getattr(obj, "folder", None)
        if folder is not None and (Path(folder) / "manifest.json").is_file():
            from cyclecorr.checkpoint import file_sha256

            return file_sha256(Path(folder) / "manifest.json")
    if isinstance(dataset, (list, tuple)):  # in-memory quartets: hash their contents
        h = hashlib.sha256()
        for item in dataset:
            for k in sorted(item):
                v = item[k]
                h.update(k.encode())
                h.update(v.numpy().tobytes() if isinstance(v, torch.Tensor) else repr(v).encode())
        return h.hexdigest()
    if cfg.data.quartets == "synthetic":
        ident = json.dumps({"synthetic": cfg.data.synthetic_size + cfg.data.val_count,
                            "size": cfg.net.image_size, "seed": cfg.seed})
        return hashlib.sha256(ident.encode()).hexdigest()
    folder = Path(cfg.data.quartets)
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(f"{p.relative_to(folder)}:{p.stat().st_size}\n".encode())
    return h.hexdigest()


class _Resized(torch.utils.data.Dataset):
    """Resamples 128×128 quartets to the network's size (images: area; flows: scaled and
    resampled with the pixel-area convention; matchability: bilinear, threshold 0.5)."""

    def __init__(self, base, size: int):
        self.base, self.size = base, size

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        import torch.nn.functional as F

        item = self.base[i]
        out = {}
        for k, v in item.items():
            if not isinstance(v, torch.Tensor) or v.dim() != 3 or v.shape[-1] == self.size:
                out[k] = v
                continue
            s = self.size / v.shape[-1]
            x = v.float()[None]
            if k.startswith("flow"):
                out[k] = F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                                       align_corners=False)[0] * s
            elif k.startswith("match"):
                out[k] = (F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                                        align_corners=False)[0] > 0.5).float()
            else:
                out[k] = F.interpolate(x, size=(self.size, self.size), mode="area")[0]
        return out


def build_quartets(cfg: TrainConfig):
    """``(train_set, val_set, manifest_sha256)`` of quartet dicts at the network's size.

    The validation set is a fixed, seed-determined subset held out from training.
    """
    S = cfg.net.image_size
    d = cfg.data
    if d.quartets == "synthetic":
        full = SyntheticQuartets(d.synthetic_size + d.val_count, size=S, seed=cfg.seed)
        n_val = d.val_count
        val = _subset(full, range(n_val))
        trainset = _subset(full, range(n_val, len(full)))
        return trainset, val, manifest_sha256(cfg, full)
    folder = Path(d.quartets)
    if not folder.exists():
        raise FileNotFoundError(f"quartet folder not found: {folder} (write it with "
                                "`cyclecorr prepare`, or set data.quartets=synthetic)")
    try:
        from cyclecorr.data import QuartetDataset
    except ImportError as e:  # pragma: no cover - depends on the data room
        raise ImportError(f"cyclecorr.data.QuartetDataset is unavailable ({e})") from e
    full = QuartetDataset(folder)
    n = len(full)
    if n < 2:
        raise ValueError(f"{folder}: {n} quartet(s); training needs at least 2")
    n_val = min(d.val_count, max(1, int(round(n * d.val_fraction))))
    g = torch.Generator().manual_seed(cfg.seed + 7919)
    perm = torch.randperm(n, generator=g).tolist()
    val_idx, train_idx = sorted(perm[:n_val]), sorted(perm[n_val:])
    ds = full if S == 128 else _Resized(full, S)
    return _subset(ds, train_idx), _subset(ds, val_idx), manifest_sha256(cfg, full)


class _GTPairs(torch.utils.data.Dataset):
    """Stage-1 pairs from renders with their ground truth (``data.stage1_targets="ground_truth"``):
    (s1, s2, flow_s1s2, valid = match_s1s2)."""

    def __init__(self, quartets):
        self.q = quartets

    def __len__(self):
        return len(self.q)

    def __getitem__(self, i):
        q = self.q[i]
        return {"src": q["s1"], "tgt": q["s2"], "flow": q["flow_s1s2"], "valid": q["match_s1s2"]}


def build_stage1_pairs(cfg: TrainConfig, quartets, run_dir: Path, dist: DistInfo):
    """The stage-1 training pairs (SIFT flow targets cached under the run or ``data.sift_cache``)."""
    if cfg.data.stage1_targets == "ground_truth":
        return _GTPairs(quartets)
    from cyclecorr.train.data import SiftPairs

    pairs = sample_stage1_pairs(len(quartets), cfg.data.stage1_pairs, cfg.seed,
                                cfg.data.stage1_pair_source)
    cache = Path(cfg.data.sift_cache) if cfg.data.sift_cache else run_dir / "siftflow"
    if dist.world > 1:
        import torch.distributed as dist_

        if dist.main:  # rank 0 computes, the others wait and then read the cache
            SiftPairs(quartets, pairs, cache, cfg.data.sift_workers, cfg.logging.progress)
        dist_.barrier()
    return SiftPairs(quartets, pairs, cache, cfg.data.sift_workers,
                     cfg.logging.progress and dist.main)


# --------------------------------------------------------------------------- logging

class _Logger:
    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, resume_at: int | None):
        self.enabled = enabled
        self.path = run_dir / "log.jsonl"
        self.tb = None
        if not enabled:
            return
        if resume_at is not None and self.path.exists():
            # drop records written after the checkpoint we resume from (they will be redone)
            keep = []
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                if rec.get("global_step", -1) <= resume_at:
                    keep.append(line)
            atomic_write_bytes(self.path, ("\n".join(keep) + ("\n" if keep else "")).encode())
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_at)
            except Exception as e:  # tensorboard missing or broken: keep the JSONL log
                print(f"TensorBoard disabled: {e}")

    def log(self, rec: dict, global_step: int, prefix: str):
        if not self.enabled:
            return
        rec = {"time": time.time(), "global_step": global_step, **rec}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
            f.flush()
        if self.tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k not in ("time", "global_step", "step"):
                    self.tb.add_scalar(f"{prefix}/{k}", v, global_step)
            self.tb.flush()

    def close(self):
        if self.tb is not None:
            self.tb.close()


# --------------------------------------------------------------------------- validation

@torch.no_grad()
def validate(net: CorrespondenceNet, val_set, cfg: TrainConfig, device,
             picture_path: Path | None = None) -> dict:
    """Synthetic-ground-truth validation on the held-out quartets (see ValidationConfig)."""
    from cyclecorr.losses import compose_cycle, leg_magnitudes

    was_training = net.training
    net.eval()
    thr = cfg.validation.pck_alpha * cfg.net.image_size
    tot = {"cycle_epe": 0.0, "cycle_pck": 0.0, "direct_epe": 0.0, "direct_pck": 0.0,
           "match_acc": 0.0}
    legs: dict[str, float] = {}
    n_batches = 0
    n_pix = 0.0
    n_all = 0
    cyc = CycleModule(net)
    loader = torch.utils.data.DataLoader(val_set, batch_size=8, shuffle=False, collate_fn=collate)
    first = None
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        p = cyc(batch["s1"], batch["r1"], batch["r2"], batch["s2"])
        flow_cyc, match_cyc = compose_cycle(p["flow_s1r1"], p["flow_r1r2"], p["flow_r2s2"],
                                            p["match_r1r2"], cfg.loss.padding)
        direct = net(batch["s1"], batch["s2"])["flow"]
        m = batch["match_s1s2"]
        gt = batch["flow_s1s2"]
        for name, f in (("cycle", flow_cyc), ("direct", direct)):
            e = (f - gt).norm(dim=1, keepdim=True)
            tot[f"{name}_epe"] += float((e * m).sum())
            tot[f"{name}_pck"] += float(((e < thr).float() * m).sum())
        n_pix += float(m.sum())
        tot["match_acc"] += float(((match_cyc > 0.5).float() == (m > 0.5).float()).float().sum())
        n_all += m.numel()
        for k, v in leg_magnitudes(p["flow_s1r1"], p["flow_r1r2"], p["flow_r2s2"]).items():
            legs[k] = legs.get(k, 0.0) + v
        n_batches += 1
        if first is None:
            first = (batch, p, flow_cyc, match_cyc)
    out = {k: v / max(n_pix, 1e-6) for k, v in tot.items() if k != "match_acc"}
    out["match_acc"] = tot["match_acc"] / max(n_all, 1)
    out.update({k: v / max(n_batches, 1) for k, v in legs.items()})
    out["pck_alpha"] = cfg.validation.pck_alpha
    if picture_path is not None and first is not None:
        try:
            from cyclecorr.train.pictures import cycle_picture

            cycle_picture(first[0], first[1], first[2], first[3], picture_path,
                          n=cfg.validation.picture_quartets)
        except Exception as e:  # pictures are a nicety: never stop training for them
            print(f"could not write {picture_path}: {e}")
    net.train(was_training)
    return out


class _RealPCK:
    """Keypoint PCK on a small fixed real subset (monitoring only, never model selection)."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.samples = None
        self.reason = ""
        try:
            from cyclecorr.evaluate.datasets import load_pf_willow
            from cyclecorr._paths import shared_data_dir

            if shared_data_dir() is None:
                raise FileNotFoundError("shared data folder not found")
            # a fixed subset: the first `per` images of each class of the category
            # (about validation.real_pairs ordered pairs in all)
            data = load_pf_willow(None, limit=1)
            cat = cfg.category.lower()
            classes = [k for k in data if k.lower().startswith(cat)] or list(data)
            per = max(2, int(round(math.sqrt(cfg.validation.real_pairs / len(classes)))) + 1)
            data = load_pf_willow(None, classes=classes, limit=per)
            self.samples = {k: list(v)[:per] for k, v in data.items()}
        except Exception as e:
            self.reason = f"{type(e).__name__}: {e}"

    def __call__(self, net) -> dict:
        if self.samples is None:
            return {}
        from cyclecorr.evaluate.benchmarks import evaluate_pck_pf_willow
        from cyclecorr.evaluate.methods import NetworkMethod
        from cyclecorr.matcher import Matcher

        was = net.training
        # the training network as it is (its memory format stays), through the one inference path
        matcher = Matcher(net, device=next(net.parameters()).device, channels_last=False)
        method = NetworkMethod(matcher, name="training")
        try:
            res = evaluate_pck_pf_willow(method, samples_by_class=self.samples, alphas=(0.1,))
        finally:
            net.train(was)
        pck = res["pck"]["mean_over_groups"]["per_pair"]
        return {"real_pck@0.1": float(pck.get("0.1", pck.get(0.1, float("nan")))),
                "real_pairs": res["n_pairs"]}


# --------------------------------------------------------------------------- the loop

def _device(cfg: TrainConfig, dist: DistInfo) -> torch.device:
    """``runtime.device`` resolved (:func:`cyclecorr._runtime.resolve_device`); a CUDA device
    without an index is this process's GPU (its local rank under DDP)."""
    device = resolve_device(cfg.runtime.device)
    if device.type == "cuda" and device.index is None:
        if not torch.cuda.is_available():
            raise ValueError("runtime.device=cuda but CUDA is not available")
        return torch.device("cuda", dist.local_rank if dist.world > 1 else torch.cuda.current_device())
    return device


def _set_threads(cfg: TrainConfig):
    n = int(os.environ.get("CYCLECORR_THREADS", cfg.runtime.threads or 0))
    if n > 0:
        torch.set_num_threads(n)


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
    run = Path(run_dir)
    _set_threads(cfg)
    dist0 = DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                     int(os.environ.get("LOCAL_RANK", 0)))
    device = _device(cfg, dist0)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL needs each process on its own GPU before init
    if device.type == "cpu" and cfg.runtime.keep_memory:
        keep_freed_memory()  # no page faults per step on activations (cyclecorr._runtime)
    if device.type == "cuda" and not cfg.runtime.deterministic:
        # fixed input sizes: let cuDNN pick the fastest convolution algorithms once
        torch.backends.cudnn.benchmark = True
    if cfg.runtime.deterministic and device.type == "cuda":
        # CPU kernels are already deterministic for a fixed thread count (and this call
        # imports torch._inductor, ~7 s), so it is only made for CUDA
        torch.use_deterministic_algorithms(True, warn_only=True)
    dist = init_distributed(device)
    progress = cfg.logging.progress if progress is None else progress
    cfg_dict = cfg.to_dict()

    ptr = load_checkpoint_pointer(run)
    if ptr is not None and not resume:
        raise ValueError(f"{run}: holds a checkpoint (stage {ptr['stage']}, step {ptr['step']}); "
                         "pass --resume to continue it or choose another --out folder")
    if resume and ptr is not None and _training_part(ptr["config"]) != _training_part(cfg_dict):
        a, b = _training_part(ptr["config"]), _training_part(cfg_dict)
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise ValueError(f"{run / 'last.json'}: the run was started with another configuration "
                         f"(sections differ: {diff}); resume with the run's config.json")
    if dist.main:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run / "config.json", json.dumps(cfg_dict, indent=1).encode())

    torch.manual_seed(cfg.seed)
    net = build_network(cfg.net).to(device)
    if cfg.runtime.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if dist.world > 1 and cfg.net.norm == "batch":
        if device.type == "cuda":
            # batch statistics over the global batch, so N processes = 1 process
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)  # converts net's layers in place
        elif dist.main:
            print("note: net.norm=batch under CPU DDP uses per-process batch statistics "
                  "(SyncBatchNorm needs CUDA), so the result differs from one process")

    if quartets is None:
        trainset, valset, manifest = build_quartets(cfg)
    else:
        trainset, valset = quartets, val_quartets
        manifest = manifest_sha256(cfg, quartets)
    if ptr is not None and ptr.get("data_manifest_sha256") not in (None, manifest):
        raise ValueError(f"{run / 'last.json'}: the training data changed since the checkpoint "
                         f"(manifest {ptr['data_manifest_sha256'][:12]}… vs {manifest[:12]}…)")

    resume_global = None
    if ptr is not None:
        resume_global = _global_step(cfg, ptr["stage"], ptr["step"])
    logger = _Logger(run, dist.main, cfg.logging.tensorboard, resume_global)
    if dist.main:
        logger.log({"event": "start" if ptr is None else "resume", "config_name": cfg.name,
                    "code_version": _code_version(), "world_size": dist.world,
                    "device": str(device),
                    "data_manifest_sha256": manifest, "n_train": len(trainset),
                    "n_val": len(valset) if valset is not None else 0,
                    "note": "validation sets are held out and used for monitoring only, "
                            "never for model selection; real evaluation images are never "
                            "trained on"}, resume_global or 0, "run")
    real_pck = _RealPCK(cfg) if (cfg.validation.real_pck and dist.main) else None
    if real_pck is not None and real_pck.samples is None and dist.main:
        logger.log({"event": "real_pck_skipped", "reason": real_pck.reason}, resume_global or 0, "run")

    result = TrainResult(run, None)
    optimizer = None
    if ptr is not None:
        restore_checkpoint(run, ptr, net)
    elif cfg.init:  # start from a model file's weights (they must fit the network)
        from cyclecorr.checkpoint import load_weights

        grown = load_weights(net, cfg.init, grow=True)
        if grown and dist.main:
            logger.log({"event": "init_grown", "init": str(cfg.init), "zero_layers": grown},
                       resume_global or 0, "run")
    with _graceful_stop(dist.world == 1):
        try:
            for stage in (1, 2):
                st = cfg.stage1 if stage == 1 else cfg.stage2
                if st.iterations == 0:
                    continue
                start = 0
                restore_optim = False
                if ptr is not None:
                    if ptr["stage"] > stage or (ptr["stage"] == stage and ptr["step"] >= st.iterations):
                        result.stages_done.append(stage)
                        continue  # done before the interruption
                    if ptr["stage"] == stage:
                        start, restore_optim = ptr["step"], True
                    if ptr["stage"] < stage and not st.reset_optimizer:
                        restore_optim = True
                if optimizer is None or st.reset_optimizer or restore_optim:
                    optimizer = torch.optim.Adam(_param_groups(net, st.optim), lr=st.optim.lr,
                                                 betas=tuple(st.optim.betas), eps=st.optim.eps,
                                                 weight_decay=st.optim.weight_decay,
                                                 fused=True)  # one kernel per step (CPU and CUDA)
                    if restore_optim and ptr is not None:
                        restore_checkpoint(run, ptr, net, optimizer)
                ptr = None  # consumed
                result.last_metrics = _run_stage(
                    stage, st, cfg, net, optimizer, trainset, valset, run, start, device, dist,
                    logger, manifest, on_step, progress, real_pck, result)
                result.stages_done.append(stage)
            if dist.main:
                final = run / "final.safetensors"
                save_model(final, net, {"stage": max(result.stages_done or [0]),
                                        "step": _global_step(cfg, 3, 0), "train_config": cfg_dict,
                                        "data_manifest_sha256": manifest,
                                        "code_version": _code_version()})
                result.final_model = final
                try:
                    from cyclecorr.train.card import write_model_card

                    write_model_card(run)
                except Exception as e:  # the card is documentation: never fail a finished run
                    print(f"could not write {run / 'MODEL_CARD.md'}: {e}")
                logger.log({"event": "done", "final_model": str(final)}, _global_step(cfg, 3, 0), "run")
                if progress:
                    print(f"training done: final model {final}")
        finally:
            logger.close()
            if dist.initialised_here:
                import torch.distributed as dist_

                dist_.destroy_process_group()
    return result


def _training_part(cfg_dict: dict) -> dict:
    """The part of a configuration that determines the weights: a resumed run may change how it
    runs and reports (runtime, logging, validation, worker counts) but nothing else, except the
    arithmetic precision (``runtime.precision``), which stays. (Exact equality with an
    uninterrupted run also needs the same runtime.threads.)"""
    d = json.loads(json.dumps(cfg_dict))
    precision = (d.get("runtime") or {}).get("precision", "float32")
    for k in ("runtime", "logging", "validation"):
        d.pop(k, None)
    if precision != "float32":  # (runs from before the option compare as float32)
        d["precision"] = precision
    for k in ("workers", "sift_workers"):
        d.get("data", {}).pop(k, None)
    return d


def _code_version():
    from cyclecorr.train.state import code_version

    return code_version()


def _global_step(cfg: TrainConfig, stage: int, step: int) -> int:
    return (cfg.stage1.iterations if stage > 1 else 0) + \
        (cfg.stage2.iterations if stage > 2 else 0) + step


def _run_stage(stage, st, cfg, net, optimizer, trainset, valset, run, start, device, dist,
               logger, manifest, on_step, progress, real_pck, result) -> dict:
    from tqdm.auto import tqdm

    if stage == 1:
        base = build_stage1_pairs(cfg, trainset, run, dist)
        keys = ("src", "tgt", "flow", "valid")
        module = FlowModule(net)
        step_fn = lambda m, b: stage1_step_loss(m, b, cfg.stage1_reduction)  # noqa: E731
    else:
        base = trainset
        keys = QUARTET_KEYS
        module = CycleModule(net)
        loss_cfg = CycleLossConfig(**cfg.loss.to_dict()) if not isinstance(
            cfg.loss, CycleLossConfig) else cfg.loss
        step_fn = lambda m, b: cycle_step_loss(m, b, loss_cfg)  # noqa: E731
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        module = DDP(module, device_ids=[device.index] if device.type == "cuda" else None)
    if stage == 2:
        real_keys, render_keys = ("r1", "r2"), ("s1", "s2")
    elif cfg.data.stage1_targets == "ground_truth":  # render pairs
        real_keys, render_keys = (), ("src", "tgt")
    else:  # real pairs with SIFT-flow targets
        real_keys, render_keys = ("src", "tgt"), ()
    ds = AugmentedDataset(base, cfg.seed + 1000 * stage, cfg.augment.hflip,
                          cfg.augment.color_jitter, keys=keys, real_keys=real_keys,
                          render_background=cfg.augment.render_background,
                          render_keys=render_keys, zoom=cfg.augment.zoom,
                          zoom_range=(cfg.augment.zoom_min, cfg.augment.zoom_max),
                          zoom_shift=cfg.augment.zoom_shift, zoom_aspect=cfg.augment.zoom_aspect,
                          zoom_fill=cfg.augment.zoom_fill,
                          self_warp=stage == 2 and cfg.loss.warp_weight > 0,
                          warp_deform=cfg.augment.warp_deform,
                          warp_deform_grid=cfg.augment.warp_deform_grid,
                          warp_jitter=cfg.augment.warp_jitter)
    sampler = StepBatchSampler(len(ds), st.batch_size, cfg.seed + stage, start, st.iterations,
                               dist.rank, dist.world)
    loader = torch.utils.data.DataLoader(
        ds, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.data.workers,
        persistent_workers=False, pin_memory=device.type == "cuda",
        prefetch_factor=4 if cfg.data.workers > 0 else None,
        worker_init_fn=ignore_stop_signals if cfg.data.workers > 0 else None)
    net.train()
    acc: dict[str, float] = {}
    n_acc = 0
    t_data = t_comp = 0.0
    t_last = time.perf_counter()
    bar = tqdm(total=st.iterations, initial=start, desc=f"stage {stage}", unit="it",
               disable=not (progress and dist.main), dynamic_ncols=True)
    step = start
    last = {}
    ck_every = cfg.logging.checkpoint_every
    val_every = cfg.validation.every
    cfg_dict = cfg.to_dict()
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
            for g in optimizer.param_groups:
                g["lr"] = lr * g.get("lr_mult", 1.0)
            with precision_context(device, cfg.runtime.precision):
                loss, metrics = step_fn(module, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"stage {stage} step {step}: loss is {float(loss)} "
                                         f"(metrics {metrics}); lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if st.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(net.parameters(), st.optim.grad_clip)
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t2 = time.perf_counter()
            t_data += t1 - t0
            t_comp += t2 - t1
            step += 1
            for k, v in metrics.items():
                acc[k] = acc.get(k, 0.0) + float(v)
            n_acc += 1
            bar.update(1)
            if dist.main:
                bar.set_postfix(loss=f"{metrics['loss']:.4g}", lr=f"{lr:.2g}", refresh=False)
            gstep = _global_step(cfg, stage, step)
            if dist.main and (step % cfg.logging.log_every == 0 or step == st.iterations):
                now = time.perf_counter()
                last = {k: v / n_acc for k, v in acc.items()}
                rec = {"stage": stage, "step": step, "lr": lr, **last,
                       "it_per_s": n_acc / max(now - t_last, 1e-9),
                       "data_share": t_data / max(t_data + t_comp, 1e-9)}
                logger.log(rec, gstep, f"stage{stage}/train")
                acc, n_acc, t_data, t_comp, t_last = {}, 0, 0.0, 0.0, now
            stop = _STOP["requested"]
            is_ck = step % ck_every == 0 or step == st.iterations or stop
            is_val = (val_every > 0 and step % val_every == 0) or step == st.iterations
            if dist.main and is_val and valset is not None and len(valset) > 0:
                pic = run / "pictures" / f"stage{stage}-{step:08d}.png" \
                    if cfg.validation.pictures else None
                v = validate(net, valset, cfg, device, pic)
                if real_pck is not None:
                    try:
                        v.update(real_pck(net))
                    except Exception as e:
                        v["real_pck_error"] = f"{type(e).__name__}: {e}"
                        real_pck.samples = None
                logger.log({"stage": stage, "step": step, "event": "validation", **v}, gstep,
                           f"stage{stage}/val")
                result.validation = v
            if is_ck and dist.main:
                save_checkpoint(run, net, optimizer, stage, step, cfg_dict, manifest,
                                keep=cfg.logging.keep_checkpoints)
                if step == st.iterations:  # each stage's end model survives checkpoint pruning
                    save_model(run / f"stage{stage}.safetensors", net,
                               {"stage": stage, "step": step, "train_config": cfg_dict,
                                "data_manifest_sha256": manifest})
            if dist.world > 1 and is_ck:
                import torch.distributed as dist_

                dist_.barrier()
            if on_step is not None and dist.main:
                on_step(stage, step)
            if stop:
                raise TrainingInterrupted(
                    f"stopped by {_STOP['requested']} after stage {stage} step {step}; the "
                    f"checkpoint is in {run / 'last.json'}: run again with --resume to continue")
    finally:
        bar.close()
        # Shut the loader's workers down now, whatever ends the stage: an exception's traceback
        # keeps this frame (and the iterator) alive until the interpreter exits, whose
        # multiprocessing clean-up would then SIGTERM the workers, which ignore it
        # (ignore_stop_signals), and wait for them forever.
        del it
    return last


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader workers ignore SIGINT / SIGTERM: a Ctrl-C (sent to the whole process group) or a
    ``pkill -f`` that matches the workers' command line too must not kill them mid-batch; the main
    process decides (it finishes the iteration, checkpoints and shuts the workers down), and
    workers still exit when the main process ends."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after Ctrl-C / SIGTERM once the current iteration is finished and checkpointed."""


_STOP = {"requested": None}


@contextlib.contextmanager
def _graceful_stop(enabled: bool):
    """While training in a single process, SIGINT / SIGTERM finish the current iteration, write a
    checkpoint and stop (a second Ctrl-C stops at once). Under DDP the default handlers stay
    (ranks would have to agree on the step); checkpoints every ``checkpoint_every`` cover it."""
    import signal
    import threading

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
