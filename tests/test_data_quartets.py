"""Quartet preparation end to end on a small slice of the shared car data: the cached ground truth
is the renderer's, a killed-and-resumed (or machine-split) preparation equals an uninterrupted
one, datasets read back tensors of the documented shapes, errors name the file."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cyclecorr.data import (
    DataError,
    OnTheFlyQuartetDataset,
    PairDataset,
    QuartetConfig,
    QuartetDataset,
    prepare_quartets,
    verify_quartets,
)

REPO = Path(__file__).resolve().parent.parent
CFG = dict(azimuth_step=45.0, elevations=(0, 20), k=2, max_azimuth_gap=90.0, shard_size=4)
N_QUARTETS = 14  # 4 shards: 4, 4, 4, 2


@pytest.fixture(scope="module")
def inputs(data_dir, tmp_path_factory):
    """20 VOC 2007 car crops as an unlabelled folder, 3 gsnet cars, a shared bank cache."""
    root = tmp_path_factory.mktemp("quartet-inputs")
    cad = root / "cad"
    cad.mkdir()
    for i in (0, 1, 2):
        os.symlink(data_dir / "cad" / "car" / "gsnet" / f"{i}.obj", cad / f"{i}.obj")
    real = root / "real"
    real.mkdir()
    for p in sorted((data_dir / "real" / "voc2007" / "car").glob("*.jpg"))[:400:20]:
        os.symlink(p, real / p.name)
    return {"real": [str(real)], "cad": [str(cad)], "bank": str(root / "banks")}


@pytest.fixture(scope="module")
def prepared(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("quartets") / "full"
    summary = prepare_quartets(inputs["real"], inputs["cad"], out, N_QUARTETS,
                               QuartetConfig(**CFG), workers=1, progress=False,
                               log=lambda *_: None, bank_cache=inputs["bank"])
    return out, summary


def test_prepare_writes_manifest_and_reads_back(prepared):
    out, summary = prepared
    assert summary["quartets_made"] == N_QUARTETS and summary["real_crops"] == 20
    man = json.loads((out / "manifest.json").read_text())
    assert [s["count"] for s in man["shards"]] == [4, 4, 4, 2]
    assert len(man["models"]) == 3 and man["config"]["k"] == 2
    assert verify_quartets(out) == 2 + 4
    ds = QuartetDataset(out, verify=True)
    assert len(ds) == N_QUARTETS
    for i in (0, 5, N_QUARTETS - 1):
        q = ds[i]
        for k in ("s1", "s2", "r1", "r2"):
            assert q[k].shape == (3, 128, 128) and 0 <= q[k].min() and q[k].max() <= 1
        assert q["flow_s1s2"].shape == (2, 128, 128) and q["match_s1s2"].shape == (1, 128, 128)
        assert set(q["match_s1s2"].unique().tolist()) <= {0.0, 1.0}
        # validity rule: enough of s1's object is matchable, only on the object
        m, fg = q["match_s1s2"], q["mask_s1"]
        assert (m <= fg).all() and m.sum() >= 0.2 * fg.sum()
        assert q["r1_index"] != q["r2_index"]
    with pytest.raises(IndexError):
        ds[N_QUARTETS]


def test_cached_quartets_reproduce_renderer(prepared):
    """Every cached quartet equals a fresh render + synthetic_correspondence of its model."""
    from cyclecorr.render import Viewpoint, load_mesh, synthetic_correspondence

    out, _ = prepared
    ds = QuartetDataset(out)
    cfg = ds.manifest["config"]
    for i in range(len(ds)):
        q = ds.raw(i)
        mesh = load_mesh(ds.models[int(q["model_index"])])
        va = Viewpoint(*map(float, q["viewpoint_s1"]), distance=cfg["distance"])
        vb = Viewpoint(*map(float, q["viewpoint_s2"]), distance=cfg["distance"])
        gt = synthetic_correspondence(mesh, va, vb, size=128)
        np.testing.assert_array_equal(q["s1"], gt.view_a.rgb)
        np.testing.assert_array_equal(q["s2"], gt.view_b.rgb)
        np.testing.assert_array_equal(q["match_s1s2"], gt.matchability.astype(np.uint8))
        m = gt.matchability > 0
        err = np.abs(q["flow_s1s2"].astype(np.float32) - gt.flow)[:, m]
        assert err.max() <= 0.07  # float16 storage of |flow| < 128 px
        # the real crops are those of the retrieval's r1, r2
        assert q["r1"].shape == (128, 128, 3)


def _cli(args, **kw):
    env = {**os.environ, "PYOPENGL_PLATFORM": "osmesa", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "cyclecorr.commands.prepare_cmd", *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            **kw)


def _cli_args(inputs, out):
    return ["--real", *inputs["real"], "--cad", *inputs["cad"], "--out", str(out),
            "--quartets", str(N_QUARTETS), "--workers", "1", "--quiet",
            "--azimuth-step", "45", "--elevations", "0", "20", "--k", "2",
            "--max-azimuth-gap", "90", "--shard-size", "4", "--bank-cache", inputs["bank"]]


def test_killed_and_resumed_equals_uninterrupted(prepared, inputs, tmp_path):
    full, _ = prepared
    out = tmp_path / "resumed"
    proc = _cli(_cli_args(inputs, out))
    first = out / "shards" / "quartets-00000.safetensors"
    t0 = time.time()
    while not first.exists() and proc.poll() is None and time.time() - t0 < 120:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert first.exists(), proc.stdout.read().decode()[-2000:]
    assert not (out / "manifest.json").exists()  # it was really interrupted
    # resume through the command line as a user would
    proc = _cli(_cli_args(inputs, out))
    log = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 0, log[-2000:]
    assert "already complete" in log and "manifest.json" in log
    assert json.loads((out / "manifest.json").read_text()) == \
        json.loads((full / "manifest.json").read_text())


def test_shard_split_equals_uninterrupted(prepared, inputs, tmp_path):
    full, _ = prepared
    out = tmp_path / "split"
    kw = dict(config=QuartetConfig(**CFG), workers=1, progress=False, log=lambda *_: None,
              bank_cache=inputs["bank"])
    s0 = prepare_quartets(inputs["real"], inputs["cad"], out, N_QUARTETS, shard="0/2", **kw)
    assert s0["missing_shards"] == [1, 3] and not (out / "manifest.json").exists()
    s1 = prepare_quartets(inputs["real"], inputs["cad"], out, N_QUARTETS, shard="1/2", **kw)
    assert "manifest" in s1 and s1["shards_made"] == 2
    assert (out / "manifest.json").read_bytes() == (full / "manifest.json").read_bytes()


def test_on_the_fly_and_pair_datasets(prepared):
    out, _ = prepared
    otf = OnTheFlyQuartetDataset(out, length=4, seed=3)
    a, b = otf[1], otf[1]
    assert set(QuartetDataset(out)[0]) <= set(a) | {"index"}
    assert a["s1"].shape == (3, 128, 128) and a["flow_s1s2"].shape == (2, 128, 128)
    assert (a["s1"] == b["s1"]).all() and (a["flow_s1s2"] == b["flow_s1s2"]).all()
    assert a["match_s1s2"].sum() >= 0.2 * a["mask_s1"].sum()
    pairs = PairDataset(out, length=10, seed=1)
    p = pairs[3]
    assert p["src"].shape == p["tgt"].shape == (3, 128, 128) and p["src_index"] != p["tgt_index"]
    assert (pairs[3]["src"] == p["src"]).all()


def test_random_light_option(inputs, tmp_path):
    """light="random": s1/s2 share a random light; geometry (mask, ground truth) is unchanged."""
    from cyclecorr.render import Viewpoint, load_mesh, render_view

    out = tmp_path / "lit"
    prepare_quartets(inputs["real"], inputs["cad"], out, 0, QuartetConfig(**CFG, light="random"),
                     workers=1, progress=False, log=lambda *_: None, bank_cache=inputs["bank"])
    otf = OnTheFlyQuartetDataset(out, length=2)
    q = otf[0]
    mesh = load_mesh(otf_models(out)[q["model_index"]])
    ref = render_view(mesh, Viewpoint(*q["viewpoint_s1"].tolist()), size=128)
    assert (q["mask_s1"][0].numpy() > 0.5).tolist() == ref.mask.tolist()
    s1 = (q["s1"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.abs(s1.astype(int) - ref.rgb).max() > 10  # another light than the default one


def otf_models(folder):
    return json.loads((Path(folder) / "plan.json").read_text())["models"]


def test_require_pose_uses_only_tagged_crops(inputs, data_dir, tmp_path):
    """require_pose: r1, r2 come only from crops with a VOC pose tag (here 2 of 4 crops)."""
    real = tmp_path / "real"
    real.mkdir()
    src = data_dir / "real" / "voc2007" / "car"
    rows = (src / "boxes.tsv").read_text().splitlines()
    header, body = rows[0], rows[1:]
    col = header.split("\t").index("pose")
    tagged = [r for r in body if r.split("\t")[col] in ("Frontal", "Rear")][:2]
    untagged = [r for r in body if r.split("\t")[col] in ("", "Unspecified")][:2]
    for r in tagged + untagged:
        name = r.split("\t")[0]
        (real / name).write_bytes((src / name).read_bytes())
    (real / "boxes.tsv").write_text("\n".join([header] + tagged + untagged) + "\n")
    out = tmp_path / "o"
    cfg = QuartetConfig(**{**CFG, "max_azimuth_gap": 180.0, "k": 3, "min_matchable": 0.0},
                        require_pose=True)
    lines = []
    prepare_quartets([str(real)], inputs["cad"], out, 4, cfg, progress=False,
                     log=lines.append, bank_cache=inputs["bank"])
    ds = QuartetDataset(out)
    used = {int(ds.raw(i)[k]) for i in range(len(ds)) for k in ("r1_index", "r2_index")}
    assert used == {0, 1}  # the two tagged crops come first in boxes.tsv order
    assert any("2 of 4 crops with an annotated viewpoint or a VOC pose tag (the only ones" in x
               for x in lines)


def test_pair_dataset_from_folders(data_dir):
    pairs = PairDataset([data_dir / "real" / "voc2007" / "car"], length=5)
    assert pairs.n == 1035
    p = pairs[0]
    assert p["src"].shape == (3, 128, 128) and 0 <= p["src"].min() <= p["src"].max() <= 1


def test_corrupt_real_image_is_skipped_and_named(inputs, data_dir, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    for p in sorted((data_dir / "real" / "voc2007" / "car").glob("*.jpg"))[:3]:
        (real / p.name).write_bytes(p.read_bytes())
    (real / "004.jpg").write_bytes(b"\xff\xd8 truncated")
    logs = []
    s = prepare_quartets([str(real)], inputs["cad"], tmp_path / "o", 0, QuartetConfig(**CFG),
                         progress=False, log=logs.append, bank_cache=inputs["bank"])
    assert s["real_crops"] == 3
    assert any("skipping" in m and "004.jpg" in m for m in logs)


def test_errors_name_the_file(prepared, inputs, tmp_path):
    with pytest.raises(DataError, match="empty folder"):
        prepare_quartets([str(tmp_path)], inputs["cad"], tmp_path / "o", 1, progress=False,
                         log=lambda *_: None, bank_cache=inputs["bank"])
    empty_cad = tmp_path / "nocad"
    empty_cad.mkdir()
    with pytest.raises(DataError, match="nocad"):
        prepare_quartets(inputs["real"], [str(empty_cad)], tmp_path / "o", 1, progress=False,
                         log=lambda *_: None)
    with pytest.raises(FileNotFoundError, match="manifest"):
        QuartetDataset(tmp_path)
    # a modified shard is caught by the checksum
    out, _ = prepared
    bad = tmp_path / "copy"
    bad.mkdir()
    for f in ("manifest.json", "plan.json", "real_crops.safetensors", "retrieval.safetensors"):
        (bad / f).write_bytes((out / f).read_bytes())
    (bad / "shards").mkdir()
    for p in sorted((out / "shards").iterdir()):
        (bad / "shards" / p.name).write_bytes(p.read_bytes())
    p = bad / "shards" / "quartets-00002.safetensors"
    data = bytearray(p.read_bytes())
    data[-10] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(DataError, match="quartets-00002"):
        verify_quartets(bad)
    # other parameters in an existing folder are refused, naming what differs
    with pytest.raises(DataError, match="config"):
        prepare_quartets(inputs["real"], inputs["cad"], bad, N_QUARTETS,
                         QuartetConfig(**{**CFG, "k": 3}), progress=False, log=lambda *_: None,
                         bank_cache=inputs["bank"])


def test_cycle_legs_script_on_an_untrained_network(prepared, tmp_path, capsys):
    """The untrained network predicts zero flow: every leg is 0 and the cycle's error is the
    renderer flow's magnitude (the zero flow's error)."""
    import importlib.util

    from cyclecorr.checkpoint import save_model
    from cyclecorr.model import CorrespondenceNet, NetConfig

    out, _ = prepared
    save_model(tmp_path / "zero.safetensors", CorrespondenceNet(NetConfig(width=0.125)))
    spec = importlib.util.spec_from_file_location("cycle_legs", REPO / "scripts" / "cycle_legs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    pic = tmp_path / "legs.png"
    assert mod.main(["--data", str(out), "--count", "4", "--picture", str(pic),
                     str(tmp_path / "zero.safetensors")]) == 0
    from PIL import Image

    assert Image.open(pic).size[0] > 300  # the legs picture was drawn
    text = capsys.readouterr().out
    head = text.splitlines()[0]
    mag = float(head.split("|s1s2| ")[1].split(" px")[0])
    assert mag > 1.0  # the quartets do move
    assert text.splitlines()[-1] == f"picture: {pic}"
    row = [c.strip() for c in text.splitlines()[-2].strip("|").split("|")]
    assert row[0] == "zero.safetensors"
    legs = [float(x) for x in row[1:5]]
    assert legs == [0.0, 0.0, 0.0, 0.0]
    assert float(row[5]) == pytest.approx(mag, abs=0.01)  # cycle EPE = zero-flow EPE


def test_pack_quartets_round_trip(prepared, tmp_path):
    """scripts/pack_quartets.py: a packed-then-unpacked subset reads back like the original
    (renders, masks, crops and indices exact; the flow within 1/16 px where matchable), its
    manifest names its own files' sha256s, and QuartetDataset reads it."""
    import importlib.util

    out, _ = prepared
    spec = importlib.util.spec_from_file_location("pack_quartets",
                                                  REPO / "scripts" / "pack_quartets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["pack", str(out), str(tmp_path / "packed"), "--shards", "2"])
    mod.main(["unpack", str(tmp_path / "packed"), str(tmp_path / "back")])
    assert verify_quartets(tmp_path / "back") == 2 + 2  # 2 shards + real crops + retrieval
    a, b = QuartetDataset(out), QuartetDataset(tmp_path / "back")
    assert len(b) == 8 and len(a) == N_QUARTETS
    for i in range(len(b)):
        qa, qb = a.raw(i), b.raw(i)
        for k in qa:
            if k == "flow_s1s2":
                m = np.broadcast_to(qa["match_s1s2"][None] > 0, qa[k].shape)
                err = np.abs(qa[k].astype(np.float32) - qb[k].astype(np.float32))
                assert err[m].max(initial=0) <= 1 / 16 + 1e-3
                assert (qb[k][~m] == 0).all()
            else:
                assert np.array_equal(qa[k], qb[k], equal_nan=qa[k].dtype.kind == "f"), k
    with pytest.raises(SystemExit, match="--shards"):
        mod.main(["pack", str(out), str(tmp_path / "p2"), "--shards", "9"])
    flow = np.full((1, 2, 2, 2), 5000.0, np.float32)
    with pytest.raises(ValueError, match="too large"):
        mod.encode_flow(flow, np.ones((1, 2, 2), np.uint8))


def test_near_duplicate_of_an_evaluation_photo_is_excluded(inputs, data_dir, tmp_path):
    """A planted crop of a PF-WILLOW car photo (resized, re-encoded, as a VOC crop of the same
    photo would be) among real training photos is left out, named in the log and the metadata,
    and the plan records which evaluation images were screened against."""
    from PIL import Image

    from cyclecorr.data import load_mat

    real = tmp_path / "real"
    real.mkdir()
    for p in sorted((data_dir / "real" / "voc2007" / "car").glob("*.jpg"))[5:9]:
        (real / p.name).write_bytes(p.read_bytes())
    src = sorted((data_dir / "real" / "pf-willow" / "car(M)").glob("*.png"))[2]
    k = load_mat(src.with_suffix(".mat"))["pts_coord"] - 1
    im = Image.open(src).convert("RGB").crop((int(k[0].min()) - 4, int(k[1].min()) - 4,
                                              int(k[0].max()) + 5, int(k[1].max()) + 5))
    im.resize((round(im.size[0] / 0.6), round(im.size[1] / 0.6))).save(real / "zz_planted.jpg",
                                                                       quality=85)
    logs = []
    out = tmp_path / "o"
    s = prepare_quartets([str(real)], inputs["cad"], out, 0, QuartetConfig(**CFG),
                         progress=False, log=logs.append, bank_cache=inputs["bank"],
                         hygiene_cache=tmp_path / "hyg")
    assert s["real_crops"] == 4 and s["excluded"] == 1
    assert any("excluded 1" in m and "zz_planted.jpg" in m and src.name in m for m in logs)
    from safetensors import safe_open
    with safe_open(str(out / "real_crops.safetensors"), framework="np") as f:
        meta = json.loads(f.metadata()["cyclecorr"])
    assert [Path(e["source"]).name for e in meta["excluded"]] == ["zz_planted.jpg"]
    assert not any(Path(x).name == "zz_planted.jpg" for x in meta["sources"])
    plan = json.loads((out / "plan.json").read_text())
    assert plan["hygiene"]["evaluation_images"] >= 100


def _descendants(pid: int) -> set[int]:
    """Living (not zombie) descendants of ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def _kill_parent_and_check(proc, kids: set[int], what: str) -> None:
    """SIGKILL ``proc``; every pid in ``kids`` must be gone within 15 s (``what`` names them)."""
    os.kill(proc.pid, 9)
    proc.wait()
    t1 = time.time()
    while [k for k in kids if _alive(k)] and time.time() - t1 < 15:
        time.sleep(0.1)
    assert not [k for k in kids if _alive(k)], f"{what} left behind after kill -9"


def _clean_up(proc, kids: set[int]) -> None:
    for k in kids:
        if _alive(k):
            os.kill(k, 9)
    if proc.poll() is None:
        proc.kill()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_kill9_of_prepare_leaves_no_worker(inputs, tmp_path):
    """``cyclecorr prepare --workers 2`` killed with SIGKILL while its pool renders quartets: the
    pool's workers (and multiprocessing's resource tracker) notice the dead parent and exit."""
    out = tmp_path / "killed"
    args = _cli_args(inputs, out)
    args[args.index("--workers") + 1] = "2"
    args[args.index("--quartets") + 1] = "40"
    proc = _cli(args)
    kids: set[int] = set()
    t0 = time.time()
    try:
        while proc.poll() is None and time.time() - t0 < 180:
            kids |= _descendants(proc.pid)
            # the quartet pool: two workers, and a shard written (they are working)
            if len(_descendants(proc.pid)) >= 2 and any((out / "shards").glob("*.safetensors")):
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        kids |= _descendants(proc.pid)
        assert len(kids) >= 2, kids
        _kill_parent_and_check(proc, kids, "workers")
    finally:
        _clean_up(proc, kids)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_kill9_leaves_no_hygiene_screening_worker(tmp_path):
    """The evaluation-image screen's pool (the same spawn pool helper): its workers exit when
    the process that started them is killed with SIGKILL."""
    script = tmp_path / "screen.py"
    script.write_text(
        "import time\n"
        "import numpy as np\n"
        "from PIL import Image\n"
        "from cyclecorr.data.hygiene import EvaluationIndex, Screener\n"
        "if __name__ == '__main__':  # spawned workers import this file again\n"
        "    rng = np.random.default_rng(0)\n"
        "    paths = []\n"
        "    for i in range(2):\n"
        f"        p = '{tmp_path}/e%d.png' % i\n"
        "        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p)\n"
        "        paths.append(p)\n"
        f"    index = EvaluationIndex.build(paths, cache='{tmp_path}/cache')\n"
        f"    s = Screener(index, workers=2, cache='{tmp_path}/cache')\n"
        "    s.check([rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(4)])\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(600)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    kids: set[int] = set()
    try:
        line = proc.stdout.readline().decode()
        assert "ready" in line, line + proc.stdout.read().decode()[-2000:]
        kids = _descendants(proc.pid)
        assert len(kids) >= 2, kids
        _kill_parent_and_check(proc, kids, "screening workers")
    finally:
        _clean_up(proc, kids)


def test_bit_flipped_shard_is_regenerated_and_named(prepared, inputs, tmp_path):
    """A shard damaged on disk (one bit) is found by the next preparation (its SHA-256 against
    the record), named and regenerated byte for byte; until then training refuses the folder
    naming the file."""
    import shutil

    from cyclecorr.train.config import load_config
    from cyclecorr.train.run_data import build_quartets

    full, _ = prepared
    out = tmp_path / "flipped"
    shutil.copytree(full, out)
    shard = out / "shards" / "quartets-00001.safetensors"
    good = shard.read_bytes()
    raw = bytearray(good)
    raw[len(raw) // 2] ^= 0x10
    shard.write_bytes(bytes(raw))
    cfg = load_config("smoke", [f"data.quartets={out}", "net.image_size=128"])
    with pytest.raises(DataError, match=r"quartets-00001\.safetensors: sha256 differs"):
        build_quartets(cfg)
    logs: list[str] = []
    summary = prepare_quartets(inputs["real"], inputs["cad"], out, N_QUARTETS,
                               QuartetConfig(**CFG), workers=1, progress=False, log=logs.append,
                               bank_cache=inputs["bank"])
    assert summary["shards_made"] == 1 and summary["quartets_made"] == 4
    assert any("quartets-00001.safetensors is corrupt" in m for m in logs), logs
    assert shard.read_bytes() == good
    assert json.loads((out / "manifest.json").read_text()) == \
        json.loads((full / "manifest.json").read_text())
    assert verify_quartets(out) == 2 + 4
    # an untouched folder is re-verified and nothing is made again
    again = prepare_quartets(inputs["real"], inputs["cad"], out, N_QUARTETS,
                             QuartetConfig(**CFG), workers=1, progress=False,
                             log=lambda *_: None, bank_cache=inputs["bank"])
    assert again["shards_made"] == 0
