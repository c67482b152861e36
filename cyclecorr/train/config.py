"""Training configuration: a tree of dataclasses loaded from JSON presets, with overrides.

Presets ship as package data in ``cyclecorr/configs/<name>.json`` (``paper``, ``cpu``, ``demo``).
A preset holds only the fields it changes from the defaults below; every field is documented here.
Command-line overrides use dotted keys, ``--set stage2.batch_size=6 net.width=0.5``; values are
parsed as JSON where possible (``true``, ``1e-3``, ``[1, 2]``), else kept as strings.

The resolved configuration is written to the run folder (``config.json``) and stored in every
checkpoint, so a run can be reproduced from its folder alone.

Choices the paper leaves open are fields here (see ``docs`` of each dataclass); paper values are
the defaults where the paper gives one.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cyclecorr._runtime import PRECISIONS
from cyclecorr.losses import CycleLossConfig
from cyclecorr.model import NetConfig

__all__ = ["ZOOM_FILLS", "TrainConfig", "StageConfig", "OptimConfig", "DataConfig", "AugmentConfig",
           "LoggingConfig", "ValidationConfig", "RuntimeConfig", "load_config", "preset_path",
           "list_presets", "apply_overrides", "PRESETS_DIR"]

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"

#: What a re-framed photo shows outside its old frame (``AugmentConfig.zoom_fill``).
ZOOM_FILLS = ("border", "texture")


@dataclass
class OptimConfig:
    """Adam with a step schedule: ``lr(t) = lr · gamma^(t // decay_every)``.

    Paper: Adam β = (0.9, 0.999), lr 0.001, halved every 50k iterations. ``weight_decay`` and
    ``grad_clip`` (max global gradient norm; 0 = off) are not in the paper (default off).
    ``skips_lr_mult``: the learning rate of the flow decoder's skip layers (``net.skips``) is
    ``lr(t) · skips_lr_mult``: layers grown at zero on a trained network (``init``) learn from
    the fine-tuning's small rate at a pace of their own (with 1, a 2,000-iteration run at 2.5e-4
    left their weights at |w| ≈ 0.003, docs/RESULTS.md).
    """

    lr: float = 1e-3
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decay_every: int = 50_000
    gamma: float = 0.5
    warmup: int = 0
    grad_clip: float = 0.0
    skips_lr_mult: float = 1.0

    def lr_at(self, step: int) -> float:
        """Learning rate of iteration ``step`` (0-based): a pure function of the step."""
        lr = self.lr * self.gamma ** (step // self.decay_every if self.decay_every > 0 else 0)
        if self.warmup > 0 and step < self.warmup:
            lr *= (step + 1) / self.warmup
        return lr


@dataclass
class StageConfig:
    """One training stage.

    ``iterations``: optimiser steps (paper: 200k; 0 skips the stage). ``batch_size``: global batch
    (pairs in stage 1 — paper 40; quartets in stage 2 — paper 10), split evenly across DDP
    processes. Each stage starts a fresh Adam state (the paper does not say; stage 2 is a new
    objective, so its moments restart) — ``reset_optimizer=false`` keeps stage 1's moments.
    """

    iterations: int = 200_000
    batch_size: int = 10
    optim: OptimConfig = field(default_factory=OptimConfig)
    reset_optimizer: bool = True


@dataclass
class DataConfig:
    """Where the training data comes from.

    - ``quartets``: folder of quartet shards written by ``cyclecorr prepare`` (data room's
      ``QuartetDataset``), or ``"synthetic"`` for procedurally generated affine quartets (tests,
      smoke runs). Relative paths are resolved against the current directory.
    - ``stage1_pairs``: number of (r1, r2)-style real pairs sampled from the training quartets for
      stage 1 (paper: "randomly sampled image pairs from the training quartets"); their SIFT-flow
      targets are cached in ``sift_cache`` (default ``<run>/siftflow``). The pair list is a pure
      function of ``seed``. ``stage1_pair_source``: ``"quartet"`` (default: the real pair r1, r2
      of a quartet — two cars at nearby viewpoints, the pairs stage 2 decodes, and where SIFT flow
      is meaningful; quartets drawn without repetition) or ``"random"`` (r1 of one quartet with
      r2 of another: any two real images). The paper's "randomly sampled image pairs from the
      training quartets" fits both readings.
    - ``stage1_targets``: ``"siftflow"`` (paper) or ``"ground_truth"`` (regress the renderer's
      s1→s2 flow on render pairs instead; the paper found SIFT-flow initialisation better; useful
      for smoke tests and the demo, where no SIFT flow is computed).
    - ``synthetic_size``: number of quartets when ``quartets == "synthetic"``.
    - ``val_fraction``: share of quartets held out for synthetic-ground-truth validation (never
      trained on); ``val_count`` caps it.
    - ``workers``: data-loader worker processes (0 = in the main process).
    """

    quartets: str = "synthetic"
    stage1_pairs: int = 1000
    stage1_pair_source: str = "quartet"
    stage1_targets: str = "siftflow"
    sift_cache: str = ""
    sift_workers: int = 2
    synthetic_size: int = 256
    val_fraction: float = 0.02
    val_count: int = 32
    workers: int = 0


@dataclass
class AugmentConfig:
    """Data augmentation (the paper mentions none). ``hflip``: probability of a horizontal flip of
    a whole training item (both images of a pair, or all four of a quartet, with the flow's x
    negated and the fields mirrored). ``color_jitter``: amplitude of a random per-image brightness /
    contrast change applied to real images only (0 = off). ``render_background``: probability of
    replacing the black background of the renders (s1, s2; the render pairs of a ground-truth
    stage 1) by random colour textures, so a render cannot be told from a photo by its empty
    background (not in the paper; 0 = off). ``zoom``: probability of re-framing the two sides
    of an item independently (side 1 = s1 with r1, side 2 = s2 with r2; a stage-1 pair's source
    and target): each side is magnified by a log-uniform factor in ``[zoom_min, zoom_max]``
    (< 1 shows the object smaller, with ``zoom_fill`` around a photo: ``"border"`` repeats its
    edge pixels, ``"texture"`` shows a random colour texture), x/y by up to ±``zoom_aspect``
    apart, and shifted by up to ``zoom_shift`` × size per axis; the ground-truth flow follows
    exactly. Tight VOC crops otherwise never show the scale and position changes of whole
    photos (PF-WILLOW); not in the paper; 0 = off. ``warp_deform``, ``warp_deform_grid``,
    ``warp_jitter`` shape the self-warp pair of ``loss.warp_weight`` (a photo against a
    re-framed copy of itself): its source is bent by a smooth random displacement of up to about
    ``warp_deform`` px (offsets on a ``warp_deform_grid``² lattice, bicubic in between) and each
    side gets its own brightness / contrast change of amplitude ``warp_jitter``, so the copy
    differs from the photo the way another object's photo does, not only by an affine
    re-framing of identical pixels; the flow stays exact (not in the paper; 0 = off). Random
    draws are a pure function of (seed, step, item index), so resume is exact without saving
    RNG state."""

    hflip: float = 0.5
    color_jitter: float = 0.0
    render_background: float = 0.0
    zoom: float = 0.0
    zoom_min: float = 0.6
    zoom_max: float = 1.3
    zoom_shift: float = 0.15
    zoom_aspect: float = 0.1
    zoom_fill: str = "border"
    warp_deform: float = 0.0
    warp_deform_grid: int = 4
    warp_jitter: float = 0.0


@dataclass
class LoggingConfig:
    """``log_every``: iterations between JSONL/TensorBoard records (metrics are averaged over the
    interval); ``checkpoint_every``: iterations between checkpoints (one is always written at the
    end of each stage); ``keep_checkpoints``: how many step checkpoints to keep;
    ``tensorboard``: write TensorBoard events to ``<run>/tb``; ``progress``: tqdm bar."""

    log_every: int = 50
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    tensorboard: bool = True
    progress: bool = True


@dataclass
class ValidationConfig:
    """Periodic validation (monitoring only, never model selection).

    - ``every``: iterations between validations (0 = only at the end of each stage).
    - synthetic ground truth: EPE / PCK of the composed cycle and of the direct s1→s2 prediction on
      the held-out quartets; ``pck_alpha``: threshold α·image_size.
    - ``real_pck``: keypoint PCK on a small fixed subset of a real evaluation set through the
      evaluation room (``real_dataset``, ``real_pairs`` pairs); these images are never trained on.
    - ``pictures``: write a picture of the cycle on ``picture_quartets`` validation quartets.
    """

    every: int = 1000
    pck_alpha: float = 0.1
    real_pck: bool = True
    real_dataset: str = "pf-willow"
    real_pairs: int = 50
    pictures: bool = True
    picture_quartets: int = 4


@dataclass
class RuntimeConfig:
    """``threads``: ``torch.set_num_threads`` (0 = leave torch's default; env
    ``CYCLECORR_THREADS`` overrides); ``device``: ``"auto"`` (CUDA when present), ``"cpu"``,
    ``"cuda"``; ``channels_last``: memory format of the network; ``deterministic``: request
    deterministic kernels on CUDA (slower; CPU kernels are deterministic for a fixed thread
    count, which exact resume needs: resume with the same ``threads``); ``keep_memory``: on a
    CPU device, let the process keep freed memory for the next step instead of returning it to
    the kernel (glibc only; :func:`cyclecorr._runtime.keep_freed_memory`: no page faults per
    step, results unchanged); ``precision``: ``"float32"`` (default) or ``"bf16"``, the
    network's forward under bf16 autocast in training steps (its outputs, the composition and the
    losses stay float32; validation stays float32); about 1.6× the CPU step on a CPU with bf16
    units (docs/RESULTS.md), far slower on one without."""

    threads: int = 0
    device: str = "auto"
    channels_last: bool = False
    deterministic: bool = True
    keep_memory: bool = True
    precision: str = "float32"


@dataclass
class TrainConfig:
    """Everything a training run depends on (see the module docstring).

    ``init``: a model file (safetensors, as written by training) whose weights the network starts
    from instead of a random initialisation; with ``stage1.iterations=0`` this fine-tunes an
    existing model with the cycle only. Empty: random initialisation (seeded).
    """

    name: str = "custom"
    seed: int = 0
    category: str = "car"
    init: str = ""
    net: NetConfig = field(default_factory=NetConfig)
    loss: CycleLossConfig = field(default_factory=CycleLossConfig)
    stage1: StageConfig = field(default_factory=lambda: StageConfig(batch_size=40))
    stage1_reduction: str = "mean"
    stage2: StageConfig = field(default_factory=lambda: StageConfig(batch_size=10))
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict:
        return _to_jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> TrainConfig:
        return _build(cls, d, where)

    def validate(self) -> None:
        for st_name in ("stage1", "stage2"):
            st = getattr(self, st_name)
            if st.iterations < 0:
                raise ValueError(f"{st_name}.iterations must be ≥ 0, got {st.iterations}")
            if st.batch_size < 1:
                raise ValueError(f"{st_name}.batch_size must be ≥ 1, got {st.batch_size}")
            if st.optim.lr <= 0:
                raise ValueError(f"{st_name}.optim.lr must be positive, got {st.optim.lr}")
            if not st.optim.skips_lr_mult > 0:
                raise ValueError(f"{st_name}.optim.skips_lr_mult must be positive, got "
                                 f"{st.optim.skips_lr_mult}")
        if self.stage1_reduction not in ("sum", "mean"):
            raise ValueError("stage1_reduction must be 'sum' or 'mean', got "
                             f"{self.stage1_reduction!r}")
        if self.data.stage1_pair_source not in ("quartet", "random"):
            raise ValueError("data.stage1_pair_source must be 'quartet' or 'random', got "
                             f"{self.data.stage1_pair_source!r}")
        if self.data.stage1_targets not in ("siftflow", "ground_truth"):
            raise ValueError("data.stage1_targets must be 'siftflow' or 'ground_truth', got "
                             f"{self.data.stage1_targets!r}")
        if not 0 <= self.augment.hflip <= 1:
            raise ValueError(f"augment.hflip must be in [0, 1], got {self.augment.hflip}")
        a = self.augment
        if not 0 <= a.zoom <= 1:
            raise ValueError(f"augment.zoom must be in [0, 1], got {a.zoom}")
        if not 0 < a.zoom_min <= a.zoom_max:
            raise ValueError("augment.zoom_min and zoom_max must satisfy 0 < zoom_min ≤ zoom_max, "
                             f"got {a.zoom_min}, {a.zoom_max}")
        if not (0 <= a.zoom_shift <= 1 and 0 <= a.zoom_aspect < 1):
            raise ValueError("augment.zoom_shift must be in [0, 1] and zoom_aspect in [0, 1), got "
                             f"{a.zoom_shift}, {a.zoom_aspect}")
        if a.warp_deform < 0 or a.warp_deform_grid < 2 or not 0 <= a.warp_jitter < 1:
            raise ValueError("augment.warp_deform must be ≥ 0, warp_deform_grid ≥ 2 and "
                             f"warp_jitter in [0, 1), got {a.warp_deform}, "
                             f"{a.warp_deform_grid}, {a.warp_jitter}")
        if a.zoom_fill not in ZOOM_FILLS:
            raise ValueError(f"augment.zoom_fill must be one of {ZOOM_FILLS}, got {a.zoom_fill!r}")
        if self.runtime.precision not in PRECISIONS:
            raise ValueError(f"runtime.precision must be one of {PRECISIONS}, got "
                             f"{self.runtime.precision!r}")
        if self.logging.checkpoint_every < 1:
            raise ValueError("logging.checkpoint_every must be ≥ 1")


def _to_jsonable(x):
    if isinstance(x, dict):
        return {k: _to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_jsonable(v) for v in x]
    return x


def _build(cls, d: Any, where: str):
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected an object for {cls.__name__}, got {type(d).__name__}")
    d = {k: v for k, v in d.items() if not str(k).startswith("_")}  # "_doc" comments
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} for {cls.__name__} "
                         f"(known: {sorted(known)})")
    defaults = cls()
    kwargs = {}
    for name in known:
        cur = getattr(defaults, name)
        if name not in d:
            kwargs[name] = cur
            continue
        val = d[name]
        if dataclasses.is_dataclass(cur):
            base = asdict(cur)
            if not isinstance(val, dict):
                raise ValueError(f"{where}.{name}: expected an object, got {val!r}")
            merged = _deep_merge(base, val)
            kwargs[name] = _build(type(cur), merged, f"{where}.{name}")
        else:
            if isinstance(cur, tuple):
                val = tuple(val)
            elif isinstance(cur, bool):
                if not isinstance(val, bool):
                    raise ValueError(f"{where}.{name}: expected true/false, got {val!r}")
            elif isinstance(cur, int) and not isinstance(cur, bool):
                if isinstance(val, float) and val.is_integer():
                    val = int(val)
                if not isinstance(val, int) or isinstance(val, bool):
                    raise ValueError(f"{where}.{name}: expected an integer, got {val!r}")
            elif isinstance(cur, float):
                if not isinstance(val, (int, float)) or isinstance(val, bool):
                    raise ValueError(f"{where}.{name}: expected a number, got {val!r}")
                val = float(val)
            elif isinstance(cur, str) and not isinstance(val, str):
                raise ValueError(f"{where}.{name}: expected a string, got {val!r}")
            kwargs[name] = val
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from e


def _deep_merge(base: dict, upd: dict) -> dict:
    out = dict(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def preset_path(name_or_path: str | Path) -> Path:
    """A preset name (``"cpu"``) or a path to a JSON file → the file's path."""
    p = Path(name_or_path)
    if p.suffix == ".json" or p.exists():
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        return p
    q = PRESETS_DIR / f"{name_or_path}.json"
    if not q.is_file():
        raise FileNotFoundError(f"unknown preset {name_or_path!r} (shipped presets: "
                                f"{list_presets()}; or give a path to a .json file)")
    return q


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(d: dict, overrides: list[str] | None) -> dict:
    """Apply ``key.sub=value`` overrides to a config dict (returns a new dict)."""
    out = json.loads(json.dumps(d))
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        key, val = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            if not isinstance(node.get(p, {}), dict):
                raise ValueError(f"override {item!r}: {p!r} is not a section")
            node = node.setdefault(p, {})
        node[parts[-1]] = _parse_value(val.strip())
    return out


def load_config(preset: str | Path | dict = "cpu", overrides: list[str] | None = None
                ) -> TrainConfig:
    """Load a preset (name, path or dict), apply ``overrides`` and validate.

    A preset may name another in ``"base"`` (applied first). Unknown keys are errors naming the
    file and the key.
    """
    if isinstance(preset, dict):
        d, where = dict(preset), "config"
    else:
        path = preset_path(preset)
        where = str(path)
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
    base = d.pop("base", None)
    if base:
        base_cfg = load_config(base).to_dict()
        d = _deep_merge(base_cfg, d)
    d = apply_overrides(d, overrides)
    cfg = TrainConfig.from_dict(d, where)
    cfg.validate()
    return cfg
