"""Training configuration: a tree of dataclasses loaded from JSON presets, with overrides.

Presets ship as package data in ``cyclecorr/configs/<name>.json`` (``paper``, ``cpu``, ``demo``).
A preset holds only the fields it changes from the defaults below; every field is documented here.
Command-line overrides use dotted keys, ``--set stage2.batch_size=6 net.width=0.5``; values are
parsed as JSON where possible (``true``, ``1e-3``, ``[1, 2]``), else kept as strings.

The resolved configuration is written to the run folder (``config.json``) and stored in every
checkpoint, so a run can be reproduced from its folder alone.

Choices the paper leaves open are fields here, each documented where it is declared; paper values
are the defaults where the paper gives one.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cyclecorr._runtime import PRECISIONS
from cyclecorr.costvol import CostVolumeConfig
from cyclecorr.losses import CycleLossConfig
from cyclecorr.model import ARCHITECTURES, NetConfig

__all__ = ["ZOOM_FILLS", "TrainConfig", "StageConfig", "OptimConfig", "DataConfig", "AugmentConfig",
           "LoggingConfig", "ValidationConfig", "RuntimeConfig", "load_config", "preset_path",
           "list_presets", "apply_overrides", "PRESETS_DIR", "STAGE1_TARGETS"]

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"

#: What a re-framed photo shows outside its old frame (``AugmentConfig.zoom_fill``).
ZOOM_FILLS = ("border", "texture")

#: What stage 1 regresses (``DataConfig.stage1_targets``).
STAGE1_TARGETS = ("siftflow", "ground_truth", "self_warp")


@dataclass
class OptimConfig:
    """Adam with a step schedule, ``lr(t) = lr · gamma^(t // decay_every)`` (paper: β = (0.9,
    0.999), lr 0.001, halved every 50k iterations)."""

    lr: float = 1e-3
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    #: L2 weight decay (not in the paper; 0 = off).
    weight_decay: float = 0.0
    decay_every: int = 50_000
    gamma: float = 0.5
    #: iterations of linear warm-up (0 = none).
    warmup: int = 0
    #: maximum global gradient norm (not in the paper; 0 = off).
    grad_clip: float = 0.0
    #: the flow decoder's skip layers (``net.skips``) learn at ``lr(t) · skips_lr_mult``, so that
    #: layers grown at zero on a trained network move at a pace of their own when fine-tuned.
    skips_lr_mult: float = 1.0

    def lr_at(self, step: int) -> float:
        """Learning rate of iteration ``step`` (0-based): a pure function of the step."""
        lr = self.lr * self.gamma ** (step // self.decay_every if self.decay_every > 0 else 0)
        if self.warmup > 0 and step < self.warmup:
            lr *= (step + 1) / self.warmup
        return lr


@dataclass
class StageConfig:
    """One training stage."""

    #: optimiser steps (paper: 200k; 0 skips the stage).
    iterations: int = 200_000
    #: global batch, split evenly across DDP processes: pairs in stage 1 (paper 40), quartets in
    #: stage 2 (paper 10).
    batch_size: int = 10
    optim: OptimConfig = field(default_factory=OptimConfig)
    #: start the stage with fresh Adam moments (the paper does not say; stage 2 is a new
    #: objective); false keeps the previous stage's.
    reset_optimizer: bool = True


@dataclass
class DataConfig:
    """Where the training data comes from."""

    #: a folder written by ``cyclecorr prepare`` (relative to the current directory), or
    #: ``"synthetic"`` for procedural affine quartets (tests, smoke runs).
    quartets: str = "synthetic"
    #: stage-1 image pairs drawn from the training quartets ("randomly sampled image pairs from
    #: the training quartets"); the list is a pure function of ``seed``.
    stage1_pairs: int = 1000
    #: ``"quartet"``: r1 and r2 of one quartet (two cars at nearby viewpoints, quartets without
    #: repetition); ``"random"``: r1 of one quartet with r2 of another. The paper fits both.
    stage1_pair_source: str = "quartet"
    #: ``"siftflow"`` (paper); ``"ground_truth"``: regress the renderer's s1→s2 flow on render
    #: pairs instead (no SIFT flow to compute: smoke tests, the demo); ``"self_warp"``: regress
    #: the exact flow from each training photo (r1 and r2 of every quartet) to a re-framed copy
    #: of itself (``augment.zoom``), its source bent by ``augment.warp_deform`` and both sides
    #: jittered by ``augment.warp_jitter``: a photo's own content, matched precisely.
    stage1_targets: str = "siftflow"
    #: SIFT-flow target cache (default ``<run>/siftflow``).
    sift_cache: str = ""
    sift_workers: int = 2
    #: quartets when ``quartets == "synthetic"``.
    synthetic_size: int = 256
    #: share of quartets held out for validation (never trained on), at most ``val_count``.
    val_fraction: float = 0.02
    val_count: int = 32
    #: data-loader worker processes (0 = in the main process).
    workers: int = 0
    #: a folder of render pairs across instances (``cyclecorr prepare-pairs``), read when
    #: ``loss.pair_weight > 0``; relative paths resolve against the current directory.
    render_pairs: str = ""


@dataclass
class AugmentConfig:
    """Data augmentation (the paper mentions none; every option off at 0). Draws are a pure
    function of (seed, step, item position), so resume is exact without saving RNG state."""

    #: probability of mirroring a whole item left–right (flows' x negated, fields mirrored).
    hflip: float = 0.5
    #: amplitude of a random brightness / contrast change of the real images.
    color_jitter: float = 0.0
    #: probability of replacing the renders' black background by random colour textures, so a
    #: render cannot be told from a photo by its empty background.
    render_background: float = 0.0
    #: probability of re-framing the two sides of an item (s1 with r1, s2 with r2; a stage-1
    #: pair's source and target) independently, the ground-truth flow following exactly.
    zoom: float = 0.0
    #: magnification range of a re-framing (log-uniform; < 1 shows the object smaller).
    zoom_min: float = 0.6
    zoom_max: float = 1.3
    #: largest shift of a re-framing, per axis, as a fraction of the size.
    zoom_shift: float = 0.15
    #: largest difference between the x and y magnifications.
    zoom_aspect: float = 0.1
    #: what a photo shows outside its old frame: ``"border"`` (its edge pixels) or
    #: ``"texture"`` (a random colour texture); renders keep their black background.
    zoom_fill: str = "border"
    #: the self-warp pair (``loss.warp_weight``): its source is bent by a smooth random
    #: displacement of up to about this many pixels (offsets on a ``warp_deform_grid``² lattice,
    #: bicubic in between); the flow stays exact.
    warp_deform: float = 0.0
    warp_deform_grid: int = 4
    #: amplitude of independent brightness / contrast changes of the self-warp pair's two sides.
    warp_jitter: float = 0.0


@dataclass
class LoggingConfig:
    """The run's log, checkpoints and progress bar."""

    #: iterations between JSONL / TensorBoard records (metrics averaged over the interval).
    log_every: int = 50
    #: iterations between checkpoints (one is always written at the end of each stage).
    checkpoint_every: int = 1000
    #: step checkpoints kept.
    keep_checkpoints: int = 2
    #: TensorBoard events in ``<run>/tb``.
    tensorboard: bool = True
    progress: bool = True


@dataclass
class ValidationConfig:
    """Periodic validation (monitoring only, never model selection): EPE / PCK of the composed
    cycle and of the direct s1→s2 prediction on the held-out quartets."""

    #: iterations between validations (0 = only at the end of each stage).
    every: int = 1000
    #: PCK threshold α · image_size.
    pck_alpha: float = 0.1
    #: keypoint PCK@0.1 on about ``real_pairs`` fixed pairs of real photos (never trained on):
    #: ``real_dataset`` ``"pf-willow"`` (a few photos per class of the run's category; PF-WILLOW
    #: is an evaluation set, so this is a monitor only) or ``"pascal3d:DIR"`` (PASCAL3D+'s
    #: ImageNet photos of the category in the release folder DIR, outside the evaluation sets:
    #: the ``pascal3d-<category>`` set of ``cyclecorr evaluate``).
    real_pck: bool = True
    real_dataset: str = "pf-willow"
    real_pairs: int = 50
    #: a picture of the cycle on ``picture_quartets`` validation quartets at each validation.
    pictures: bool = True
    picture_quartets: int = 4


@dataclass
class RuntimeConfig:
    """How the run executes; nothing here changes the weights except ``precision``."""

    #: ``torch.set_num_threads`` (0 = torch's default; ``CYCLECORR_THREADS`` overrides). CPU
    #: kernels are deterministic for a fixed thread count, so exact resume needs the same value.
    threads: int = 0
    #: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``.
    device: str = "auto"
    #: the network's memory format.
    channels_last: bool = False
    #: request deterministic kernels on CUDA (slower).
    deterministic: bool = True
    #: on a CPU, keep freed memory in the process (:func:`cyclecorr._runtime.keep_freed_memory`:
    #: no page faults per step, results unchanged).
    keep_memory: bool = True
    #: ``"float32"`` or ``"bf16"``: the network's forward in training steps under bf16 autocast
    #: (outputs, composition, losses and validation stay float32); fast only on CPUs with bf16
    #: units (measurements: docs/RESULTS.md, "bf16").
    precision: str = "float32"


@dataclass
class TrainConfig:
    """Everything a training run depends on (see the module docstring)."""

    name: str = "custom"
    seed: int = 0
    #: the object category (chooses the real-photo monitor's classes).
    category: str = "car"
    #: a model file whose weights the network starts from (empty: seeded random initialisation);
    #: with ``stage1.iterations=0`` this fine-tunes a model with the cycle only.
    init: str = ""
    #: the network architecture: ``"paper"`` (the ``net`` section) or ``"costvol"`` (the
    #: ``costvol`` section); see :func:`cyclecorr.model.build_network`.
    arch: str = "paper"
    net: NetConfig = field(default_factory=NetConfig)
    costvol: CostVolumeConfig = field(default_factory=CostVolumeConfig)
    loss: CycleLossConfig = field(default_factory=CycleLossConfig)
    stage1: StageConfig = field(default_factory=lambda: StageConfig(batch_size=40))
    #: stage 1's reduction: ``"mean"`` over pixels or ``"sum"`` per pair.
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

    def network(self) -> NetConfig | CostVolumeConfig:
        """The configuration of the network this run trains (the section ``arch`` names)."""
        return self.costvol if self.arch == "costvol" else self.net

    def validate(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {ARCHITECTURES}, got {self.arch!r}")
        if self.loss.pair_weight > 0 and not self.data.render_pairs:
            raise ValueError("loss.pair_weight > 0 needs data.render_pairs (a folder written by "
                             "cyclecorr prepare-pairs)")
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
        rd = self.validation.real_dataset
        if rd != "pf-willow" and not (rd.startswith("pascal3d:") and rd[len("pascal3d:"):]):
            raise ValueError("validation.real_dataset must be 'pf-willow' or 'pascal3d:DIR', got "
                             f"{rd!r}")
        if self.data.stage1_targets not in STAGE1_TARGETS:
            raise ValueError(f"data.stage1_targets must be one of {STAGE1_TARGETS}, got "
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
        if self.runtime.threads < 0:
            raise ValueError(f"runtime.threads must be ≥ 0 (0: torch's default), got "
                             f"{self.runtime.threads}")


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
    try:
        cfg = TrainConfig.from_dict(apply_overrides(d, overrides), where)
        cfg.validate()
    except ValueError as e:
        _blame_override(d, overrides, where, e)
        raise
    return cfg


def _blame_override(d: dict, overrides: list[str] | None, where: str, error: ValueError) -> None:
    """When the preset alone is valid, raise ``error`` again as the fault of the first
    ``--set`` item that makes it invalid (``--set KEY=VALUE: problem``), not of the preset file."""
    if not overrides:
        return
    try:
        TrainConfig.from_dict(d, where).validate()
    except ValueError:
        return  # the preset itself is wrong: its own message names it
    for k in range(1, len(overrides) + 1):
        try:
            TrainConfig.from_dict(apply_overrides(d, overrides[:k]), where).validate()
        except ValueError as e:
            msg = str(e)
            msg = msg[len(where) + 1:] if msg.startswith(where + ".") else \
                msg[len(where) + 2:] if msg.startswith(where + ": ") else msg
            raise ValueError(f"--set {overrides[k - 1]}: {msg}") from error
