"""Every input either right or refused: the one image contract through the API (``Matcher``) and
through ``cyclecorr match`` (exit status, one line naming the problem, no traceback, no output
written), model files that are refused at load, two ``match`` processes into one folder."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from cyclecorr import Matcher
from cyclecorr.checkpoint import load_model, read_metadata, save_model
from cyclecorr.cli import main
from cyclecorr.data.io import DataError, read_flo, read_image
from cyclecorr.images import MIN_SIDE, ImageError, image_array
from cyclecorr.model import NetConfig, build_network

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    net = build_network(NetConfig(width=0.25, image_size=64))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    save_model(path, net, {"step": 1, "stage": 2})
    return path


@pytest.fixture(scope="module")
def matcher(model_file):
    return Matcher.from_checkpoint(model_file, device="cpu")


def _photo(h=40, w=52, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    return np.array(Image.fromarray(base).resize((w, h), Image.BILINEAR))


A, B = _photo(40, 52, 0), _photo(36, 44, 1)


# ---------------------------------------------------------------------------------------------
# the API: accepted inputs give the same flow as the plain uint8 image
ACCEPTED = {
    "uint8 H×W×3": lambda a: a,
    "uint16 (0–65535)": lambda a: a.astype(np.uint16) * 257,
    "float32 in [0, 1]": lambda a: a.astype(np.float32) / 255,
    "float64 in [0, 1]": lambda a: a / 255.0,
    "RGBA": lambda a: np.concatenate([a, np.full(a.shape[:2] + (1,), 7, np.uint8)], 2),
    "torch uint8 (3, H, W)": lambda a: torch.from_numpy(a).permute(2, 0, 1).contiguous(),
    "torch float (3, H, W)": lambda a: torch.from_numpy(a).permute(2, 0, 1).float() / 255,
    "torch bfloat16 (3, H, W)": lambda a: (torch.from_numpy(a).permute(2, 0, 1).float()
                                           / 255).bfloat16(),
    "PIL RGB": lambda a: Image.fromarray(a),
    "PIL RGBA": lambda a: Image.fromarray(a).convert("RGBA"),
}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_api_accepted_inputs_match_the_uint8_image(matcher, name):
    ref = matcher.match(A, B)["flow"]
    out = matcher.match(ACCEPTED[name](A), B)["flow"]
    tol = 0.05 if "bfloat16" in name else 1e-3  # bf16 holds 8 bits of mantissa
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= tol, name


@pytest.mark.parametrize("mode", ["L", "LA", "P", "I;16", "I", "F", "1"])
def test_api_pil_modes_equal_their_grey_values(matcher, mode):
    """Each grey PIL mode is converted from its own range: the flow is that of the uint8 grey
    image with the same values (16-bit and float modes hold them at their own scale)."""
    g = A.mean(axis=2).round().astype(np.uint8)
    if mode == "1":
        g = np.where(g > 127, 255, 0).astype(np.uint8)
    grey8 = np.repeat(g[..., None], 3, axis=2)
    im = {"L": lambda: Image.fromarray(g),
          "LA": lambda: Image.fromarray(np.stack([g, np.full_like(g, 9)], -1), "LA"),
          "P": lambda: Image.fromarray(g).convert("P"),
          "I;16": lambda: Image.fromarray(g.astype(np.uint16) * 257),
          "I": lambda: Image.fromarray(g.astype(np.int32) * 257),
          "F": lambda: Image.fromarray(g.astype(np.float32) / 255),
          "1": lambda: Image.fromarray(g > 127)}[mode]()
    assert im.mode == mode
    np.testing.assert_allclose(image_array(im), grey8 / 255.0, atol=1e-6)
    np.testing.assert_allclose(matcher.match(im, B)["flow"], matcher.match(grey8, B)["flow"],
                               atol=1e-3)


# the API: refused inputs, each with a message naming the argument and the problem
REFUSED = {
    "int64": (lambda: A.astype(np.int64), "int64 image"),
    "int8": (lambda: (A // 2).astype(np.int8), "int8 image"),
    "int32": (lambda: A.astype(np.int32), "int32 image"),
    "uint32": (lambda: A.astype(np.uint32), "uint32 image"),
    "bool": (lambda: A > 127, "bool array"),
    "complex": (lambda: A.astype(np.complex64), "complex64 array"),
    "object": (lambda: A.astype(object), "object array"),
    "list": (lambda: A.tolist(), "a list is not an image"),
    "tuple": (lambda: tuple(A.tolist()), "a tuple is not an image"),
    "path string": (lambda: "examples/car_a.jpg", "read the file first"),
    "float 0–255": (lambda: A.astype(np.float32), "divide it by 255"),
    "negative floats": (lambda: (A / 255.0 - 0.5) / 0.25, "normalisation"),
    "float NaN": (lambda: np.full(A.shape, np.nan, np.float32), "NaN"),
    "float inf": (lambda: np.where(A > 200, np.inf, A / 255.0), "NaN or infinite"),
    "torch NaN": (lambda: torch.full((3, 40, 52), float("nan")), "NaN"),
    "torch channels-last": (lambda: torch.from_numpy(A), "channels-last"),
    "torch batch": (lambda: torch.zeros(1, 3, 40, 52), "batch of one"),
    "torch bool": (lambda: torch.ones(3, 40, 52, dtype=torch.bool), "bool array"),
    "numpy channels-first": (lambda: A.transpose(2, 0, 1).copy(), "channels-first"),
    "H×W×2": (lambda: A[..., :2].copy(), "H×W×3"),
    "1×1": (lambda: np.zeros((1, 1, 3), np.uint8), "1×1 px"),
    f"{MIN_SIDE - 1}×200": (lambda: np.zeros((MIN_SIDE - 1, 200, 3), np.uint8), "smallest"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_api_refused_inputs_name_the_problem(matcher, name):
    make, words = REFUSED[name]
    with pytest.raises(ImageError, match="^src: ") as e:
        matcher.match(make(), B)
    assert words in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ImageError, match="^tgt: "):
        matcher.match(A, make())


def test_api_keypoints_refused_when_not_finite(matcher):
    with pytest.raises(ValueError, match=r"NaN or infinite \(first: row 1\)"):
        matcher.transfer_keypoints(A, B, [[3.0, 4.0], [np.nan, 2.0]])
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        matcher.transfer_keypoints(A, B, [[3.0, 4.0, 5.0]])


# ---------------------------------------------------------------------------------------------
# the image reader and the command: files converted by their range, or refused before any work
def _png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG that declares ``w × h`` pixels and holds none (enough for PIL to open it)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0,
                                                                       0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def test_read_image_converts_modes_by_their_range(tmp_path):
    g = A.mean(axis=2).round().astype(np.uint8)
    want = np.repeat(g[..., None], 3, axis=2)
    Image.fromarray(g.astype(np.uint16) * 257).save(tmp_path / "g16.png")  # 16-bit grey PNG
    Image.fromarray(g.astype(np.int32) * 257).save(tmp_path / "i32.tif")
    Image.fromarray(g.astype(np.float32) / 255).save(tmp_path / "f.tif")
    Image.fromarray(np.stack([g, np.full_like(g, 3)], -1), "LA").save(tmp_path / "la.png")
    Image.fromarray(g).convert("P").save(tmp_path / "p.png")
    for name in ("g16.png", "i32.tif", "f.tif", "la.png", "p.png"):
        got = read_image(tmp_path / name)
        assert got.dtype == np.uint8 and got.shape == want.shape, name
        assert np.abs(got.astype(int) - want).max() <= 1, name  # 16-bit rounding to 8 bits
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode == "I;16"  # the case PIL's own convert("RGB") clips to white


def test_read_image_refuses_out_of_range_and_huge_files(tmp_path):
    Image.fromarray(np.full((20, 20), 100000, np.int32)).save(tmp_path / "big_i.tif")
    with pytest.raises(DataError, match=r"big_i\.tif: 32-bit integer image.*100000"):
        read_image(tmp_path / "big_i.tif")
    Image.fromarray(np.full((20, 20), 200.0, np.float32)).save(tmp_path / "f255.tif")
    with pytest.raises(DataError, match=r"f255\.tif: float image has values up to 200"):
        read_image(tmp_path / "f255.tif")
    huge = _png_header_only(tmp_path / "huge.png", 20000, 20000)
    with pytest.raises(DataError, match=r"huge\.png: image is 20000×20000 px \(400 Mpx\), larger"):
        read_image(huge)


def _kps(tmp_path, text):
    p = tmp_path / "kps.txt"
    p.write_text(text)
    return p


def _model_with(tmp_path, name, meta=None, tensors=None, model_file=None):
    w = load_file(str(model_file))
    if tensors is not None:
        w = tensors(w)
    net = read_metadata(model_file)["net"]
    save_file(w, str(tmp_path / name), metadata={"cyclecorr": meta(net) if meta else
                                                 json.dumps({"net": net})})
    return tmp_path / name


def _nan_first(w):
    w = dict(w)
    k = sorted(k for k, v in w.items() if v.is_floating_point())[0]
    w[k] = w[k].clone()
    w[k].view(-1)[0] = float("nan")
    return w


# name → (make the command's arguments from (tmp_path, a, b, out, model_file), words in the
# message); a, b are valid image files
CLI_REFUSED = {
    "1×1 image": (lambda t, a, b, o, m: [str(_save(t / "one.png", np.zeros((1, 1, 3),
                                                                           np.uint8))), str(b)],
                  "one.png: image is 1×1 px"),
    "7×300 image": (lambda t, a, b, o, m: [str(_save(t / "thin.png", np.zeros((7, 300, 3),
                                                                             np.uint8))), str(b)],
                    "thin.png: image is 300×7 px"),
    "20000×20000 PNG": (lambda t, a, b, o, m: [str(_png_header_only(t / "huge.png", 20000,
                                                                    20000)), str(b)],
                        "huge.png: image is 20000×20000 px"),
    "not an image": (lambda t, a, b, o, m: [str(_bytes(t / "x.jpg", b"not a jpeg")), str(b)],
                     "x.jpg: cannot decode image"),
    "32-bit image out of range": (
        lambda t, a, b, o, m: [str(_save(t / "i.tif", np.full((20, 20), 10 ** 6, np.int32))),
                               str(b)], "i.tif: 32-bit integer image"),
    "binary pairs.txt": (lambda t, a, b, o, m: [str(_binary_pairs(t))],
                         "pairs.txt: not a text file"),
    "NaN keypoints": (lambda t, a, b, o, m: [str(a), str(b), "--keypoints",
                                             str(_kps(t, "3 4\nnan 2\n"))],
                      "kps.txt: 1 keypoint(s) are NaN or infinite (first: keypoint 2)"),
    "--out is a file": (lambda t, a, b, o, m: [str(a), str(b), "--out",
                                               str(_bytes(t / "f", b"x"))],
                        "--out " + "{t}/f: is a file"),
    "--out under a file": (lambda t, a, b, o, m: [str(a), str(b), "--out",
                                                  str(_bytes(t / "f", b"x") / "sub")],
                           "cannot create the folder, {t}/f is a file"),
    "--device nosuch": (lambda t, a, b, o, m: [str(a), str(b), "--device", "nosuch"],
                        "--device nosuch: not a device name"),
    "--input-size 100": (lambda t, a, b, o, m: [str(a), str(b), "--input-size", "100"],
                         "--input-size must be a positive multiple of 16"),
    "model: NaN weights": (
        lambda t, a, b, o, m: [str(a), str(b), "--model",
                               str(_model_with(t, "nan.safetensors", tensors=_nan_first,
                                               model_file=m))],
        "nan.safetensors: weight"),
    "model: metadata not JSON": (
        lambda t, a, b, o, m: [str(a), str(b), "--model",
                               str(_model_with(t, "j.safetensors", meta=lambda n: "{oops",
                                               model_file=m))],
        "j.safetensors: the 'cyclecorr' metadata is not valid JSON"),
    "model: metadata a list": (
        lambda t, a, b, o, m: [str(a), str(b), "--model",
                               str(_model_with(t, "l.safetensors", meta=lambda n: "[1, 2]",
                                               model_file=m))],
        "l.safetensors: the 'cyclecorr' metadata must be a JSON object"),
    "model: no net key": (
        lambda t, a, b, o, m: [str(a), str(b), "--model",
                               str(_model_with(t, "n.safetensors",
                                               meta=lambda n: json.dumps({"step": 1}),
                                               model_file=m))],
        "n.safetensors: the 'cyclecorr' metadata has no 'net' object"),
    "model: unknown network field": (
        lambda t, a, b, o, m: [str(a), str(b), "--model",
                               str(_model_with(t, "u.safetensors",
                                               meta=lambda n: json.dumps({"net": {**n,
                                                                                  "wings": 2}}),
                                               model_file=m))],
        "u.safetensors: its network configuration is not one this version builds"),
}
if not torch.cuda.is_available():
    CLI_REFUSED["--device cuda without a GPU"] = (
        lambda t, a, b, o, m: [str(a), str(b), "--device", "cuda"],
        "--device cuda: CUDA is not available on this machine")


def _save(path, arr):
    Image.fromarray(arr).save(path)
    return path


def _bytes(path, data):
    path.write_bytes(data)
    return path


def _binary_pairs(t):
    d = t / "pairs"
    d.mkdir()
    _save(d / "a.png", A)
    _save(d / "b.png", B)
    (d / "pairs.txt").write_bytes(bytes(range(256)))
    return d


@pytest.mark.parametrize("name", list(CLI_REFUSED))
def test_match_command_refuses_with_one_line_and_writes_nothing(tmp_path, capsys, model_file,
                                                               name):
    make, words = CLI_REFUSED[name]
    a, b = _save(tmp_path / "a.png", A), _save(tmp_path / "b.png", B)
    out = tmp_path / "out"
    args = make(tmp_path, a, b, out, model_file)
    if "--out" not in args:
        args += ["--out", str(out)]
    if "--model" not in args:
        args += ["--model", str(model_file)]
    rc = main(["match", *args])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cyclecorr match: error: "), err
    assert "Traceback" not in err
    assert words.format(t=tmp_path) in lines[0], lines[0]
    assert not out.exists()  # refused before anything was written


def test_debug_flag_shows_the_traceback(tmp_path, capsys):
    a = _save(tmp_path / "a.png", A)
    with pytest.raises(DataError, match="one.png: image is 1×1 px"):
        main(["--debug", "match", str(_save(tmp_path / "one.png", np.zeros((1, 1, 3),
                                                                           np.uint8))),
              str(a), "--out", str(tmp_path / "o"), "--method", "zero"])
    with pytest.raises(DataError):
        main(["match", str(tmp_path / "one.png"), str(a), "--out", str(tmp_path / "o"),
              "--method", "zero", "--debug"])


def test_match_command_reads_16_bit_grey_as_its_values(tmp_path, model_file, matcher):
    """A 16-bit grey PNG (PIL mode I;16, white through PIL's own RGB conversion) is matched as
    the grey image it holds: the written flow is the API's flow of the 8-bit equivalent."""
    g = A.mean(axis=2).round().astype(np.uint8)
    Image.fromarray(g.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    b = _save(tmp_path / "b.png", B)
    out = tmp_path / "out"
    assert main(["match", str(tmp_path / "g16.png"), str(b), "--out", str(out), "--model",
                 str(model_file)]) == 0
    want = matcher.match(np.repeat(g[..., None], 3, axis=2), B)["flow"]
    got = read_flo(out / "g16-b" / "flow.flo").transpose(1, 2, 0)
    np.testing.assert_allclose(got, want, atol=1e-3)
    assert np.asarray(Image.open(out / "g16-b" / "source.png")).mean() == pytest.approx(
        g.mean(), abs=0.5)


def test_large_photo_is_drawn_downscaled_with_raw_numbers_at_full_size(tmp_path, model_file):
    big = np.asarray(Image.fromarray(A).resize((2400, 1800), Image.BILINEAR))
    a, b = _save(tmp_path / "big.png", big), _save(tmp_path / "b.png", B)
    out = tmp_path / "out"
    kp = _kps(tmp_path, "1200 900\n100 1700\n")
    assert main(["match", str(a), str(b), "--out", str(out), "--model", str(model_file),
                 "--keypoints", str(kp)]) == 0
    d = out / "big-b"
    with Image.open(d / "source.png") as im:
        assert im.size == (1024, 768)  # drawn at most 1024 px a side
    with Image.open(d / "transfer.png") as im:
        assert max(im.size) <= 4096
    flow = read_flo(d / "flow.flo")
    assert flow.shape == (2, 1800, 2400)  # the raw flow in the photo's own pixels
    assert np.load(d / "matchability.npy").shape == (1800, 2400)
    t = np.loadtxt(d / "transfer.txt")
    np.testing.assert_allclose(t[:, :2], [[1200, 900], [100, 1700]])
    # the transferred points read the full-size flow: q = p + flow(p)
    np.testing.assert_allclose(t[0, 2:], [1200 + flow[0, 900, 1200], 900 + flow[1, 900, 1200]],
                               atol=1e-3)
    rec = json.loads((d / "pair.json").read_text())
    assert rec["entry"]["stats"]["drawn_source"] == [768, 1024]
    v = rec["entry"]["viewer"]
    assert (v["w"], v["h"]) == (1024, 768) and (v["tw"], v["th"]) == (44, 36)


# ---------------------------------------------------------------------------------------------
# model files
def test_nan_weight_checkpoint_refused_at_load(tmp_path, model_file):
    bad = _model_with(tmp_path, "nan.safetensors", tensors=_nan_first, model_file=model_file)
    with pytest.raises(ValueError, match=r"nan\.safetensors: weight '.*' holds 1 NaN or infinite"):
        load_model(bad)
    with pytest.raises(ValueError, match=r"nan\.safetensors"):
        Matcher.from_checkpoint(bad, device="cpu")
    inf = _model_with(tmp_path, "inf.safetensors", model_file=model_file,
                      tensors=lambda w: {k: (v * float("inf") if v.is_floating_point() else v)
                                         for k, v in w.items()})
    with pytest.raises(ValueError, match=r"inf\.safetensors: weight"):
        load_model(inf)


# ---------------------------------------------------------------------------------------------
# two processes writing into one --out
def test_two_concurrent_match_runs_into_one_folder(tmp_path, model_file):
    """Two ``cyclecorr match`` processes, each matching three pairs whose folder names collide
    with the other's (same file names, different pictures), into one --out: both end with exit
    0, every pair folder holds one pair's files only (its flow equals the API's flow of the
    pictures it names), and the page lists all six."""
    runs = []
    for r in range(2):
        d = tmp_path / f"in{r}"
        d.mkdir()
        lines = []
        for k in range(3):
            _save(d / f"s{k}.png", _photo(40 + 4 * k, 52, seed=10 * r + k))
            _save(d / f"t{k}.png", _photo(36, 44 + 4 * k, seed=100 + 10 * r + k))
            lines.append(f"s{k}.png t{k}.png")
        (d / "pairs.txt").write_text("\n".join(lines) + "\n")
        runs.append(d)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-m", "cyclecorr", "match", str(d), "--out",
                               str(out), "--model", str(model_file), "--device", "cpu"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for d in runs]
    logs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(folders) == 6, [f.name for f in folders]
    assert not [p for p in out.iterdir() if p.name.startswith((".tmp.", ".old."))]
    m = Matcher.from_checkpoint(model_file, device="cpu")
    seen = set()
    for f in folders:
        rec = json.loads((f / "pair.json").read_text())
        src, tgt = read_image(rec["source"]), read_image(rec["target"])
        seen.add((rec["source"], rec["target"]))
        np.testing.assert_array_equal(np.asarray(Image.open(f / "source.png").convert("RGB")),
                                      src)
        np.testing.assert_array_equal(np.asarray(Image.open(f / "target.png").convert("RGB")),
                                      tgt)
        np.testing.assert_allclose(read_flo(f / "flow.flo").transpose(1, 2, 0),
                                   m.match(src, tgt)["flow"], atol=1e-4)
        flo = read_flo(f / "flow.flo")
        # the picked points (none where the model vouches for no pixel) sit on pixel centres and
        # are carried by this folder's flow
        rows = [line.split() for line in (f / "transfer.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
        for x, y, qx, qy in np.asarray(rows, np.float64).reshape(-1, 4):
            x, y = int(x), int(y)
            np.testing.assert_allclose([qx, qy], [x + flo[0, y, x], y + flo[1, y, x]], atol=2e-3)
    assert len(seen) == 6
    page = (out / "index.html").read_text()
    assert "6 pair(s) matched" in page
    for f in folders:
        assert f"{f.name}/flow.png" in page
