"""``cyclecorr train``: stage 1 (SIFT-flow imitation) then stage 2 (3D-guided cycle) in one run
folder, resumable, with a progress bar, a JSONL log, TensorBoard events and cycle pictures."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cyclecorr._runtime import cpu_has_bf16
from cyclecorr.commands._checks import check_device, check_out_dir, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Presets: paper (the paper's schedule, 400k iterations: about 72 min on one H100), cpu "
        "(400 + 1,800 iterations: 13 min on 2 AVX-512 CPU cores, 9 min with --set "
        "runtime.precision=bf16; docs/RESULTS.md), demo (what `cyclecorr demo` trains), smoke "
        "(seconds). Override any field with --set, e.g. --set stage2.batch_size=6 net.width=0.5. "
        "Several GPUs/machines: torchrun --standalone --nproc_per_node N -m cyclecorr.cli train …")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="run folder: config.json, last.json + checkpoints/, "
                             "final.safetensors, "
                             "log.jsonl, tb/, pictures/")
    parser.add_argument("--preset", "--config", dest="preset", default=None, metavar="NAME|FILE",
                        help="preset name or JSON file (default: cpu; with --resume: the run's "
                             "own config.json)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                        metavar="KEY=VALUE", help="override config fields (dotted keys)")
    parser.add_argument("--data", metavar="DIR", default=None,
                        help="quartet folder written by `cyclecorr prepare` (sets data.quartets; "
                             "'synthetic' for procedural quartets)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads (≥ 1; default: torch's choice)")
    parser.add_argument("--device", default=None, help="auto (default), cpu or cuda")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved configuration and exit")


def run(args) -> int:
    # on use: these load torch; `cyclecorr --help` imports every command module
    from cyclecorr.train.config import load_config
    from cyclecorr.train.loop import TrainingInterrupted, train

    out = Path(args.out)
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.quartets={args.data}")
    if args.threads is not None:
        overrides.append(f"runtime.threads={args.threads}")
    if args.device:
        overrides.append(f"runtime.device={args.device}")
    preset = args.preset
    if args.resume:
        # a run to resume must exist; its own configuration is config.json, else (deleted) the
        # one its checkpoint record holds
        if not (out / "last.json").is_file():
            raise ValueError(f"--resume: {out} holds no checkpoint (no last.json); start the run "
                             f"without --resume")
        if preset is None:
            if (out / "config.json").is_file():
                preset = str(out / "config.json")
            else:
                from cyclecorr._io import read_format_json
                from cyclecorr.train.state import FORMAT

                ptr = read_format_json(out / "last.json", FORMAT, "checkpoint pointer")
                if not isinstance(ptr.get("config"), dict):
                    raise ValueError(f"{out / 'last.json'}: holds no configuration and "
                                     f"{out / 'config.json'} is missing; give --preset")
                preset = ptr["config"]
    if preset is None:
        preset = "cpu"
    cfg = load_config(preset, overrides)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=1))
        return 0
    check_out_dir(out)
    device = check_device(cfg.runtime.device, "--device" if args.device else "runtime.device")
    progress = not args.no_progress
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: only rank 0 talks
        res = train(cfg, out, resume=args.resume, progress=False)
        return 0
    what = "resuming" if args.resume else "training"
    print(f"{what} preset {cfg.name!r}: stage 1 {cfg.stage1.iterations} it × "
          f"{cfg.stage1.batch_size} pairs, stage 2 {cfg.stage2.iterations} it × "
          f"{cfg.stage2.batch_size} quartets, "
          f"{cfg.arch} network, width {cfg.network().width} at {cfg.network().image_size}px; "
          f"data: {cfg.data.quartets}")
    print(f"writing to {out} (log.jsonl, checkpoints, final.safetensors)")
    if (device.type == "cpu" and cfg.runtime.precision == "float32"
            and cpu_has_bf16()):
        print("this CPU has bf16 units: --set runtime.precision=bf16 trains about 1.4-1.9x "
              "faster here (float32 outputs and losses; docs/RESULTS.md, 'bf16')")

    try:
        res = train(cfg, out, resume=args.resume, progress=progress)
    except TrainingInterrupted as e:
        print(f"cyclecorr train: {e}", file=sys.stderr)
        return 130
    if res.final_model is not None:
        print(f"final model: {res.final_model}")
        if res.validation:
            keys = [k for k in ("cycle_epe", "direct_epe", "direct_pck", "real_pck@0.1")
                    if k in res.validation]
            print("last validation: " + ", ".join(f"{k} {res.validation[k]:.4g}" for k in keys))
    return 0
