"""Training checkpoints: model + optimiser + progress, written atomically, resumable exactly.

A run folder holds::

    config.json                    the resolved TrainConfig
    last.json                      pointer to the newest complete checkpoint (written last)
    last.safetensors               a copy of the newest model (for checkpoint.load_model)
    checkpoints/stage{S}-{step:08d}.safetensors        model weights (+ metadata)
    checkpoints/stage{S}-{step:08d}.optim.safetensors  Adam state, flattened (tensors only)
    final.safetensors              the model at the end of the last stage
    log.jsonl, tb/, pictures/      logs

``last.json`` is only replaced after both tensor files of its checkpoint are on disk, so a kill at
any moment leaves the previous checkpoint intact; it records the SHA-256 of both files, the stage,
the completed iterations, the configuration, the data manifest hash and the code version. Nothing
here executes code on load (safetensors + JSON).

``last.safetensors`` is the checkpoint's model file itself (a hard link, or a copy where links are
not possible), put in place just before ``last.json``: a kill between the two leaves it one
checkpoint ahead of the record, and the next start of the run (:func:`repair_last_model`, called
when training starts) makes it the record's model again, so the record decides and the two agree.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cyclecorr import __version__
from cyclecorr._io import atomic_path, atomic_write_bytes, read_format_json
from cyclecorr.checkpoint import file_sha256, load_weights, save_model

__all__ = ["TrainState", "save_checkpoint", "load_checkpoint_pointer", "restore_checkpoint",
           "repair_last_model",
           "flatten_optimizer", "unflatten_optimizer", "code_version", "source_digest"]

FORMAT = "cyclecorr-train-checkpoint/1"


_CODE_VERSION: str | None = None


def code_version() -> str:
    """``cyclecorr.__version__``, the git commit (and ``-dirty``) when run from a checkout, and a
    digest of the package's Python sources (``src.<12 hex>``, :func:`source_digest`).

    The digest names the code that ran even where git's view is wrong or absent (a copied tree
    whose ``.git`` is older than its files read as another commit, ``-dirty``, on a GPU machine).
    Computed once per process: a training run calls it when it starts, so its checkpoints and
    final model name the code that ran, even if the checkout changes (a commit, an edit) while it
    trains."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        _CODE_VERSION = _describe_code()
    return _CODE_VERSION


def source_digest(package_dir: str | os.PathLike | None = None) -> str:
    """SHA-256 (first 12 hex digits) over the relative paths and bytes of every ``*.py`` file
    under ``package_dir`` (default: the installed ``cyclecorr`` package), in sorted order."""
    root = Path(package_dir) if package_dir is not None else Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        if "__pycache__" in f.parts:
            continue
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        h.update(f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def _describe_code() -> str:
    root = Path(__file__).resolve().parents[2]
    src = f"src.{source_digest()}"
    try:
        rev = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty",
                              "--abbrev=12"], capture_output=True, text=True, timeout=5)
        if rev.returncode == 0 and rev.stdout.strip():
            return f"{__version__}+git.{rev.stdout.strip()}.{src}"
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{__version__}+{src}"


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser's ``state_dict`` into tensors (``state.<param>.<name>``) and JSON."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{pid}.{k}"] = v.detach().to("cpu").contiguous().reshape(v.shape)
            else:
                scalars[f"{pid}.{k}"] = v
    meta = {"param_groups": sd["param_groups"], "scalars": scalars}
    return tensors, meta


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Inverse of :func:`flatten_optimizer` → an optimiser ``state_dict``."""
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = v
    for key, v in meta.get("scalars", {}).items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


@dataclass
class TrainState:
    """Where a run stands: ``stage`` (1 or 2) and ``step`` = iterations completed in that stage."""

    stage: int = 1
    step: int = 0
    model_file: str = ""
    optim_file: str = ""
    pointer: dict | None = None


def save_checkpoint(run_dir: str | os.PathLike, net, optimizer, stage: int, step: int,
                    config: dict, manifest_sha256: str, extra: dict | None = None,
                    keep: int = 2) -> Path:
    """Write a checkpoint of (net, optimizer) after ``step`` iterations of ``stage``; atomic.

    Returns the model file's path. Older step checkpoints beyond ``keep`` are removed (after the
    new pointer is in place).
    """
    run = Path(run_dir)
    ck = run / "checkpoints"
    ck.mkdir(parents=True, exist_ok=True)
    stem = f"stage{stage}-{step:08d}"
    model_path = ck / f"{stem}.safetensors"
    optim_path = ck / f"{stem}.optim.safetensors"
    version = code_version()
    meta = {"stage": stage, "step": step, "train_config": config,
            "data_manifest_sha256": manifest_sha256, "code_version": version,
            **(extra or {})}
    save_model(model_path, net, meta)
    tensors, ometa = flatten_optimizer(optimizer)
    with atomic_path(optim_path) as tmp:
        save_file(tensors, str(tmp), metadata={"cyclecorr_optim": json.dumps(ometa)})
    pointer = {"format": FORMAT, "stage": stage, "step": step,
               "model_file": str(model_path.relative_to(run)),
               "optim_file": str(optim_path.relative_to(run)),
               "model_sha256": file_sha256(model_path), "optim_sha256": file_sha256(optim_path),
               "data_manifest_sha256": manifest_sha256, "code_version": version,
               "config": config, **(extra or {})}
    # the model for load_model / Matcher, then the record (the source of truth)
    _place_copy(model_path, run / "last.safetensors")
    atomic_write_bytes(run / "last.json", json.dumps(pointer, indent=1, sort_keys=True).encode())
    # prune older step checkpoints
    olds = sorted(p for p in ck.glob("stage*-*.safetensors")
                  if not p.name.endswith(".optim.safetensors"))
    olds = [p for p in olds if p != model_path]
    for p in olds[:max(0, len(olds) - (keep - 1))]:
        for q in (p, p.with_name(p.name.replace(".safetensors", ".optim.safetensors"))):
            if q.exists():
                q.unlink()
    return model_path


def load_checkpoint_pointer(run_dir: str | os.PathLike) -> dict | None:
    """The ``last.json`` of a run folder (validated), or None when the run has no checkpoint."""
    p = Path(run_dir) / "last.json"
    if not p.is_file():
        return None
    ptr = read_format_json(p, FORMAT, "checkpoint pointer")
    for key in ("model", "optim"):
        f = Path(run_dir) / ptr[f"{key}_file"]
        if not f.is_file():
            raise FileNotFoundError(f"{p}: names {f}, which is missing")
        if file_sha256(f) != ptr[f"{key}_sha256"]:
            raise ValueError(f"{f}: SHA-256 differs from the one recorded in {p} (corrupt file)")
    return ptr


def _place_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` hold ``src``'s bytes, atomically: a hard link renamed into place, or a copy
    where the file system has no links."""
    with atomic_path(dst) as tmp:
        os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def repair_last_model(run_dir: str | os.PathLike, ptr: dict) -> bool:
    """Make ``last.safetensors`` the model that ``last.json`` (``ptr``) records, when a kill
    between writing the two left it another (or none). Returns True when it was replaced."""
    run = Path(run_dir)
    last, model = run / "last.safetensors", run / ptr["model_file"]
    try:
        if last.is_file() and (os.path.samefile(last, model)
                               or file_sha256(last) == ptr["model_sha256"]):
            return False
    except OSError:
        pass
    _place_copy(model, last)
    return True


def restore_checkpoint(run_dir: str | os.PathLike, ptr: dict, net, optimizer=None) -> None:
    """Load the weights (and optimiser state) named by a pointer into ``net`` / ``optimizer``."""
    run = Path(run_dir)
    load_weights(net, run / ptr["model_file"])
    if optimizer is not None:
        path = run / ptr["optim_file"]
        with safe_open(str(path), framework="pt") as f:
            ometa = json.loads((f.metadata() or {})["cyclecorr_optim"])
        tensors = load_file(str(path))
        optimizer.load_state_dict(unflatten_optimizer(tensors, ometa))
        match_state_layout(optimizer)


def match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor (Adam's moments) its parameter's strides.

    Checkpoints store the moments contiguous; a channels-last network's 4-d parameters are not,
    and CUDA's fused Adam refuses moments whose layout differs from the parameter's (a resumed
    channels-last run on a GPU failed at its first step). Values are unchanged.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            for k, v in st.items():
                if (isinstance(v, torch.Tensor) and v.shape == p.shape
                        and v.stride() != p.stride()):
                    st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)
