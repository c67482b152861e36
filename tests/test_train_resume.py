"""Exact resume after SIGKILL, and DDP(2 processes, gloo, CPU) = one process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cyclecorr.train.config import load_config
from cyclecorr.train.loop import train

REPO = Path(__file__).resolve().parents[1]

# stage 1: 4 iterations, stage 2: 8; checkpoints every 3 iterations, validation off
OVERRIDES = ["stage1.iterations=4", "stage2.iterations=8", "logging.checkpoint_every=3",
             "logging.log_every=1", "augment.hflip=0.5", "augment.color_jitter=0.1"]

KILL_SCRIPT = r"""
import os, signal, sys
from cyclecorr.train.config import load_config
from cyclecorr.train.loop import train
cfg = load_config("smoke", {overrides!r})
def on_step(stage, step):
    if (stage, step) == ({kill_stage}, {kill_step}):
        os.kill(os.getpid(), signal.SIGKILL)   # no cleanup, no flush: a hard kill
train(cfg, sys.argv[1], on_step=on_step)
"""


def _weights(path):
    return load_file(str(path))


def _assert_same(a, b, atol):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=0), (k, float((a[k] - b[k]).abs().max()))


SKIPS = ["net.skips=corr", "stage1.optim.skips_lr_mult=10", "stage2.optim.skips_lr_mult=10"]
# the cost-volume network at the smoke size (its own section; ``net.*`` does not apply to it)
COSTVOL = ["arch=costvol", "costvol.image_size=32", "costvol.width=0.5"]


@pytest.mark.parametrize("kill_at,pointer,norm,extra", [
    ((2, 5), (2, 3), "none", []),    # mid stage 2: 2 iterations after the checkpoint are redone
    ((2, 1), (1, 4), "batch", []),   # just after the stage boundary, with batch-norm buffers
    ((2, 5), (2, 3), "batch", SKIPS),  # skips: a second Adam group with its own rate
    ((2, 5), (2, 3), "none", COSTVOL + ["loss.warp_weight=0.5"]),  # the cost-volume network
], ids=["mid-stage", "boundary", "skips", "costvol"])
def test_resume_after_sigkill_reaches_same_weights(tmp_path, kill_at, pointer, norm, extra):
    overrides = OVERRIDES + [f"net.norm={norm}"] + extra
    cfg = load_config("smoke", overrides)
    ref = train(cfg, tmp_path / "ref")
    run = tmp_path / "killed"
    script = KILL_SCRIPT.format(overrides=overrides, kill_stage=kill_at[0], kill_step=kill_at[1])
    env = {**os.environ, "CYCLECORR_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script, str(run)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    ptr = json.loads((run / "last.json").read_text())
    assert (ptr["stage"], ptr["step"]) == pointer  # the last checkpoint before the kill
    assert not (run / "final.safetensors").exists()
    res = train(cfg, run, resume=True)
    _assert_same(_weights(ref.final_model), _weights(res.final_model), atol=1e-6)
    # the log holds each training record once (records after the checkpoint were redone)
    steps = [json.loads(x)["global_step"] for x in (run / "log.jsonl").read_text().splitlines()
             if '"loss"' in x]
    assert steps == list(range(1, 13))


def test_resume_of_finished_run_is_a_no_op_and_data_change_is_refused(tmp_path):
    cfg = load_config("smoke", ["stage1.iterations=2", "stage2.iterations=2"])
    first = train(cfg, tmp_path / "r")
    w = _weights(first.final_model)
    again = train(cfg, tmp_path / "r", resume=True)
    _assert_same(w, _weights(again.final_model), atol=0)
    other = load_config("smoke", ["stage1.iterations=2", "stage2.iterations=2",
                                  "data.synthetic_size=20"])
    with pytest.raises(ValueError, match="another configuration"):
        train(other, tmp_path / "r", resume=True)
    # the arithmetic precision determines the weights too: not switched on resume
    bf16 = load_config("smoke", ["stage1.iterations=2", "stage2.iterations=2",
                                 "runtime.precision=bf16"])
    with pytest.raises(ValueError, match="another configuration"):
        train(bf16, tmp_path / "r", resume=True)
    # how a run runs may change (threads)
    threads = load_config("smoke", ["stage1.iterations=2", "stage2.iterations=2",
                                    "runtime.threads=1"])
    train(threads, tmp_path / "r", resume=True)


@pytest.mark.parametrize("extra", [[], ["loss.warp_weight=0.5"], ["loss.warp_weight=0.5", *SKIPS],
                                   ["loss.warp_weight=0.5", *COSTVOL, "costvol.kernel_radius=4",
                                    "costvol.kernel_sigma=100"]],
                         ids=["cycle", "self-warp", "self-warp+skips", "costvol"])
def test_ddp_two_processes_equal_one_process(tmp_path, extra):
    """2 gloo processes, each with half of the global batch = 1 process with all of it (also with
    the self-warp pair, which rides in the cycle's single forward).

    Adam's eps is raised to 1e-3 here: right after the zero-initialised output layers the hidden
    layers' gradients are ~1e-10, and with eps=1e-8 Adam turns them into ±lr steps, so a
    last-bit difference of float summation order (1 vs 2 partial sums) becomes a 1e-3 weight
    difference. With eps=1e-3 the update is a smooth function of the gradient and the
    comparison tests DDP itself (measured: max weight difference 3e-8).

    The cost-volume network makes discrete choices (the coarse correlation's argmax and top-k),
    which a last-bit difference of summation order can flip where two target positions tie (the
    procedural quartets' flat regions, where one such flip changes which features receive a
    gradient): its soft-argmax window here is flat and covers the whole 4×4 coarse grid, so the
    argmax cannot matter, and the tolerance is 10 % of one Adam step (lr 1e-3; a gradient that is
    not averaged across the processes moves the weights by about a whole step; measured here:
    3e-5 after 3 + 3 iterations, 7e-5 after 1 + 1 with the default window)."""
    from cyclecorr.train.launch import run_local_ddp

    cfg = load_config("smoke", ["stage1.iterations=3", "stage2.iterations=3",
                                "logging.checkpoint_every=2", "augment.hflip=0.5",
                                "stage1.optim.eps=1e-3", "stage2.optim.eps=1e-3", *extra])
    single = train(cfg, tmp_path / "one")
    final = run_local_ddp(cfg, tmp_path / "two", nprocs=2)
    assert final.is_file()
    _assert_same(_weights(single.final_model), _weights(final),
                 atol=1e-4 if "arch=costvol" in extra else 1e-6)
    ptr = json.loads((tmp_path / "two" / "last.json").read_text())
    assert (ptr["stage"], ptr["step"]) == (2, 3)
    log = (tmp_path / "two" / "log.jsonl").read_text()
    assert '"world_size": 2' in log
    if extra:  # the pair's loss was part of the objective in both runs
        one_log = (tmp_path / "one" / "log.jsonl").read_text()
        assert '"loss_warp"' in log and '"loss_warp"' in one_log


def test_sigterm_finishes_the_iteration_checkpoints_and_resumes(tmp_path):
    from cyclecorr.train.loop import TrainingInterrupted

    cfg = load_config("smoke", ["logging.checkpoint_every=100"])
    before = signal.getsignal(signal.SIGTERM)

    def on_step(stage, step):
        if (stage, step) == (1, 2):
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(cfg, tmp_path / "r", on_step=on_step)
    assert signal.getsignal(signal.SIGTERM) == before  # handlers restored
    ptr = json.loads((tmp_path / "r" / "last.json").read_text())
    # the signal came after iteration 2 had finished: iteration 3 runs, then a checkpoint
    assert (ptr["stage"], ptr["step"]) == (1, 3)  # written although not due (every 100)
    res = train(cfg, tmp_path / "r", resume=True)
    assert res.final_model.is_file() and res.stages_done == [1, 2]


FAIL_SCRIPT = r"""
import multiprocessing as mp, sys
from cyclecorr.train.config import load_config
from cyclecorr.train.loop import train
cfg = load_config("smoke", ["stage1.iterations=2", "stage2.iterations=6", "data.workers=2"])
def on_step(stage, step):
    if (stage, step) == (2, 2):
        raise RuntimeError("boom")
try:
    train(cfg, sys.argv[1], on_step=on_step)
except RuntimeError:
    print("workers alive while the error is held:", len(mp.active_children()), flush=True)
    raise   # uncaught, as in a script: the interpreter must still exit
"""


def test_failed_run_with_loader_workers_exits(tmp_path):
    """An exception mid-stage shuts the DataLoader workers down at once; before, the traceback
    kept them alive until interpreter exit, whose clean-up SIGTERMed workers that ignore SIGTERM
    and waited for them forever (seen as a hung process on a GPU machine)."""
    env = {**os.environ, "CYCLECORR_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", FAIL_SCRIPT, str(tmp_path / "run")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "RuntimeError: boom" in proc.stderr
    assert "workers alive while the error is held: 0" in proc.stdout, proc.stdout
