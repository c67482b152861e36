"""A model card (``MODEL_CARD.md``) written next to a run's final model, from the run folder alone
(config.json, log.jsonl, final.safetensors metadata)."""
from __future__ import annotations

import json
from pathlib import Path

from cyclecorr.checkpoint import atomic_write_bytes, file_sha256, read_metadata

__all__ = ["write_model_card"]

_STAGE1 = {"siftflow": "imitating SIFT flow", "ground_truth": "regressing the renderer's flow",
           "self_warp": "regressing the exact flow from each photo to a bent, re-framed copy"}


def write_model_card(run_dir, model_file: str = "final.safetensors") -> Path:
    """Write ``run_dir/MODEL_CARD.md`` describing the model, its training and its validation."""
    run = Path(run_dir)
    model = run / model_file
    meta = read_metadata(model)
    cfg = meta.get("train_config", {})
    recs = []
    log = run / "log.jsonl"
    if log.is_file():
        for line in log.read_text().splitlines():
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    vals = [r for r in recs if r.get("event") == "validation"]
    start = next((r for r in recs if r.get("event") in ("start", "resume")), {})
    skipped = next((r for r in recs if r.get("event") == "real_pck_skipped"), None)
    s1, s2 = cfg.get("stage1", {}), cfg.get("stage2", {})
    lines = [
        f"# cyclecorr model: {cfg.get('category', '?')} ({cfg.get('name', '?')} preset)",
        "",
        "Dense correspondence (flow + matchability) between two images of different instances of "
        "one category, trained by 3D-guided cycle consistency (Zhou et al., CVPR 2016).",
        "",
        "## Files",
        f"- weights: `{model.name}` (safetensors), SHA-256 `{file_sha256(model)}`",
        f"- network: `{json.dumps(meta.get('net', {}))}`",
        f"- code version: `{meta.get('code_version', '?')}`",
        f"- training data manifest SHA-256: `{meta.get('data_manifest_sha256', '?')}`",
        "",
        "## Training",
        f"- data: `{cfg.get('data', {}).get('quartets', '?')}` "
        f"({start.get('n_train', '?')} training quartets, {start.get('n_val', '?')} held out)",
        f"- stage 1 ({_STAGE1.get(cfg.get('data', {}).get('stage1_targets'), '?')}): "
        f"{s1.get('iterations')} iterations × {s1.get('batch_size')} pairs, "
        f"lr {s1.get('optim', {}).get('lr')} × {s1.get('optim', {}).get('gamma')} every "
        f"{s1.get('optim', {}).get('decay_every')}",
        f"- stage 2 (cycle): {s2.get('iterations')} iterations × {s2.get('batch_size')} quartets, "
        f"lr {s2.get('optim', {}).get('lr')} × {s2.get('optim', {}).get('gamma')} every "
        f"{s2.get('optim', {}).get('decay_every')}; loss `{json.dumps(cfg.get('loss', {}))}`",
        f"- augmentation: `{json.dumps(cfg.get('augment', {}))}`",
        *_init_lines(cfg.get("init")),
        f"- seed {cfg.get('seed')}, {start.get('world_size', 1)} process(es) on "
        f"{start.get('device', '?')}",
        "- full configuration: `config.json` in the run folder (also in the weights' metadata)",
        "",
        "## Validation (monitoring only)",
        "The held-out synthetic quartets and the small real keypoint subset were used to monitor "
        "training only, never to select a model or tune it; the real evaluation images are never "
        "trained on. Report accuracy with `cyclecorr evaluate`, not with these numbers.",
        "",
    ]
    if vals:
        keys = [k for k in ("cycle_epe", "cycle_pck", "direct_epe", "direct_pck", "match_acc",
                            "real_pck@0.1") if k in vals[-1]]
        lines.append("| stage | step | " + " | ".join(keys) + " |")
        lines.append("|---|---|" + "---|" * len(keys))
        for v in vals:
            lines.append(f"| {v.get('stage')} | {v.get('step')} | " +
                         " | ".join(f"{v[k]:.4g}" if isinstance(v.get(k), (int, float)) else "–"
                                    for k in keys) + " |")
        lines.append("")
        lines.append("EPE in pixels at the network's resolution on pixels matchable in the ground "
                     f"truth; PCK threshold α = {vals[-1].get('pck_alpha')} × image size; real "
                     "PCK: PF-WILLOW subset, L = keypoint box, per-pair mean over classes.")
    else:
        lines.append("(no validation records)")
    if skipped:
        lines.append(f"\nReal PCK was skipped: {skipped.get('reason')}")
    path = run / "MODEL_CARD.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def _init_lines(init: str | None) -> list[str]:
    """The card's line about the starting weights (``TrainConfig.init``), with their hash and what
    they were trained as when the file is still there."""
    if not init:
        return ["- initial weights: random (seeded)"]

    p = Path(init)
    if not p.is_file():
        return [f"- initial weights: `{init}` (file no longer present)"]
    meta = read_metadata(p)
    c = meta.get("train_config", {})
    what = (f"{c.get('name', '?')} preset, stage {meta.get('stage', '?')}, "
            f"step {meta.get('step', '?')}") if c else "no training metadata"
    return [f"- initial weights: `{init}` ({what}; SHA-256 `{file_sha256(p)}`)"]
