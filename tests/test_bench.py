"""The benchmark scripts run and report what they claim to (tiny settings; no timing asserted).

Benchmarks are run by hand for their numbers (docs/RESULTS.md, "Benchmarks"); these tests only
keep them from breaking silently: a variant that fails, a reference that is missing, a FLOP count
that drifts from the network's, a prototype that no longer matches oneDNN.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, timeout: int = 300) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout


def test_train_step_bench_reports_both_references_and_the_step_flops():
    from cyclecorr.model import CorrespondenceNet

    out = _run("bench/train_step.py", "--threads", "1", "--batch", "1", "--steps", "1",
               "--variants", "channels_last+fused+stockdeconv,channels_last+fused+keepmem")
    assert "failed" not in out
    rows = json.loads(out.strip().splitlines()[-1])["rows"]
    assert [r["variant"] for r in rows] == ["channels_last+fused+stockdeconv",
                                            "channels_last+fused+keepmem"]
    f = CorrespondenceNet().flops_by_part()
    expect = 3 * (4 * f["encoder"] + 3 * f["flow_decoder"] + f["match_decoder"]) / 1e9
    for r in rows:
        assert r["gflop_per_step"] == pytest.approx(expect)
        assert r["sec_per_step"] > 0 and r["matmul_gflops"] > 0
        # the strict reference is the faster of two GEMMs, so its ratio cannot be the larger
        assert 0 < r["mfu_best_gemm"] <= r["mfu"] * (1 + 1e-9)
        assert r["mfu"] == pytest.approx(expect * 1e9 / r["sec_per_step"]
                                         / (r["matmul_gflops"] * 1e9), rel=1e-6)


def test_benches_measure_the_cost_volume_network_beside_the_paper_network():
    from cyclecorr.costvol import CostVolumeNet
    from cyclecorr.model import CorrespondenceNet

    out = _run("bench/train_step.py", "--arch", "costvol", "--threads", "1", "--batch", "1",
               "--steps", "1", "--variants", "channels_last+fused")
    assert "failed" not in out
    rows = {r["variant"]: r for r in json.loads(out.strip().splitlines()[-1])["rows"]}
    assert list(rows) == ["channels_last+fused", "channels_last+fused+width0.5",
                          "costvol+channels_last+fused"]
    f = CostVolumeNet().flops_by_part()  # 4 encodes, 3 decodes (flow + matchability in one)
    assert rows["costvol+channels_last+fused"]["gflop_per_step"] == pytest.approx(
        3 * (4 * f["encoder"] + 3 * f["flow_decoder"]) / 1e9)
    p = CorrespondenceNet(width=0.5).flops_by_part()
    assert rows["channels_last+fused+width0.5"]["gflop_per_step"] == pytest.approx(
        3 * (4 * p["encoder"] + 3 * p["flow_decoder"] + p["match_decoder"]) / 1e9)
    assert all(r["sec_per_step"] > 0 and 0 < r["mfu"] for r in rows.values())
    out = _run("bench/evaluate.py", "--arch", "costvol", "--rounds", "1", "--seconds", "0.05",
               "--batch", "2")
    for line in ("paper (width 0.5)    float32", "costvol              bf16",
                 "float32: costvol", "bf16: costvol"):
        assert line in out
    assert "ratio" in out and "nan" not in out.lower()


def test_train_step_bench_reads_the_width_from_the_variant_name():
    import importlib.util

    from cyclecorr.costvol import CostVolumeNet
    from cyclecorr.model import CorrespondenceNet

    spec = importlib.util.spec_from_file_location("train_step_bench",
                                                  ROOT / "bench" / "train_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def n_params(net):
        return sum(p.numel() for p in net.parameters())

    for name, expect in (("costvol+width2", CostVolumeNet(width=2)),
                         ("costvol+bf16", CostVolumeNet()),
                         ("channels_last+width0.5", CorrespondenceNet(width=0.5)),
                         ("plain", CorrespondenceNet())):
        net = bench.make_net(name)
        assert type(net) is type(expect) and n_params(net) == n_params(expect), name
    assert n_params(bench.make_net("costvol+width2")) > 3 * n_params(CostVolumeNet())


def test_conv_backward_bench_checks_its_prototypes_against_onednn():
    out = _run("bench/conv_backward.py", "--threads", "1", "--batch", "2")
    lines = [x for x in out.splitlines() if "GFLOP/s;" in x]
    assert len(lines) == 5  # one per layer shape, each after its prototypes passed the check
    assert all("weight grad" in x and "shifted" in x for x in lines)


def test_evaluate_bench_runs_every_variant_including_bf16():
    out = _run("bench/evaluate.py", "--skip-pf-willow", "--rounds", "1", "--seconds", "0.05",
               "--batch", "2")
    for name in ("plain no_grad (baseline)", "inference_mode + channels_last + bf16 autocast",
                 "batch 16 (--precision bf16)"):
        assert name in out
    assert "fastest:" in out and "nan" not in out.lower()


def test_siftflow_render_and_train_benches_report_their_targets():
    out = _run("bench/siftflow.py", "--pairs", "1")
    assert "128x128: single process" in out and "256x256" in out and "ratio" in out
    out = _run("bench/render.py", "--seconds", "0.2", "--no-gl", "--no-parallel")
    assert "GT pairs/s (two lit views + flow)" in out and "target 30" in out
    out = _run("bench/train.py", "--steps", "2", "--warmup", "1", "--device", "cpu",
               "--set", "runtime.precision=bf16")
    rows = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    assert [(r["stage"], r["batch"]) for r in rows] == [(1, 16), (2, 6)]
    assert all(r["it_per_s"] > 0 and 0 <= r["data_wait_share"] <= 1 for r in rows)


def test_prepare_bench_on_the_shared_data(data_dir):
    out = _run("bench/prepare.py", "--quartets", "16", "--workers", "1", "--shard-size", "8",
               "--real-limit", "60")
    assert "workers=1: 16 quartets" in out and "viewpoint retrieval" in out
    assert "60 real crops (0 excluded" in out


def test_refine_bench_times_every_setting_against_sift_flow():
    out = _run("bench/refine.py", "--pairs", "2", "--rounds", "1", "--settings", "2:4,1:2:1")
    for row in ("network", "refine 2:4:0 (search only)", "refine 1:2:1 (search only)",
                "SIFT flow", "network + refine 2:4:0:", "both ways, refined (match)",
                "both ways: splat + gate", "splat (numba kernel)", "splat (PyTorch form)"):
        assert row in out, out
    sift = [ln for ln in out.splitlines() if ln.startswith("SIFT flow")][0]
    assert float(sift.split()[-1]) == pytest.approx(1.0)


def test_kernels_bench_times_every_form_and_checks_it_against_the_reference():
    out = _run("bench/kernels.py", "--pairs", "1", "--reps", "1")
    for line in ("correlation 1/8 learned     float32   fwd+bwd", "1/4 SIFT cells  bfloat16  fwd",
                 "convex up-sampling ×2, 64→128, bf16 mask fwd+bwd"):
        assert line in out
    errs = {line: float(line.split("max err ")[1].split()[0]) for line in out.splitlines()
            if "max err " in line}
    # per dtype 3 levels × (forward, forward + backward) + 2 SIFT forwards; 2 up-sampling rows
    assert len(errs) == 2 * (3 * 2 + 2) + 2
    for line, err in errs.items():  # float32 sums; bfloat16 results rounded once
        assert err < (0.5 if "bfloat16" in line else 1e-3), line
    assert "nan" not in out.lower()
