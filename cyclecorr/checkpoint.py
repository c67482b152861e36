"""Model files: safetensors weights with the configuration in the file's metadata.

A model file is one ``.safetensors`` file whose metadata holds ``"cyclecorr"`` = a JSON object with
at least ``"net"`` (the :class:`~cyclecorr.model.NetConfig` fields) and, for trained models,
``"step"``, ``"stage"``, ``"train_config"``, ``"data_manifest_sha256"`` and ``"code_version"``.
Loading never executes code (safetensors holds tensors and strings only). Writes are atomic.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from cyclecorr._io import atomic_path, atomic_write_bytes, file_sha256
from cyclecorr.model import CorrespondenceNet, build_network, network_config_dict

__all__ = ["save_model", "load_model", "load_weights", "read_metadata", "file_sha256",
           "atomic_write_bytes", "shipped_model_path", "shipped_models", "unwrap_model"]

_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain network inside DistributedDataParallel / ``torch.compile`` wrappers."""
    # DistributedDataParallel / torch.compile wrappers must not leak into key names
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def save_model(path: str | os.PathLike, model: CorrespondenceNet, meta: dict | None = None) -> None:
    """Save ``model``'s weights and configuration (plus ``meta``) to ``path`` atomically."""
    net = unwrap_model(model)
    info = {"net": network_config_dict(net.config), **(meta or {})}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"cyclecorr": json.dumps(info, sort_keys=True)})


def read_metadata(path: str | os.PathLike) -> dict:
    """The ``cyclecorr`` metadata JSON of a model file, as a dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable safetensors model file ({e})") from e
    if "cyclecorr" not in meta:
        raise ValueError(f"{path}: safetensors file has no 'cyclecorr' metadata (not a cyclecorr "
                         "model)")
    try:
        info = json.loads(meta["cyclecorr"])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the 'cyclecorr' metadata is not valid JSON ({e})") from e
    if not isinstance(info, dict):
        raise ValueError(f"{path}: the 'cyclecorr' metadata must be a JSON object, got "
                         f"{type(info).__name__}")
    return info


def load_weights(net: CorrespondenceNet, path: str | os.PathLike, grow: bool = False) -> list[str]:
    """Load the weights of a safetensors file into ``net`` (every tensor must fit: same names and
    shapes). With ``grow=True`` the file may lack the layers ``net`` adds at zero
    (:meth:`~cyclecorr.model.CorrespondenceNet.grown_keys`, e.g. skips on a paper network's
    weights); they keep their zero start. Returns the keys so left; raises ``FileNotFoundError`` /
    ``ValueError`` naming the file (also for a weight holding NaN or infinite values)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: cannot read weights ({e})") from e
    for k, v in state.items():  # a diverged or damaged model: refused, not run into NaN flows
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            n = int((~torch.isfinite(v)).sum())
            raise ValueError(f"{path}: weight {k!r} holds {n} NaN or infinite value(s) of "
                             f"{v.numel()}; the model is unusable")
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of another shape
        raise ValueError(f"{path}: weights do not fit the network "
                         f"({net.config}): {str(e).splitlines()[0]}") from e
    growable = set(net.grown_keys()) if grow else set()
    grown = [k for k in missing if k in growable]
    missing = [k for k in missing if k not in growable]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit the network ({net.config}): missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]}")
    if grown and len(grown) != len(growable):  # a half-grown file: not a zero start
        raise ValueError(f"{path}: has some of the network's skip layers but not all "
                         f"(missing {grown[:5]})")
    return grown


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"
               ) -> tuple[CorrespondenceNet, dict]:
    """Load a model file written by :func:`save_model`. Returns ``(model in eval mode,
    metadata)``."""
    meta = read_metadata(path)
    if not isinstance(meta.get("net"), dict):
        raise ValueError(f"{path}: the 'cyclecorr' metadata has no 'net' object (the network's "
                         f"configuration); not a model file written by cyclecorr")
    try:
        net = build_network(meta["net"])
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: its network configuration is not one this version builds "
                         f"({type(e).__name__}: {e})") from e
    load_weights(net, path)
    meta["sha256"] = file_sha256(path)
    return net.to(device).eval(), meta


def shipped_models(weights_dir: str | os.PathLike | None = None) -> list[dict]:
    """The models shipped inside the package (``cyclecorr/weights/<category>.safetensors``).

    Returns one dict per file, sorted by category: ``category`` (the file's stem), ``file``
    (Path), ``size_bytes``, ``card`` (the model card ``<category>.md`` beside it, or None),
    ``title`` (the card's first heading, or None) and ``net`` (the network configuration from the
    file's metadata; ``{}`` with ``error`` set where the file cannot be read).
    """
    folder = Path(weights_dir) if weights_dir is not None else _WEIGHTS_DIR
    out = []
    for f in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        card = f.with_suffix(".md")
        entry = {"category": f.stem, "file": f, "size_bytes": f.stat().st_size,
                 "card": card if card.is_file() else None, "title": None, "net": {}}
        if entry["card"] is not None:
            for line in card.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith("#"):
                    entry["title"] = line.lstrip("#").strip()
                    break
        try:
            entry["net"] = read_metadata(f).get("net", {})
        except (ValueError, OSError) as e:
            entry["error"] = str(e)
        out.append(entry)
    return out


def shipped_model_path(category: str = "car") -> Path:
    """Path of the model shipped inside the package for ``category``.

    Raises ``FileNotFoundError`` listing the shipped models (category, file, size) where there
    is none for ``category``."""
    p = _WEIGHTS_DIR / f"{category}.safetensors"
    if not p.is_file():
        avail = shipped_models()
        listing = ", ".join(f"{m['category']} ({m['file'].name}, "
                            f"{m['size_bytes'] / 2 ** 20:.1f} MiB)" for m in avail) or "none"
        raise FileNotFoundError(
            f"no shipped model for category {category!r}; shipped models: {listing} "
            f"(`cyclecorr models` lists them). Train one (README, 'Training your own model') "
            f"and load its file with Matcher.from_checkpoint(path)")
    return p
