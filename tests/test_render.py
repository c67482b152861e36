"""Tests of cyclecorr.render: cameras, crops, mesh loading, rendering and exact correspondence."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest

from cyclecorr.render import (
    CropTransform,
    Mesh,
    MeshError,
    Renderer,
    Viewpoint,
    correspondence_between,
    list_meshes,
    load_mesh,
    project_keypoints,
    render_view,
    synthetic_correspondence,
)
from cyclecorr.render.mesh import axes_rotation


# --------------------------------------------------------------------------- helpers
def bilinear(field: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample (C, H, W) at float (x, y) (pixel centres at integers; inside only)."""
    x0 = np.floor(x).astype(int)
    y0 = np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    a = field[:, y0, x0]
    b = field[:, y0, x0 + 1]
    c = field[:, y0 + 1, x0]
    d = field[:, y0 + 1, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def all_four(mask: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    H, W = mask.shape
    x0 = np.floor(x).astype(int)
    y0 = np.floor(y).astype(int)
    ok = (x0 >= 0) & (y0 >= 0) & (x0 < W - 1) & (y0 < H - 1)
    x0, y0 = np.clip(x0, 0, W - 2), np.clip(y0, 0, H - 2)
    return ok & mask[y0, x0] & mask[y0, x0 + 1] & mask[y0 + 1, x0] & mask[y0 + 1, x0 + 1]


def cube_mesh(h: float = 0.3) -> Mesh:
    v = np.array([[x, y, z] for x in (-h, h) for y in (-h, h) for z in (-h, h)], float)
    idx = {tuple(np.sign(p).astype(int)): i for i, p in enumerate(v)}
    faces = []
    for axis in range(3):
        for s in (-1, 1):
            corners = []
            for a in (-1, 1):
                for b in (-1, 1):
                    k = [0, 0, 0]
                    k[axis] = s
                    others = [i for i in range(3) if i != axis]
                    k[others[0]], k[others[1]] = a, b
                    corners.append(idx[tuple(k)])
            c00, c01, c10, c11 = corners
            faces += [(c00, c01, c11), (c00, c11, c10)]
    return Mesh.from_arrays(v, np.array(faces))


@pytest.fixture(scope="module", params=["gl", "raster"])
def renderer(request):
    r = Renderer(viewport=256, backend=request.param)
    yield r
    r.close()


# --------------------------------------------------------------------------- cameras, crops
def test_viewpoint_pascal_convention():
    vp = Viewpoint(azimuth=0, elevation=0, distance=3.0)
    np.testing.assert_allclose(vp.center, [0, -3, 0], atol=1e-12)
    R = vp.rotation
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    K = Viewpoint(0, 0, distance=3.0, principal=(100, 50)).intrinsics()
    P = Viewpoint(0, 0, distance=3.0, principal=(100, 50)).projection()

    def proj(X):
        x = P @ np.append(X, 1.0)
        return x[:2] / x[2]

    np.testing.assert_allclose(proj([0, 0, 0]), [100, 50], atol=1e-9)   # origin → principal
    assert proj([0.1, 0, 0])[0] > 100          # +x appears on the right from the front
    assert proj([0, 0, 0.1])[1] < 50           # +z (up) appears up
    assert K[0, 0] == 3000
    # azimuth 90 looks from +x: +y (the rear) appears on the right
    P90 = Viewpoint(90, 0, distance=3.0).projection()
    x = P90 @ np.array([0, 0.1, 0, 1.0])
    assert x[0] / x[2] > 0
    # theta = 90 rotates the image counter-clockwise: the right (+x) goes up
    Pt = Viewpoint(0, 0, theta=90, distance=3.0).projection()
    x = Pt @ np.array([0.1, 0, 0, 1.0])
    assert abs(x[0] / x[2]) < 1e-9 and x[1] / x[2] < 0
    # matches the PASCAL3D+ project_3d formula written out
    a, e, d, th = np.radians(35.0), np.radians(20.0), 2.2, np.radians(10.0)
    vp = Viewpoint(35, 20, theta=10, distance=d, principal=(0, 0))
    C = d * np.array([np.cos(e) * np.sin(a), -np.cos(e) * np.cos(a), np.sin(e)])
    a2, e2 = -a, -(np.pi / 2 - e)
    Rz = np.array([[np.cos(a2), -np.sin(a2), 0], [np.sin(a2), np.cos(a2), 0], [0, 0, 1]])
    Rx = np.array([[1, 0, 0], [0, np.cos(e2), -np.sin(e2)], [0, np.sin(e2), np.cos(e2)]])
    Rp = Rx @ Rz
    X = np.array([0.1, -0.2, 0.15])
    x = np.diag([3000.0, 3000.0, -1.0]) @ (Rp @ (X - C))
    x = x[:2] / x[2]
    x = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]) @ x
    x[1] = -x[1]
    y = vp.projection() @ np.append(X, 1.0)
    np.testing.assert_allclose(y[:2] / y[2], x, atol=1e-8)


def test_viewpoint_rejects_bad_values():
    with pytest.raises(ValueError, match="distance"):
        Viewpoint(0, 0, distance=0)
    with pytest.raises(ValueError, match="azimuth"):
        Viewpoint(float("nan"), 0)


def test_crop_transform_round_trip_and_edges():
    c = CropTransform.from_pixel_box(10, 20, 49, 99, width=128)
    assert (c.x0, c.x1, c.y0, c.y1) == (9.5, 49.5, 19.5, 99.5)
    pts = np.random.default_rng(0).uniform(0, 200, (50, 2))
    np.testing.assert_allclose(c.inverse(c.apply(pts)), pts, atol=1e-9)
    # box edges map to output edges
    np.testing.assert_allclose(c.apply(np.array([[9.5, 19.5], [49.5, 99.5]])),
                               [[-0.5, -0.5], [127.5, 127.5]])
    c2 = CropTransform.from_pixel_box(0, 0, 9, 9, width=10, scale=1.1)
    assert c2.x1 - c2.x0 == pytest.approx(11.0)
    # identity crop reproduces the image
    img = np.random.default_rng(1).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    ident = CropTransform(-0.5, -0.5, 15.5, 11.5, 16, 12)
    np.testing.assert_array_equal(ident.crop_image(img), img)
    with pytest.raises(ValueError, match="x1 > x0"):
        CropTransform(5, 0, 5, 10)


def test_axes_rotation_is_proper():
    for up, front in [("+y", "+z"), ("-y", "+z"), ("+z", "-y"), ("+x", "-z")]:
        R = axes_rotation(up, front)
        assert np.linalg.det(R) == pytest.approx(1.0)
        np.testing.assert_allclose(R @ _ax(up), [0, 0, 1])
        np.testing.assert_allclose(R @ _ax(front), [0, -1, 0])


def _ax(s):
    v = np.zeros(3)
    v["xyz".index(s[1])] = 1.0 if s[0] == "+" else -1.0
    return v


# --------------------------------------------------------------------------- mesh loading
def test_bad_mesh_files_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.obj"):
        load_mesh(tmp_path / "nope.obj")
    empty = tmp_path / "empty.obj"
    empty.write_text("# nothing here\n")
    with pytest.raises(MeshError, match="empty.obj.*empty"):
        load_mesh(empty)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(MeshError, match="garbage.json.*malformed JSON"):
        load_mesh(garbage)
    oob = tmp_path / "oob.json"
    oob.write_text(json.dumps({"vertices": [0, 0, 0, 1, 0, 0, 0, 1, 0], "faces": [3, 0, 1, 7]}))
    with pytest.raises(MeshError, match="oob.json.*out of range"):
        load_mesh(oob)
    flat = tmp_path / "flat.obj"
    flat.write_text("v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n")
    with pytest.raises(MeshError, match="flat.obj.*degenerate"):
        load_mesh(flat)
    nan = tmp_path / "nan.json"
    nan.write_text('{"vertices": [0, 0, NaN, 1, 0, 0, 0, 1, 0], "faces": [3, 0, 1, 2]}')
    with pytest.raises(MeshError, match="nan.json.*NaN"):
        load_mesh(nan)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"vertices": [0, 0, 0, 1, 0, 0, 0, 1], "faces": [3, 0, 1, 2]}))
    with pytest.raises(MeshError, match="bad.json.*multiple of 3"):
        load_mesh(bad)


def test_obj_canonical_frame(tmp_path):
    # a y-up box, longer along +z (the front, for generic OBJ files)
    obj = tmp_path / "box.obj"
    v = np.array([[x, y, z] for x in (-1, 1) for y in (0, 1) for z in (-2, 2)], float)
    lines = [f"v {a} {b} {c}" for a, b, c in v]
    lines += ["f 1 2 4", "f 1 4 3", "f 5 7 8", "f 5 8 6", "f 1 5 6", "f 1 6 2",
              "f 3 4 8", "f 3 8 7", "f 1 3 7", "f 1 7 5", "f 2 6 8", "f 2 8 4"]
    obj.write_text("\n".join(lines) + "\n")
    m = load_mesh(obj)
    lo, hi = m.vertices.min(0), m.vertices.max(0)
    assert np.linalg.norm(hi - lo) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose((lo + hi) / 2, 0, atol=1e-6)
    ext = hi - lo
    assert ext[1] > ext[0] > ext[2]   # length along y, height along z
    # the source's +z end (front) is canonical −y
    Tz = m.to_canonical[:3, :3] @ np.array([0, 0, 1.0])
    assert Tz[1] < 0


def test_pascal3d_and_list_meshes(data_dir):
    cad = data_dir / "cad"
    files = list_meshes(cad / "pascal3d")
    assert len(files) == 23 and all(f.suffix == ".json" for f in files)
    shapenet = list_meshes(cad / "chair" / "shapenet")
    assert len(shapenet) == 10 and all(f.name == "model_normalized.obj" for f in shapenet)
    m = load_mesh(cad / "pascal3d" / "car01.json")
    assert m.kind == "pascal3d" and len(m.keypoints) == 20
    # PASCAL3D+ is already canonical (diagonal 1, centred): keypoints unchanged
    raw = json.loads((cad / "pascal3d" / "car01.json").read_text())["keypoints"]
    p = raw["left_front_light"]
    np.testing.assert_allclose(m.keypoints["left_front_light"], [p["x"], p["y"], p["z"]],
                               atol=2e-4)
    assert m.keypoints["left_front_light"][1] < 0 < m.keypoints["left_back_wheel"][1]
    with pytest.raises(FileNotFoundError):
        list_meshes(cad / "no-such-folder")


def _top_behind(path, q):
    """How far behind the bounding box's centre (canonical +y, in box lengths) the model's top
    ``1 − q`` of vertices lies: a chair's backrest, an aeroplane's fin."""
    v = load_mesh(path).vertices
    top = v[:, 2] >= np.quantile(v[:, 2], q)
    return (v[top, 1].mean() - (v[:, 1].max() + v[:, 1].min()) / 2) / np.ptp(v[:, 1])


def test_shapenet_chairs_and_aeroplanes_face_front(data_dir):
    cad = data_dir / "cad"
    chairs = list_meshes(cad / "chair" / "shapenet")
    reference = sorted((cad / "pascal3d").glob("chair*.json"))
    assert len(chairs) == 10 and len(reference) == 10
    # every chair's backrest is behind its seat, as on the PASCAL3D+ chairs (canonical front −y)
    assert all(_top_behind(p, 0.9) > 0.03 for p in reference)
    assert all(_top_behind(p, 0.9) > 0.03 for p in chairs)
    planes = list_meshes(cad / "aeroplane" / "shapenet")
    fins = [_top_behind(p, 0.98) for p in planes]
    assert len(planes) == 6 and sum(f > 0.05 for f in fins) >= 5  # one is ~0: a high wing


def test_bank_cache_key_follows_the_source_convention(data_dir, monkeypatch):
    from cyclecorr.data import retrieval
    from cyclecorr.render import mesh as mesh_mod

    p = list_meshes(data_dir / "cad" / "chair" / "shapenet")[0]
    before = retrieval._model_cache_file(Path("bank"), str(p))
    monkeypatch.setitem(mesh_mod.SOURCE_CONVENTIONS, "shapenet", ("+y", "+z"))
    assert retrieval._model_cache_file(Path("bank"), str(p)) != before


def test_gsnet_car_upright_and_facing_front(data_dir, renderer):
    m = load_mesh(data_dir / "cad" / "car" / "gsnet" / "0.obj")
    assert m.kind == "gsnet"
    ext = m.vertices.max(0) - m.vertices.min(0)
    assert ext[1] > ext[0] > ext[2]        # long along y, flat along z
    # side mirrors (the widest vertices) sit in the front half (−y), above the middle (+z)
    widest = m.vertices[np.argsort(-np.abs(m.vertices[:, 0]))[:4]]
    assert (widest[:, 1] < 0).all() and (widest[:, 2] > 0).all()
    # azimuth 0 shows the front: visible surface points are on the −y side
    front = render_view(m, Viewpoint(0, 10), renderer=renderer)
    assert np.nanmean(front.points[..., 1]) < -0.15
    back = render_view(m, Viewpoint(180, 10), renderer=renderer)
    assert np.nanmean(back.points[..., 1]) > 0.15
    # upright: the image's top rows show higher points (z) than its bottom rows
    side = render_view(m, Viewpoint(90, 0), renderer=renderer)
    z = side.points[..., 2]
    assert np.nanmean(z[:32]) > np.nanmean(z[-32:]) + 0.1


# --------------------------------------------------------------------------- rendering
def test_render_view_outputs(renderer):
    m = cube_mesh()
    r = render_view(m, Viewpoint(30, 20), size=(96, 64), background=(0, 0, 255),
                    renderer=renderer)
    assert r.rgb.shape == (64, 96, 3) and r.rgb.dtype == np.uint8
    assert r.mask.shape == (64, 96) and r.mask.dtype == bool
    assert r.depth.dtype == np.float32 and r.points.shape == (64, 96, 3)
    # the object's box fills the crop: every border row/column touches the mask
    assert r.mask[0].any() and r.mask[-1].any() and r.mask[:, 0].any() and r.mask[:, -1].any()
    assert (r.depth[~r.mask] == 0).all() and np.isnan(r.points[~r.mask]).all()
    # surface points lie on the cube
    p = r.points[r.mask]
    off = np.abs(np.abs(p).max(1) - 0.3)
    # exact on faces; a pixel straddling an edge may take the neighbouring face's plane
    assert np.percentile(off, 95) < 1e-4 and off.max() < 0.01
    # background colour where the object is not
    assert (r.rgb[~r.mask][:, 2] > 200).mean() > 0.9
    # depth = distance along the optical axis
    pc = (p.astype(np.float64) - r.C) @ r.R.T
    np.testing.assert_allclose(pc[:, 2], r.depth[r.mask], rtol=1e-5)
    with pytest.raises(ValueError, match="inside or behind"):
        render_view(m, Viewpoint(0, 0, distance=0.2), renderer=renderer)


def test_planar_quad_flow_is_homography(renderer):
    # a square in the plane z = 0 (the ground), seen from two elevated cameras
    v = np.array([[-0.4, -0.3, 0], [0.4, -0.3, 0], [0.4, 0.3, 0], [-0.4, 0.3, 0]], float)
    quad = Mesh.from_arrays(v, np.array([[0, 1, 2], [0, 2, 3]]))
    vp_a = Viewpoint(20, 35, theta=5, distance=2.0)
    vp_b = Viewpoint(-40, 55, theta=-10, distance=1.7)
    gt = synthetic_correspondence(quad, vp_a, vp_b, rgb=False, renderer=renderer)
    a, b = gt.view_a, gt.view_b

    def plane_cam(view):
        # pixels of the cropped frame ← plane (X, Y, 1): A · K_img · [r1 r2 t], where A is the
        # crop (x' = (x − x0)·sx − 0.5) and K_img the viewpoint's full-image intrinsics
        Rt = np.concatenate([view.R, (-view.R @ view.C)[:, None]], 1)
        G = view.viewpoint.intrinsics() @ Rt[:, [0, 1, 3]]
        sx, sy = view.crop.scale
        A = np.array([[sx, 0, -view.crop.x0 * sx - 0.5], [0, sy, -view.crop.y0 * sy - 0.5],
                      [0, 0, 1]])
        return A @ G

    Hab = plane_cam(b) @ np.linalg.inv(plane_cam(a))
    ys, xs = np.nonzero(a.mask)
    p = np.stack([xs, ys, np.ones_like(xs)]).astype(float)
    q = Hab @ p
    q = q[:2] / q[2]
    flow = gt.flow[:, ys, xs]
    err = np.linalg.norm(flow - (q - p[:2]), axis=0)
    # exact up to float error; only silhouette corners (no same-surface neighbour on one
    # axis) fall back to the nearest pixel's depth
    assert np.percentile(err, 99.5) < 0.01 and err.max() < 0.5, err.max()
    # a plane seen from its upper side is matchable wherever it lands inside b
    inside = (q[0] >= 0) & (q[0] <= 127) & (q[1] >= 0) & (q[1] <= 127)
    assert (gt.matchability[ys, xs] == inside).mean() > 0.99
    assert inside.mean() > 0.95
    assert (gt.matchability[~a.mask] == 0).all() and (gt.flow[:, ~a.mask] == 0).all()


def test_cube_hidden_faces_and_reprojection(renderer):
    h = 0.3
    cube = cube_mesh(h)
    vp_a, vp_b = Viewpoint(30, 25, distance=2.0), Viewpoint(150, 30, distance=2.2)
    gt = synthetic_correspondence(cube, vp_a, vp_b, renderer=renderer)
    a, b = gt.view_a, gt.view_b
    ys, xs = np.nonzero(a.mask)
    # exact surface point: intersect each a-pixel's ray with the cube (analytic)
    # the ray of each cropped pixel through the full image frame (crop.inverse, then K_img)
    src = a.crop.inverse(np.stack([xs, ys], 1).astype(float))
    Ki = vp_a.intrinsics()
    d_cam = np.stack([(src[:, 0] - Ki[0, 2]) / Ki[0, 0], (src[:, 1] - Ki[1, 2]) / Ki[1, 1],
                      np.ones(len(xs))], 1)
    d = d_cam @ a.R  # world directions
    o = a.C
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-h - o) / d
        t2 = (h - o) / d
    tnear = np.minimum(t1, t2).max(1)
    tfar = np.maximum(t1, t2).min(1)
    hit = tnear <= tfar
    X = o + tnear[:, None] * d
    face_axis = np.argmax(np.isclose(np.abs(X), h, atol=1e-9) * 1.0, axis=1)
    normal = np.zeros_like(X)
    normal[np.arange(len(X)), face_axis] = np.sign(X[np.arange(len(X)), face_axis])
    face_visible_b = (normal * (b.C - X)).sum(1) > 0
    # stay away from cube edges and a's silhouette (pixel-footprint ambiguity)
    second = np.sort(np.abs(X), axis=1)[:, 1]
    interior = hit & (second < h - 0.02)
    qv = (X - b.C) @ b.R.T
    Kb = vp_b.intrinsics()
    q = b.crop.apply(np.stack([Kb[0, 0] * qv[:, 0] / qv[:, 2] + Kb[0, 2],
                               Kb[1, 1] * qv[:, 1] / qv[:, 2] + Kb[1, 2]], 1))
    inside = (q[:, 0] >= 0) & (q[:, 0] <= 127) & (q[:, 1] >= 0) & (q[:, 1] <= 127)
    match = gt.matchability[ys, xs] > 0
    sel = interior
    assert sel.sum() > 500
    assert ((~face_visible_b[sel]) & match[sel]).sum() == 0  # hidden faces: matchability 0
    vis = sel & face_visible_b & inside
    assert vis.sum() > 200 and (~face_visible_b[sel]).sum() > 200
    assert match[vis].mean() > 0.99
    err = np.linalg.norm(gt.flow[:, ys, xs].T - (q - np.stack([xs, ys], 1)), axis=1)
    assert np.percentile(err[vis], 99) < 0.05 and err[vis].max() < 0.3


def test_cycle_consistency_and_keypoints_on_pascal3d(data_dir, renderer):
    pairs = [("car01", (20, 10, 0), (55, 20, 5)), ("chair03", (-30, 15, 0), (10, 25, 0)),
             ("aeroplane02", (40, 20, 0), (70, 35, -8))]
    n_checked = 0
    for name, va, vb in pairs:
        mesh = load_mesh(data_dir / "cad" / "pascal3d" / f"{name}.json")
        vp_a, vp_b = Viewpoint(*va, distance=2.5), Viewpoint(*vb, distance=2.8)
        ab = synthetic_correspondence(mesh, vp_a, vp_b, rgb=False, renderer=renderer)
        ba = correspondence_between(ab.view_b, ab.view_a)
        # F_ab ∘ F_ba ≈ 0 on pixels matchable both ways
        ys, xs = np.nonzero(ab.matchability > 0)
        qx = xs + ab.flow[0, ys, xs]
        qy = ys + ab.flow[1, ys, xs]
        ok = all_four(ba.matchability > 0, qx, qy)
        assert ok.sum() > 0.5 * len(xs), name
        back = bilinear(ba.flow, qx[ok], qy[ok])
        resid = np.linalg.norm(ab.flow[:, ys[ok], xs[ok]] + back, axis=0)
        assert np.median(resid) < 0.1 and np.percentile(resid, 90) < 0.5, (name, resid.max())
        # keypoints visible in both views are carried a → b by the flow
        ka = project_keypoints(mesh, view=ab.view_a)
        kb = project_keypoints(mesh, view=ab.view_b)
        assert ka.names == kb.names == sorted(mesh.keypoints)
        both = ka.visible & kb.visible
        good = both & all_four(ab.matchability > 0, ka.xy[:, 0], ka.xy[:, 1])
        assert good.sum() >= 1, (name, good.sum())
        n_checked += int(good.sum())
        f = bilinear(ab.flow, ka.xy[good, 0], ka.xy[good, 1])
        err = np.linalg.norm(ka.xy[good] + f.T - kb.xy[good], axis=1)
        assert err.max() < 1.0, (name, err)
    # keypoints on thin parts (chair legs, wing tips) often land on the silhouette, where the
    # flow is not defined at sub-pixel level; the others must all be carried within 1 px
    assert n_checked >= 10, n_checked
    # back-facing keypoints are flagged invisible: from the rear, front lights are hidden
    car = load_mesh(data_dir / "cad" / "pascal3d" / "car01.json")
    kp = project_keypoints(car, Viewpoint(180, 10), renderer=renderer)
    vis = dict(zip(kp.names, kp.visible))
    assert not vis["left_front_light"] and not vis["right_front_light"]
    assert vis["left_back_trunk"] and vis["right_back_trunk"]


def test_textured_obj_renders_colour(data_dir, renderer):
    import glob
    path = sorted(glob.glob(str(data_dir / "cad" / "car" / "sweethome3d" / "*" / "*.obj")))[0]
    m = load_mesh(path)
    assert m.kind == "obj" and m.parts
    r = render_view(m, Viewpoint(30, 15), renderer=renderer)
    fg = r.rgb[r.mask].astype(float)
    # coloured (materials/textures), not a uniform grey
    assert np.abs(fg - fg.mean(1, keepdims=True)).mean() > 5
    assert fg.std(0).mean() > 10


def _child_render(q):
    try:
        r = render_view(cube_mesh(), Viewpoint(45, 30), renderer=Renderer(backend="gl"))
        q.put(int(r.mask.sum()))
    except RuntimeError as e:
        q.put(str(e))


def test_forked_child_of_gl_parent_refuses_clearly(renderer):
    """A child forked after the parent made a context gets a clear error, not a deadlock."""
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("fork start method unavailable")
    if renderer.backend != "gl":
        pytest.skip("GL-specific")
    render_view(cube_mesh(), Viewpoint(45, 30), renderer=renderer)  # live context here
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_render, args=(q,))
    p.start()
    p.join(60)
    if p.is_alive():
        p.kill()
        pytest.fail("forked child hung")
    msg = q.get(timeout=5)
    assert isinstance(msg, str) and "forked" in msg and "spawn" in msg


_PARALLEL_SCRIPT = """
import multiprocessing as mp, numpy as np
from cyclecorr.render import Mesh, Renderer, Viewpoint, render_view
v = np.array([[x, y, z] for x in (-.3, .3) for y in (-.3, .3) for z in (-.3, .3)])
f = np.array([[0,1,3],[0,3,2],[4,6,7],[4,7,5],[0,4,5],[0,5,1],[2,3,7],[2,7,6],[0,2,6],[0,6,4],
              [1,5,7],[1,7,3]])
mesh = Mesh.from_arrays(v, f)
R = {}
def work(az):
    r = R.setdefault("r", Renderer(backend=BACKEND))
    return int(render_view(mesh, Viewpoint(az, 20), renderer=r).mask.sum())
if __name__ == "__main__":
    Renderer(backend=BACKEND)  # constructing before the fork is fine: no GL yet
    with mp.get_context("fork").Pool(2) as pool:
        out = pool.map(work, [0, 30, 60, 90])
    assert all(n > 1000 for n in out), out
    print("ok", out)
"""


@pytest.mark.parametrize("backend", ["gl", "raster"])
def test_workers_render_in_parallel(tmp_path, backend):
    """Workers forked from a parent without a GL context each render with their own."""
    import subprocess
    import sys

    script = tmp_path / "par.py"
    script.write_text(f"BACKEND = {backend!r}\n" + _PARALLEL_SCRIPT)
    env = dict(os.environ, PYOPENGL_PLATFORM=os.environ.get("PYOPENGL_PLATFORM", "osmesa"))
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, env=env, cwd=os.getcwd())
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("ok")


def test_margin_background_light_and_antialias(renderer):
    from cyclecorr.render import Light, random_light

    cube = cube_mesh()
    vp = Viewpoint(30, 20)
    tight = render_view(cube, vp, renderer=renderer)
    loose = render_view(cube, vp, margin=0.25, renderer=renderer)
    # the box grows ×1.25 about its centre: the object spans 1/1.25 of the crop
    ys, xs = np.nonzero(loose.mask)
    assert (xs.max() - xs.min() + 1) / 128 == pytest.approx(1 / 1.25, abs=0.03)
    assert (ys.max() - ys.min() + 1) / 128 == pytest.approx(1 / 1.25, abs=0.03)
    assert loose.crop.x1 - loose.crop.x0 == pytest.approx(1.25 * (tight.crop.x1 - tight.crop.x0),
                                                          rel=0.02)
    # a background image is resized into the crop and shows where the object is not
    bg = np.zeros((40, 60, 3), np.uint8)
    bg[..., 1] = 200
    r = render_view(cube, vp, background=bg, margin=0.2, renderer=renderer)
    assert (r.rgb[~r.mask][:, 1] > 150).mean() > 0.95 and (r.rgb[~r.mask][:, 0] < 50).mean() > 0.9
    # lighting changes the colour but not the geometry
    a = render_view(cube, vp, light=Light(intensity=0.5, ambient=0.1), renderer=renderer)
    b = render_view(cube, vp, light=random_light(3), renderer=renderer)
    assert a.rgb[a.mask].mean() < b.rgb[b.mask].mean()
    np.testing.assert_array_equal(a.mask, b.mask)
    assert random_light(5) == random_light(5) != random_light(6)
    with pytest.raises(ValueError, match="background"):
        render_view(cube, vp, background=np.zeros((4, 4)), renderer=renderer)
    with pytest.raises(ValueError, match="light direction"):
        render_view(cube, vp, light=Light(direction=(0, 0, 0)), renderer=renderer)


def test_raster_antialias_keeps_geometry():
    cube = cube_mesh()
    vp = Viewpoint(30, 20)
    r1 = Renderer(backend="raster", antialias=1).render(cube, vp)
    r3 = Renderer(backend="raster", antialias=3).render(cube, vp)
    np.testing.assert_array_equal(r1.mask, r3.mask)
    np.testing.assert_array_equal(r1.points[r1.mask], r3.points[r3.mask])
    # edge pixels blend object and background; interior colours agree
    edge = r1.mask & ~np.pad(r1.mask, 1)[2:, 1:-1] | r1.mask & ~np.pad(r1.mask, 1)[:-2, 1:-1]
    diff = np.abs(r1.rgb.astype(int) - r3.rgb.astype(int)).sum(-1)
    assert diff[edge].mean() > diff[r1.mask & ~edge].mean()


def test_shapenet_layout_and_keypointless_mesh(tmp_path, renderer):
    d = tmp_path / "02958343" / "abc123" / "models"
    d.mkdir(parents=True)
    (d / "model_normalized.obj").write_text(
        "v -1 0 -2\nv 1 0 -2\nv 1 0 2\nv -1 0 2\nv 0 1 2\nf 1 2 3\nf 1 3 4\nf 3 4 5\n")
    (d / "model_normalized.json").write_text('{"id": "abc123"}')
    found = list_meshes(tmp_path)
    assert found == [d / "model_normalized.obj"]
    m = load_mesh(found[0])
    assert m.kind == "shapenet"
    # y up → z up; ShapeNet faces −z: the peak vertex (0, 1, 2) is at the back (+z → +y), on top
    top = m.vertices[4]
    assert top[2] == pytest.approx(m.vertices[:, 2].max()) and top[1] > 0
    with pytest.raises(ValueError, match="no 3D keypoints"):
        project_keypoints(m, Viewpoint(0, 20), renderer=renderer)


def test_render_command_writes_views_pairs_and_resumes(tmp_path):
    import argparse

    from cyclecorr.commands import render_cmd

    obj = tmp_path / "models" / "box.obj"
    obj.parent.mkdir()
    v = [(x, y, z) for x in (-1, 1) for y in (0, 1) for z in (-2, 2)]
    f = ["1 2 4", "1 4 3", "5 7 8", "5 8 6", "1 5 6", "1 6 2", "3 4 8", "3 8 7", "1 3 7",
         "1 7 5", "2 6 8", "2 8 4"]
    obj.write_text("".join(f"v {a} {b} {c}\n" for a, b, c in v) + "".join(f"f {x}\n" for x in f))
    (tmp_path / "models" / "broken.obj").write_text("v 0 0 0\n")
    p = argparse.ArgumentParser()
    render_cmd.add_arguments(p)
    out = tmp_path / "out"
    args = p.parse_args([str(tmp_path / "models"), "--out", str(out), "--views", "2", "--pairs",
                         "--size", "32", "--no-progress"])
    assert render_cmd.run(args) == 0
    d = out / "box"
    meta = json.loads((d / "views.json").read_text())
    assert len(meta["views"]) == 2 and meta["kind"] == "obj"
    gt = np.load(d / "pair_00.npz")
    assert gt["flow"].shape == (2, 32, 32) and gt["matchability"].max() == 1
    assert (d / "view_01.png").is_file() and (d / "pair_00_check.png").is_file()
    assert not (out / "broken").exists()
    mtime = (d / "view_00.png").stat().st_mtime_ns
    assert render_cmd.run(args) == 0          # resumes: finished models are skipped
    assert (d / "view_00.png").stat().st_mtime_ns == mtime


def test_backends_agree(data_dir):
    """gl and raster see the same geometry: same crop box (within a viewport pixel), masks and
    surface points agree, and so does the ground-truth flow."""
    mesh = load_mesh(data_dir / "cad" / "pascal3d" / "car03.json")
    vp_a, vp_b = Viewpoint(40, 15, 5, 2.4), Viewpoint(75, 25, -5, 2.6)
    out = {}
    for be in ("gl", "raster"):
        r = Renderer(backend=be)
        out[be] = synthetic_correspondence(mesh, vp_a, vp_b, rgb=False, renderer=r)
        r.close()
    g, s = out["gl"], out["raster"]
    for vg, vs in ((g.view_a, s.view_a), (g.view_b, s.view_b)):
        w = vs.crop.x1 - vs.crop.x0
        assert abs(vg.crop.x0 - vs.crop.x0) < 0.02 * w and abs(vg.crop.x1 - vs.crop.x1) < 0.02 * w
        inter = (vg.mask & vs.mask).sum()
        assert inter / (vg.mask | vs.mask).sum() > 0.9
    # compare in raster's frame: a surface point from gl, reprojected, lands on raster's point
    both = g.view_a.mask & s.view_a.mask & (g.matchability > 0) & (s.matchability > 0)
    # the crops differ slightly, so map gl's a-pixels into raster's a-frame through 3D
    P = g.view_a.points[both].astype(np.float64)
    xy_s, _ = s.view_a.project(P)
    xy_bg, _ = g.view_b.project(P)
    xy_bs, _ = s.view_b.project(P)
    ys, xs = np.nonzero(both)
    np.testing.assert_allclose(xy_bg, np.stack([xs, ys], 1) + g.flow[:, ys, xs].T, atol=1e-3)
    # raster's flow sampled at the same 3D points agrees with the projection into raster's b
    inside = all_four(s.matchability > 0, xy_s[:, 0], xy_s[:, 1])
    f = bilinear(s.flow, xy_s[inside, 0], xy_s[inside, 1]).T
    err = np.linalg.norm(xy_s[inside] + f - xy_bs[inside], axis=1)
    assert inside.mean() > 0.8 and np.median(err) < 0.05, np.median(err)


def test_correspondence_across_models_of_one_topology():
    """Two models of one topology related by an affine map T (barycentric coordinates are
    affine-invariant): the cross-model flow of a-pixel p lands at the projection of T(X_a(p)) into
    b's view; with the same model twice it equals the same-model ground truth; other topologies
    are refused by name."""
    from cyclecorr.render import correspondence_across, correspondence_between

    r = Renderer(viewport=256, backend="raster")
    cube = cube_mesh(0.3)
    T = np.array([[1.3, 0.2, 0.0], [0.0, 0.8, 0.1], [0.1, 0.0, 1.1]])
    t = np.array([0.05, -0.02, 0.03])
    other = Mesh.from_arrays(cube.vertices @ T.T + t, cube.faces)
    vp_a, vp_b = Viewpoint(30, 25, distance=2.0), Viewpoint(75, 30, distance=2.4)
    a, b = r.render(cube, vp_a, 96), r.render(other, vp_b, 96)
    gt = correspondence_across(cube, a, other, b)
    ys, xs = np.nonzero(a.mask)
    X = a.points[ys, xs].astype(np.float64)
    q = b.project(X @ T.T + t)[0]
    m = gt.matchability[ys, xs] > 0
    assert m.mean() > 0.3  # the faces both views see
    err = np.linalg.norm(gt.flow[:, ys, xs].T - (q - np.stack([xs, ys], 1)), axis=1)
    assert np.percentile(err[m], 99) < 1e-3
    # same model: the same-model ground truth
    b2 = r.render(cube, vp_b, 96)
    same = correspondence_across(cube, a, cube, b2)
    ref = correspondence_between(a, b2)
    np.testing.assert_allclose(same.flow[:, a.mask], ref.flow[:, a.mask], atol=1e-3)
    assert (same.matchability != ref.matchability).mean() < 0.005
    with pytest.raises(ValueError, match="one topology"):
        correspondence_across(cube, a, Mesh.from_arrays(cube.vertices, cube.faces[:-2]), b)
    r.close()
