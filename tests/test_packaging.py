"""The package as users install it: ``python -m build`` makes an sdist and a wheel from it; the
wheel holds the shipped weights, their model card and the presets and declares the ``cyclecorr``
command; installed into a fresh virtual environment (``--no-deps``; the dependencies come from
this environment's site-packages) the command runs and finds its weights and presets there.

Skipped where the ``build`` front end is missing, or where the build backend (setuptools, fetched
into an isolated environment as for any user) cannot be downloaded."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# what a fresh clone holds that the build reads
_SOURCES = ("pyproject.toml", "README.md", "LICENSE", "cyclecorr")
# failures of the isolated build environment's set-up (no network, no index), not of the project
_OFFLINE = re.compile(r"(Could not find a version|No matching distribution|Failed to establish|"
                      r"Temporary failure in name resolution|Network is unreachable|"
                      r"ConnectionError|Max retries exceeded)", re.I)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """sdist and wheel of a copy of the source tree, built as a user builds them."""
    pytest.importorskip("build", reason="the `build` front end is not installed "
                                        "(pip install -e '.[dev]', which scripts/setup.sh runs)")
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"
    src.mkdir()
    for name in _SOURCES:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(p, src / name)
    out = tmp / "dist"
    r = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(src)],
                       capture_output=True, text=True, env=_env(), timeout=600)
    log = r.stdout + r.stderr
    if r.returncode != 0:
        if _OFFLINE.search(log):
            pytest.skip("the build backend (setuptools>=77) could not be fetched into the isolated "
                        "build environment (offline?): " + _OFFLINE.search(log).group(0))
        pytest.fail(f"python -m build failed:\n{log[-3000:]}")
    assert not re.search(r"SetuptoolsDeprecationWarning|is deprecated", log), \
        f"the build printed deprecation warnings:\n{log[-3000:]}"
    return out


def test_wheel_contents(dist):
    wheels = list(dist.glob("cyclecorr-*.whl"))
    assert len(wheels) == 1 and len(list(dist.glob("cyclecorr-*.tar.gz"))) == 1
    with zipfile.ZipFile(wheels[0]) as z:
        names = set(z.namelist())
        info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry = z.read(info).decode()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        weights = z.read("cyclecorr/weights/car.safetensors")
    assert (ROOT / "cyclecorr/weights/car.safetensors").read_bytes() == weights
    shipped = {p.relative_to(ROOT).as_posix() for d in ("weights", "configs")
               for p in (ROOT / "cyclecorr" / d).iterdir() if p.suffix in (".safetensors", ".md",
                                                                             ".json")}
    assert {"cyclecorr/weights/car.md", "cyclecorr/configs/cpu.json",
            "cyclecorr/configs/paper.json", "cyclecorr/configs/demo.json"} <= shipped
    assert shipped <= names, f"missing from the wheel: {sorted(shipped - names)}"
    assert re.search(r"^\[console_scripts\]\s*\ncyclecorr\s*=\s*cyclecorr\.cli:main", entry, re.M)
    assert re.search(r"^License-Expression: MIT$", meta, re.M)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_wheel_installs_and_runs(dist, tmp_path):
    """Install the wheel into a new venv and run the command from there (not from the tree)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    py = venv / "bin" / "python"
    # the dependencies (torch, numpy, …) from this environment, after the venv's own packages
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True, check=True
                               ).stdout.strip())
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_deps_from_test_env.pth").write_text("\n".join(sorted(here)) + "\n")
    wheel = next(dist.glob("cyclecorr-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, env=_env(), timeout=300)
    exe = venv / "bin" / "cyclecorr"
    assert exe.is_file()
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, env=_env(),
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    for cmd in ("demo", "match", "evaluate", "train", "prepare"):
        assert cmd in r.stdout
    code = ("import cyclecorr, json; from cyclecorr.checkpoint import shipped_model_path, "
            "read_metadata; from cyclecorr.train.config import load_config; "
            "p = shipped_model_path('car'); "
            "print(json.dumps([cyclecorr.__file__, str(p), p.with_suffix('.md').is_file(), "
            "read_metadata(p)['net']['image_size'], load_config('cpu').name]))")
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, env=_env(),
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    import json

    mod, weights, card, size, preset = json.loads(r.stdout.strip().splitlines()[-1])
    # the wheel's copy, not the source tree's
    assert Path(mod).resolve().is_relative_to(venv.resolve()), mod
    assert Path(weights).resolve().is_relative_to(venv.resolve()) and card
    assert size == 128 and preset == "cpu"
