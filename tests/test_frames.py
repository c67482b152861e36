"""Per-model axes from a conventions table (cyclecorr.render.frames), the HOG front vote
(cyclecorr.data.front_vote) and the open-sims collection in the canonical frame."""
from __future__ import annotations

import numpy as np
import pytest

from cyclecorr.render import MeshError, Renderer, Viewpoint, list_meshes, load_mesh
from cyclecorr.render import frames as frames_mod
from cyclecorr.render.frames import PACKAGE_TABLES, frame_key, model_frame, read_front_table

# A small asymmetric "car" in file coordinates: long along x (front at +x: the nose is lower
# than the tail), 0.8 wide along y, 0.6 high along z, resting on z = 0.
_CAR = np.array([[2.0, -0.4, 0.0], [2.0, 0.4, 0.0], [2.0, -0.4, 0.3], [2.0, 0.4, 0.3],
                 [-1.0, -0.4, 0.0], [-1.0, 0.4, 0.0], [-1.0, -0.4, 0.6], [-1.0, 0.4, 0.6]])
_FACES = [(1, 2, 4), (1, 4, 3), (5, 7, 8), (5, 8, 6), (1, 5, 6), (1, 6, 2), (3, 4, 8), (3, 8, 7),
          (1, 3, 7), (1, 7, 5), (2, 6, 8), (2, 8, 4)]
_HEADER = "model_dir\tsource_repo\tup_axis\tlength_axis"


def _write_obj(path, v):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"v {a} {b} {c}" for a, b, c in v] + [f"f {i} {j} {k}" for i, j, k in _FACES]
    path.write_text("\n".join(lines) + "\n")
    return path


def _canonical(v_file, rows):
    """Closed form: file → canonical axes by ``rows`` (3×3), then centre and diagonal 1."""
    v = np.asarray(v_file, float) @ np.asarray(rows, float).T
    lo, hi = v.min(0), v.max(0)
    return (v - (lo + hi) / 2) / np.linalg.norm(hi - lo)


def test_table_z_up_front_column_gives_canonical_frame(tmp_path):
    coll = tmp_path / "coll"
    obj = _write_obj(coll / "simA" / "car1" / "model.obj", _CAR)
    (coll / "MODELS.tsv").write_text(_HEADER + "\tfront_axis\nsimA/car1\tx/y\tz\tx\t+x\n")
    m = load_mesh(obj)
    assert m.kind == "coll"
    # up +z → +z, front +x → −y, so canonical (x, y, z) = (y, −x, z) of the file
    np.testing.assert_allclose(m.vertices, _canonical(_CAR, [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]),
                               atol=1e-6)
    nose = m.vertices[np.argmax(_CAR[:, 0])]
    assert nose[1] == pytest.approx(m.vertices[:, 1].min())      # the front is at −y
    ext = m.vertices.max(0) - m.vertices.min(0)
    assert ext[1] > ext[0] > ext[2]
    # explicit axes override the table
    m2 = load_mesh(obj, up="+z", front="-x")
    np.testing.assert_allclose(m2.vertices, _canonical(_CAR, [[0, -1, 0], [1, 0, 0], [0, 0, 1]]),
                               atol=1e-6)


def test_table_y_up_front_from_package_table(tmp_path, monkeypatch):
    # the same car stored y up, its front at −x; the collection's table has no front: the
    # package's table for the collection (named after the folder holding MODELS.tsv) decides
    v = _CAR[:, [0, 2, 1]] * np.array([-1.0, 1.0, 1.0])    # file (x, y, z) = (−x, z, y)
    coll = tmp_path / "my-sims"
    obj = _write_obj(coll / "simB" / "deep" / "car2" / "model.obj", v)
    (coll / "MODELS.tsv").write_text(_HEADER + "\nsimB/deep/car2\tx/y\ty\tx\n")
    tables = tmp_path / "tables"
    tables.mkdir()
    monkeypatch.setattr(frames_mod, "PACKAGE_TABLES", tables)
    with pytest.raises(MeshError, match="decide_fronts"):
        load_mesh(obj)                                     # no table decides the front
    (tables / "my-sims.tsv").write_text(
        "# comment line\nmodel_dir\tup\tfront\thow\nsimB/deep/car2\t+y\t-x\tvote\n")
    m = load_mesh(obj)
    # up +y → +z, front −x → −y, x = y × z: canonical (x, y, z) = (z, x, y) of the file
    np.testing.assert_allclose(m.vertices, _canonical(v, [[0, 0, 1], [1, 0, 0], [0, 1, 0]]),
                               atol=1e-6)
    np.testing.assert_allclose(m.vertices, _canonical(_CAR, [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]),
                               atol=1e-6)                  # the same canonical car as above
    fr = model_frame(obj)
    assert (fr.up, fr.front, fr.length, fr.how) == ("+y", "-x", "x", "vote")
    key = frame_key(obj)
    # a table that contradicts the collection's up axis is refused, naming the file
    (tables / "my-sims.tsv").write_text("model_dir\tup\tfront\nsimB/deep/car2\t+z\t-x\n")
    with pytest.raises(MeshError, match="my-sims.tsv"):
        load_mesh(obj)
    # deciding the front anew changes the cache key of anything rendered from the model
    (tables / "my-sims.tsv").write_text("model_dir\tup\tfront\nsimB/deep/car2\t+y\t+x\n")
    assert frame_key(obj) not in (None, key)
    from cyclecorr.data.retrieval import _file_key
    assert _file_key(obj)[-1] == frame_key(obj)


def test_unlisted_model_keeps_source_convention_and_bad_tables_fail(tmp_path):
    coll = tmp_path / "coll"
    listed = _write_obj(coll / "a" / "model.obj", _CAR)
    other = _write_obj(coll / "b" / "model.obj", _CAR)
    (coll / "MODELS.tsv").write_text(_HEADER + "\tfront_axis\na\tx\tz\tx\t+x\n")
    assert model_frame(other) is None and frame_key(other) is None
    assert load_mesh(other).kind == "obj"                  # generic OBJ: y up, front +z
    assert load_mesh(listed).kind == "coll"
    assert load_mesh(listed, source="obj").kind == "obj"   # an explicit source skips tables
    # a table without the conventions columns is not one (e.g. an image label list)
    (coll / "MODELS.tsv").write_text("image\tlabel\nx.jpg\tPOANG\n")
    assert model_frame(listed) is None
    for bad, msg in ((_HEADER + "\na\tx\tq\tx\n", "axis must be"),
                     (_HEADER + "\na\tx\tz\tz\n", "is the up axis"),
                     (_HEADER + "\tfront_axis\na\tx\tz\tx\t+y\n", "not along the length")):
        (coll / "MODELS.tsv").write_text(bad)
        with pytest.raises(MeshError, match=msg) as e:
            load_mesh(listed)
        assert "MODELS.tsv" in str(e.value)


# ------------------------------------------------------------------------ the front vote
def test_front_vote_recovers_a_turned_gsnet_car(data_dir):
    from cyclecorr.data.front_vote import VOTE_VIEWS, front_vote, turn_around, view_descriptors

    gsnet = list_meshes(data_dir / "cad" / "car" / "gsnet")
    r = Renderer(cache_size=2)
    test_car, refs = gsnet[7], gsnet[20:40]
    ref = np.stack([view_descriptors(load_mesh(p), renderer=r) for p in refs])
    assert ref.shape == (20, len(VOTE_VIEWS), 1764)
    mesh = load_mesh(test_car)
    turned = front_vote(view_descriptors(turn_around(mesh), renderer=r), ref)
    kept = front_vote(view_descriptors(mesh, renderer=r), ref)
    assert turned.flip and not kept.flip
    assert turned.margin > 0.5 and kept.margin > 0.5 and kept.distance_gap > 0
    # turning around is a rotation by 180° about z: the nose and tail swap ends
    t = turn_around(mesh)
    np.testing.assert_allclose(t.vertices, mesh.vertices * [-1, -1, 1], atol=1e-7)


# ------------------------------------------------------------------ the open-sims collection
def test_open_sims_models_load_canonical_by_committed_table(data_dir):
    root = data_dir / "cad" / "car" / "open-sims"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    table = read_front_table(PACKAGE_TABLES / "open-sims.tsv")
    models = list_meshes(root)
    assert len(models) == len(table) == 71
    r = Renderer(cache_size=2)
    axes = {"x": 0, "y": 1, "z": 2}
    for p in models:
        md = p.parent.relative_to(root).as_posix()
        row = table[md]
        m = load_mesh(p)
        assert m.kind == "open-sims", md
        ext = m.vertices.max(0) - m.vertices.min(0)
        assert ext[1] > ext[0] and ext[1] > ext[2], (md, ext)    # length along y
        assert ext[2] < 0.6 * ext[1], (md, ext)                  # height along z, below length
        # the table's up axis becomes +z and its front −y
        R = m.to_canonical[:3, :3]
        for spec, want in ((row["up"], [0, 0, 1]), (row["front"], [0, -1, 0])):
            a = np.zeros(3)
            a[axes[spec[1]]] = 1.0 if spec[0] == "+" else -1.0
            d = R @ a
            np.testing.assert_allclose(d / np.linalg.norm(d), want, atol=1e-9, err_msg=md)
        v = r.render(m, Viewpoint(30, 15), 48, rgb=False)
        assert v.mask.mean() > 0.3, md                           # non-empty, fills its box


def test_texture_alpha_blends_over_the_material_colour():
    """A texel's alpha blends it over the material's diffuse colour (VDrift body textures are
    transparent black where the car's paint shows): a quad whose texture is transparent on its
    left half renders in the material's colour there and in the texture's (black) on the right."""
    import trimesh
    from PIL import Image

    from cyclecorr.render import Mesh

    v = np.array([[-0.5, 0, -0.3], [0.5, 0, -0.3], [0.5, 0, 0.3], [-0.5, 0, 0.3]])
    f = np.array([[0, 1, 2], [0, 2, 3]])
    tex = np.zeros((8, 8, 4), np.uint8)
    tex[:, 4:, 3] = 255                                     # right half opaque black
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)  # u follows x
    mat = trimesh.visual.material.SimpleMaterial(image=Image.fromarray(tex, "RGBA"),
                                                 diffuse=(200, 50, 50, 255))
    part = trimesh.Trimesh(v, f, visual=trimesh.visual.TextureVisuals(uv=uv, material=mat),
                           process=False)
    mesh = Mesh(v, f, parts=[part])
    out = Renderer(backend="raster").render(mesh, Viewpoint(0, 0), 32)
    left, right = out.rgb[8:24, 2:12].reshape(-1, 3), out.rgb[8:24, 20:30].reshape(-1, 3)
    assert out.mask[8:24, 2:30].all()
    assert (right == 0).all()
    r, g, b = left.astype(float).mean(0)
    assert r > 40 and r == pytest.approx(4 * g, rel=0.05) and g == pytest.approx(b, abs=1)
