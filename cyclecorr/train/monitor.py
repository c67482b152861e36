"""What a training run reports (rank 0 only): the JSONL / TensorBoard log (:class:`RunLogger`),
validation on the held-out quartets (:func:`validate`) and keypoint PCK on a few real photos
(:class:`RealPhotoPCK`). Monitoring only: nothing here selects a model or changes the weights.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cyclecorr._io import atomic_write_bytes
from cyclecorr._paths import shared_data_dir
from cyclecorr.evaluate.benchmarks import evaluate_pascal3d, evaluate_pck_pf_willow
from cyclecorr.evaluate.datasets import load_pascal3d_set, load_pf_willow
from cyclecorr.evaluate.methods import NetworkMethod
from cyclecorr.losses import compose_cycle, leg_magnitudes
from cyclecorr.matcher import Matcher
from cyclecorr.train.config import TrainConfig
from cyclecorr.train.data import collate
from cyclecorr.train.modules import CycleModule
from cyclecorr.train.pictures import cycle_picture

__all__ = ["RunLogger", "validate", "RealPhotoPCK", "Monitor"]


class RunLogger:
    """Appends records to ``<run>/log.jsonl`` (and TensorBoard scalars to ``<run>/tb``).

    On resume (``resume_at`` = the checkpoint's global step) the records written after that step
    are dropped, as they will be written again."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, resume_at: int | None):
        self.enabled = enabled
        self.path = run_dir / "log.jsonl"
        self.tb = None
        if not enabled:
            return
        if resume_at is not None and self.path.exists():
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
                # on use: tensorboard is heavy and optional at run time (the JSONL log stays)
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


@torch.no_grad()
def validate(net: torch.nn.Module, val_set, cfg: TrainConfig, device,
             picture_path: Path | None = None) -> dict:
    """Synthetic-ground-truth validation on the held-out quartets (see ``ValidationConfig``):
    end-point error and PCK at ``pck_alpha · image_size`` of the composed cycle and of the direct
    s1→s2 prediction on the matchable pixels, the composed matchability's accuracy and the
    legs' mean magnitudes; optionally a picture of the cycle on the first batch."""
    was_training = net.training
    net.eval()
    thr = cfg.validation.pck_alpha * cfg.network().image_size
    tot = {"cycle_epe": 0.0, "cycle_pck": 0.0, "direct_epe": 0.0, "direct_pck": 0.0,
           "match_acc": 0.0}
    legs: dict[str, float] = {}
    n_batches = 0
    n_pix = 0.0
    n_all = 0
    cyc = CycleModule(net)
    loader = DataLoader(val_set, batch_size=8, shuffle=False, collate_fn=collate)
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
            cycle_picture(first[0], first[1], first[2], first[3], picture_path,
                          n=cfg.validation.picture_quartets)
        except Exception as e:  # pictures are a nicety: never stop training for them
            print(f"could not write {picture_path}: {e}")
    net.train(was_training)
    return out


class RealPhotoPCK:
    """Keypoint PCK@0.1 on a small fixed set of real photo pairs (``validation.real_dataset``),
    through the :class:`~cyclecorr.matcher.Matcher`: ``"pf-willow"``, the first few photos of
    each PF-WILLOW class of the run's category (about ``validation.real_pairs`` ordered pairs,
    the class-averaged per-pair PCK); ``"pascal3d:DIR"``, ``validation.real_pairs`` pairs of the
    ``pascal3d-<category>`` set (per keypoint PCK at 0.1·S; a folder that cannot be read is an
    error). ``samples`` is None, and ``reason`` says why, when PF-WILLOW is absent."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.samples = None
        self.pairs = None
        self.reason = ""
        source = cfg.validation.real_dataset
        if source.startswith("pascal3d:"):  # asked for by name: a bad folder is an error
            self.samples, self.pairs = load_pascal3d_set(
                source[len("pascal3d:"):], cfg.category.lower(), cfg.validation.real_pairs)
            return
        try:
            if shared_data_dir() is None:
                raise FileNotFoundError("shared data folder not found")
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
        was = net.training
        # the training network as it is (its memory format stays), through the one inference path
        matcher = Matcher(net, device=next(net.parameters()).device, channels_last=False)
        method = NetworkMethod(matcher, name="training")
        try:
            if self.pairs is not None:
                res = evaluate_pascal3d(method, self.samples, self.pairs, alphas=(0.1,))
                pck = res["pck"]["all"]["per_keypoint"]
            else:
                res = evaluate_pck_pf_willow(method, samples_by_class=self.samples,
                                             alphas=(0.1,))
                pck = res["pck"]["mean_over_groups"]["per_pair"]
        finally:
            net.train(was)
        return {"real_pck@0.1": float(pck.get("0.1", pck.get(0.1, float("nan")))),
                "real_pairs": res["n_pairs"]}


class Monitor:
    """The run's reports in one place: its :class:`RunLogger`, and at each validation point
    :func:`validate` on the held-out quartets plus the :class:`RealPhotoPCK` when
    ``validation.real_pck`` is set. Only the main process (``enabled``) writes."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, valset, device, enabled: bool,
                 resume_at: int | None):
        self.cfg, self.run_dir, self.valset, self.device = cfg, run_dir, valset, device
        self.logger = RunLogger(run_dir, enabled, cfg.logging.tensorboard, resume_at)
        self.real_pck: RealPhotoPCK | None = None
        self.enabled = enabled

    def start_real_pck(self, global_step: int) -> None:
        """Load the real photos (when ``validation.real_pck``); log why when they are absent."""
        if self.cfg.validation.real_pck and self.enabled:
            self.real_pck = RealPhotoPCK(self.cfg)
            if self.real_pck.samples is None:
                self.log({"event": "real_pck_skipped", "reason": self.real_pck.reason},
                         global_step, "run")

    def log(self, rec: dict, global_step: int, prefix: str) -> None:
        self.logger.log(rec, global_step, prefix)

    def validation(self, net, stage: int, step: int, global_step: int) -> dict:
        """Validate ``net`` after ``step`` iterations of ``stage``, log and return the numbers."""
        pic = (self.run_dir / "pictures" / f"stage{stage}-{step:08d}.png"
               if self.cfg.validation.pictures else None)
        v = validate(net, self.valset, self.cfg, self.device, pic)
        if self.real_pck is not None:
            try:
                v.update(self.real_pck(net))
            except Exception as e:
                v["real_pck_error"] = f"{type(e).__name__}: {e}"
                self.real_pck.samples = None
        self.log({"stage": stage, "step": step, "event": "validation", **v}, global_step,
                 f"stage{stage}/val")
        return v

    def close(self) -> None:
        self.logger.close()
