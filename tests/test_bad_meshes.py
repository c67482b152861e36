"""Meshes that would break rendering or retrieval: a clear error naming the file when loading
one, a count and the names when a long job (render bank, `cyclecorr prepare`, `cyclecorr
render`) meets them among good ones, and never a crash halfway."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from cyclecorr.render import Light, MeshError, Renderer, Viewpoint, load_mesh

BAD = {  # file name → (content, what the error says)
    "nan.obj": ("v 0 0 nan\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\n", "NaN"),
    "nofaces.obj": ("v 0 0 0\nv 1 0 0\nv 0 1 0\n", "empty"),
    "zeroarea.obj": ("v 0 0 0\nv 1 0 0\nv 2 0 0\nv 3 0 0\nf 1 2 3\nf 2 3 4\n", "degenerate"),
    "plane.obj": ("v -1 0 -1\nv 1 0 -1\nv 1 0 1\nv -1 0 1\nf 1 2 3\nf 1 3 4\n", "flat mesh"),
    "garbage.ac": ("AC3Db\nOBJECT world\nkids 1\nOBJECT poly\nnumvert 1\n0 zero 0\n",
                   "line 6: vertex"),
    "lines.ac": ("AC3Db\nOBJECT world\nkids 1\nOBJECT poly\nnumvert 2\n0 0 0\n1 0 0\n"
                 "numsurf 1\nSURF 0x2\nrefs 2\n0 0 0\n1 0 0\nkids 0\n", "empty mesh"),
}


def _car_obj(seed: int, inside_out: bool = False) -> str:
    from cyclecorr.train.demo import procedural_car

    m = procedural_car(np.random.default_rng(seed))
    f = m.faces[:, ::-1] if inside_out else m.faces
    # the canonical (z up, front −y) car written in the OBJ convention (y up, front +z)
    v = m.vertices @ np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]]).T
    return ("".join(f"v {a:.6f} {b:.6f} {c:.6f}\n" for a, b, c in v)
            + "".join(f"f {i + 1} {j + 1} {k + 1}\n" for i, j, k in f))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Three good cars, one of them also inside out, and every kind of bad mesh."""
    d = tmp_path_factory.mktemp("mixed-cad")
    for i in range(3):
        (d / f"good{i}.obj").write_text(_car_obj(i))
    (d / "inside_out.obj").write_text(_car_obj(0, inside_out=True))
    for name, (text, _) in BAD.items():
        (d / name).write_text(text)
    good = sorted(str(d / f"good{i}.obj") for i in range(3)) + [str(d / "inside_out.obj")]
    return d, good, sorted(str(d / n) for n in BAD)


def test_bad_meshes_raise_errors_naming_the_file(mixed):
    d, _, _ = mixed
    for name, (_, what) in BAD.items():
        with pytest.raises(MeshError, match=f"{name}.*{what}"):
            load_mesh(d / name)


def test_inside_out_mesh_renders_like_the_original(mixed):
    d, _, _ = mixed
    a, b = load_mesh(d / "good0.obj"), load_mesh(d / "inside_out.obj")
    np.testing.assert_array_equal(a.vertices, b.vertices)
    assert (a.faces[:, ::-1] == b.faces).all()
    r = Renderer(backend="raster")
    for vp in (Viewpoint(30, 20), Viewpoint(200, 5)):
        ra, rb = r.render(a, vp, 64), r.render(b, vp, 64, light=Light())
        np.testing.assert_array_equal(ra.mask, rb.mask)
        np.testing.assert_array_equal(ra.depth, rb.depth)
        np.testing.assert_array_equal(ra.rgb, rb.rgb)


@pytest.mark.parametrize("workers", [1, 2])
def test_render_bank_skips_bad_meshes_with_names(mixed, tmp_path, workers):
    from cyclecorr.data.retrieval import build_bank, viewpoint_grid

    d, good, bad = mixed
    models = sorted(good + bad)
    logs = []
    bank = build_bank(models, viewpoint_grid(120, (10,)), cache=tmp_path, workers=workers,
                      progress=False, log=logs.append)
    assert sorted(bank.models) == sorted(good)
    assert sorted(bank.params["skipped"]) == bad
    assert bank.descriptors.shape[:2] == (len(good), 3)
    for name, (_, what) in BAD.items():
        assert any(name in m and what in m for m in logs), (name, logs)
    # a resumed bank (cached descriptors) skips the same models
    again = build_bank(models, viewpoint_grid(120, (10,)), cache=tmp_path, workers=1,
                       progress=False, log=lambda *_: None)
    assert again.models == bank.models and sorted(again.params["skipped"]) == bad


def test_prepare_skips_bad_meshes_and_reports_them(mixed, data_dir, tmp_path, capsys, voc_folder):
    from cyclecorr.commands import prepare_cmd

    d, good, bad = mixed
    p = argparse.ArgumentParser()
    prepare_cmd.add_arguments(p)
    args = p.parse_args(["--real", voc_folder("car"), "--cad", str(d),
                         "--out", str(tmp_path / "q"), "--quartets", "6", "--workers", "1",
                         "--azimuth-step", "90", "--elevations", "10", "--k", "2",
                         "--max-azimuth-gap", "180", "--shard-size", "3", "--quiet",
                         "--bank-cache", str(tmp_path / "banks")])
    assert prepare_cmd.run(args) == 0
    out = capsys.readouterr().out
    assert f"skipped {len(bad)} model(s) that could not be rendered" in out
    for b in bad:
        assert b in out
    from cyclecorr.data import QuartetDataset

    ds = QuartetDataset(tmp_path / "q")
    assert len(ds) == 6
    assert sorted(ds.manifest["models"]) == sorted(good)


def test_render_command_names_every_failure_and_finishes(mixed, tmp_path, capsys, monkeypatch):
    from cyclecorr.commands import render_cmd

    d, good, bad = mixed
    real_render = Renderer.render

    def render(self, mesh, *a, **k):  # a model that loads but fails in the renderer
        if mesh.source.endswith("good1.obj"):
            raise RuntimeError("the model projects to a degenerate box")
        return real_render(self, mesh, *a, **k)

    monkeypatch.setattr(Renderer, "render", render)
    p = argparse.ArgumentParser()
    render_cmd.add_arguments(p)
    args = p.parse_args([str(d), "--out", str(tmp_path / "r"), "--views", "2", "--size", "32",
                         "--no-progress"])
    assert render_cmd.run(args) == 0
    err = capsys.readouterr().err
    rendered = sorted(x.name for x in (tmp_path / "r").iterdir() if (x / "views.json").is_file())
    assert rendered == ["good0", "good2", "inside_out"]
    assert f"skipped {len(bad) + 1} model(s)" in err and "degenerate box" in err
    for b in bad + [str(d / "good1.obj")]:
        assert f"skipping {b}" in err
