"""AC3D loading (cyclecorr.render.ac3d): fixtures written here, checked in closed form."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from cyclecorr.render import Light, MeshError, Renderer, Viewpoint, list_meshes, load_mesh
from cyclecorr.render.ac3d import read_ac3d, triangulate_polygon
from cyclecorr.render.mesh import axes_rotation, detect_source

FLAT_LIGHT = Light(ambient=1.0, intensity=0.0)  # rendered colour = albedo


@pytest.fixture(scope="module")
def renderer():
    return Renderer(backend="raster")


def _unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def _write(path, text):
    path.write_text(text)
    return path


def quad_ac(texture="tex.png", texrep="", texoff=""):
    """A 2×2 square in the plane z = 0 facing +z (AC3D's front), textured corner to corner."""
    return f"""AC3Db
MATERIAL "white" rgb 1 1 1  amb 0.2 0.2 0.2  emis 0 0 0  spec 0 0 0  shi 10  trans 0
OBJECT world
kids 1
OBJECT poly
name "quad"
data 9
two
lines
texture "{texture}"
{texrep}
{texoff}
numvert 4
-1 -1 0
1 -1 0
1 1 0
-1 1 0
numsurf 1
SURF 0x20
mat 0
refs 4
0 0 0
1 1 0
2 1 1
3 0 1
kids 0
"""


def test_textured_quad_uvs_and_render(tmp_path, renderer):
    colours = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]], np.uint8)
    Image.fromarray(colours).save(tmp_path / "tex.png")
    f = _write(tmp_path / "quad.ac", quad_ac())
    s = read_ac3d(f)
    assert s.faces.shape == (2, 3) and s.objects == ["quad"]
    assert [p.name for p in s.textures] == ["tex.png"] and s.missing_textures == []
    # every corner carries the uv of its vertex: u = (x + 1)/2, v = (y + 1)/2
    corners = s.vertices[s.faces]
    np.testing.assert_allclose(s.uv, (corners[..., :2] + 1) / 2, atol=1e-12)
    # both triangles keep the polygon's winding (normal +z)
    n = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    assert (n[:, 2] > 0).all()
    # a single plane is refused by default, loaded on request
    with pytest.raises(MeshError, match="quad.ac.*flat mesh"):
        load_mesh(f)
    m = load_mesh(f, min_thickness=0)
    assert m.kind == "ac3d" and m.textured
    # y up → canonical z, front +z → canonical −y; bbox diagonal 1
    np.testing.assert_allclose(m.vertices[:, 1], 0, atol=1e-7)
    assert np.linalg.norm(m.vertices.max(0) - m.vertices.min(0)) == pytest.approx(1, abs=1e-6)
    # seen from the front, each quadrant of the crop shows its texel (v up: image row 0 on top)
    r = renderer.render(m, Viewpoint(0, 0, distance=3), 64, light=FLAT_LIGHT)
    assert r.mask.all()
    for (y0, x0), c in zip(((0, 0), (0, 32), (32, 0), (32, 32)), colours.reshape(4, 3)):
        q = r.rgb[y0 + 2:y0 + 30, x0 + 2:x0 + 30].reshape(-1, 3)
        assert (np.abs(q.astype(int) - c).max(1) <= 1).mean() > 0.99, (y0, x0, c)


def test_texrep_texoff_and_missing_texture(tmp_path):
    f = _write(tmp_path / "rep.ac", quad_ac("nowhere.png", "texrep 2 3", "texoff 0.5 -1"))
    s = read_ac3d(f)
    corners = s.vertices[s.faces]
    uv = (corners[..., :2] + 1) / 2
    np.testing.assert_allclose(s.uv[..., 0], 0.5 + 2 * uv[..., 0], atol=1e-12)
    np.testing.assert_allclose(s.uv[..., 1], -1 + 3 * uv[..., 1], atol=1e-12)
    # the texture is not there: untextured, material colour, recorded
    assert s.missing_textures == ["nowhere.png"] and (s.texture == -1).all()
    m = load_mesh(f, min_thickness=0)
    assert not m.textured
    np.testing.assert_allclose(m.parts[0].visual.face_colors[:, :3], 255)


def test_texture_found_in_flightgear_livery_folder(tmp_path):
    ac = tmp_path / "Aircraft" / "x" / "Models" / "x.ac"
    ac.parent.mkdir(parents=True)
    liv = tmp_path / "Aircraft" / "x" / "Textures" / "default"
    liv.mkdir(parents=True)
    Image.fromarray(np.full((2, 2, 3), 40, np.uint8)).save(liv / "skin.png")
    _write(ac, quad_ac("skin.rgb"))  # named .rgb in the file, found as .png
    s = read_ac3d(ac)
    assert s.textures == [liv / "skin.png"] and s.missing_textures == []
    # through a symbolic link elsewhere (a folder of chosen models): found around the target
    links = tmp_path / "chosen" / "flightgear"
    links.mkdir(parents=True)
    (links / "x.ac").symlink_to(ac)
    s = read_ac3d(links / "x.ac")
    assert s.textures == [liv / "skin.png"]


def _rot_y(deg):
    a = math.radians(deg)
    return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def _cube_faces():
    """(outward normal, corner indices counter-clockwise seen from outside) of the cube whose
    corner k is (±1, ±1, ±1) with k = 4·[x > 0] + 2·[y > 0] + [z > 0]."""
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    out = []
    for a in range(3):
        for sgn in (1, -1):
            n = np.zeros(3)
            n[a] = sgn
            u, v = np.eye(3)[(a + 1) % 3], np.eye(3)[(a + 2) % 3]
            if sgn < 0:
                u, v = v, u  # u × v = n
            idx = np.flatnonzero(corners[:, a] == sgn)
            ang = np.arctan2(corners[idx] @ v, corners[idx] @ u)
            out.append((tuple(n.astype(int)), tuple(int(i) for i in idx[np.argsort(ang)])))
    return out


CUBE_FACES = _cube_faces()
CUBE_COLOURS = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1)]


def cube_ac(group_rot, group_loc, cube_loc):
    corners = [(x, y, z) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
    # corner index = 4·[x>0] + 2·[y>0] + [z>0]
    order = {(x, y, z): 4 * (x > 0) + 2 * (y > 0) + (z > 0) for x, y, z in corners}
    verts = sorted(corners, key=lambda c: order[c])
    mats = "".join(f'MATERIAL "m{i}" rgb {r} {g} {b}  amb 0 0 0  emis 0 0 0  spec 0 0 0  shi 1  '
                   f'trans 0\n' for i, (r, g, b) in enumerate(CUBE_COLOURS))
    mats += 'MATERIAL "glass" rgb 1 1 1  amb 0 0 0  emis 0 0 0  spec 0 0 0  shi 1  trans 1\n'
    surfs = "".join(f"SURF 0x10\nmat {i}\nrefs 4\n" + "".join(f"{k} 0 0\n" for k in idx)
                    for i, (_, idx) in enumerate(CUBE_FACES))
    # a closed line, a line and an invisible (fully transparent) face: none become triangles
    surfs += "SURF 0x1\nmat 0\nrefs 3\n0 0 0\n1 0 0\n2 0 0\n"
    surfs += "SURF 0x2\nmat 0\nrefs 2\n0 0 0\n7 0 0\n"
    surfs += "SURF 0x0\nmat 6\nrefs 3\n0 0 0\n1 0 0\n3 0 0\n"
    rot = " ".join(f"{x:.12g}" for x in np.asarray(group_rot).ravel())
    return (f"AC3Db\n{mats}OBJECT world\nkids 1\nOBJECT group\nname \"g\"\nrot {rot}\n"
            f"loc {' '.join(map(str, group_loc))}\nkids 1\nOBJECT poly\nname \"cube\"\n"
            f"loc {' '.join(map(str, cube_loc))}\ncrease 30\nnumvert 8\n"
            + "".join(f"{x} {y} {z}\n" for x, y, z in verts)
            + f"numsurf {len(CUBE_FACES) + 3}\n{surfs}kids 0\n"), np.array(verts, float)


def test_cube_in_transformed_kid(tmp_path, renderer):
    Rg, loc_g, loc_c = _rot_y(90), np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.0, 0.0])
    text, local = cube_ac(Rg, loc_g, loc_c)
    f = _write(tmp_path / "cube.ac", text)
    s = read_ac3d(f)
    # v_world = R_g (v + loc_c) + loc_g
    np.testing.assert_allclose(s.vertices, (local + loc_c) @ Rg.T + loc_g, atol=1e-9)
    assert s.skipped["lines"] == 2 and s.skipped["transparent"] == 1
    assert len(s.faces) == 12 and s.objects == ["cube"]
    # each quad's two triangles carry its material colour and its outward winding
    tri_n = np.cross(s.vertices[s.faces[:, 1]] - s.vertices[s.faces[:, 0]],
                     s.vertices[s.faces[:, 2]] - s.vertices[s.faces[:, 0]])
    for k, (n, _) in enumerate(CUBE_FACES):
        nw = Rg @ np.asarray(n, float)
        sel = np.flatnonzero((tri_n / np.linalg.norm(tri_n, axis=1, keepdims=True)) @ nw > 0.99)
        assert len(sel) == 2
        np.testing.assert_allclose(s.colors[sel], [CUBE_COLOURS[k]] * 2)
    # rendered from the canonical front (−y = the file's +z), the face whose world normal is +z
    # fills the view in its colour; that is the local face R_gᵀ(0, 0, 1) = (−1, 0, 0) → green
    m = load_mesh(f)
    assert m.kind == "ac3d" and len(m.faces) == 12
    r = renderer.render(m, Viewpoint(0, 0, distance=3), 32, light=FLAT_LIGHT)
    assert r.mask.all()
    assert (np.abs(r.rgb.reshape(-1, 3).astype(int) - [0, 255, 0]).max(1) <= 1).mean() > 0.95
    # and from above (canonical +z = the file's +y): local +y face → blue
    top = renderer.render(m, Viewpoint(0, 90, distance=3), 32, light=FLAT_LIGHT)
    assert (np.abs(top.rgb.reshape(-1, 3).astype(int) - [0, 0, 255]).max(1) <= 1).mean() > 0.95


def _polygon_area(xy):
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def _inside(pt, poly):
    """Even-odd point-in-polygon."""
    x, y = pt
    c = False
    for (x0, y0), (x1, y1) in zip(poly, np.roll(poly, -1, 0)):
        if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
            c = not c
    return c


@pytest.mark.parametrize("reverse", [False, True])
def test_concave_polygon_triangulation(reverse):
    # an arrow-like outline with three reflex corners, tilted out of every axis plane
    xy = np.array([[0, 0], [4, 0], [4, 1], [2, 1], [3, 3], [1.5, 1.2], [0, 3], [1, 1]], float)
    if reverse:
        xy = xy[::-1].copy()
    R = axes_rotation("+y", "+z") @ _rot_y(25) @ np.array(
        [[1, 0, 0], [0, math.cos(0.4), -math.sin(0.4)], [0, math.sin(0.4), math.cos(0.4)]])
    P = np.c_[xy, np.zeros(len(xy))] @ R.T + [0.3, -2, 5]
    tris = triangulate_polygon(P)
    assert tris.shape == (len(xy) - 2, 3)
    area = _polygon_area(xy)
    tri_area = [_polygon_area(xy[t]) for t in tris]
    # same winding as the outline, no overlap: the areas (signed) add up to the outline's
    assert all(np.sign(a) == np.sign(area) and abs(a) > 1e-9 for a in tri_area)
    assert sum(tri_area) == pytest.approx(area, rel=1e-12)
    for t in tris:
        assert _inside(xy[t].mean(0), xy)


def test_degenerate_polygons():
    assert triangulate_polygon(np.zeros((2, 3))).shape == (0, 3)
    # a repeated corner is dropped
    sq = np.array([[0, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], float)
    t = triangulate_polygon(sq)
    assert t.shape == (2, 3) and 2 not in t
    # collinear corners: a fan, without error
    line = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]], float)
    assert triangulate_polygon(line).shape == (2, 3)


def test_concave_polygon_renders_its_shape(tmp_path, renderer):
    # an L: the square [0, 2]² without its upper right quarter, facing the camera
    L = [(0, 0), (2, 0), (2, 1), (1, 1), (1, 2), (0, 2)]
    text = ("AC3Db\nMATERIAL \"m\" rgb 1 1 1  amb 0 0 0  emis 0 0 0  spec 0 0 0  shi 1  trans 0\n"
            "OBJECT world\nkids 1\nOBJECT poly\nnumvert 6\n"
            + "".join(f"{x} {y} 0\n" for x, y in L)
            + "numsurf 1\nSURF 0x0\nmat 0\nrefs 6\n" + "".join(f"{i} 0 0\n" for i in range(6))
            + "kids 0\n")
    m = load_mesh(_write(tmp_path / "L.ac", text), min_thickness=0)
    r = renderer.render(m, Viewpoint(0, 0, distance=4), 64, light=FLAT_LIGHT)
    # a plane parallel to the image: the crop is an exact scaling of the outline
    assert not r.mask[:32, 32:].any()
    assert r.mask[:32, :32].all() and r.mask[32:].all()


def test_triangle_strip_of_acc_files(tmp_path):
    text = ("AC3Db\nMATERIAL \"m\" rgb 0.5 0.5 0.5  amb 0 0 0  emis 0 0 0  spec 0 0 0  shi 1  "
            "trans 0\nOBJECT world\nkids 1\nOBJECT poly\ntexture \"a.rgb\" base\n"
            "texture \"b.rgb\" tiled\nnumvert 5\n0 0 0\n0 1 0\n1 0 0\n1 1 0\n2 0 0\n"
            "numsurf 1\nSURF 0x14\nmat 0\nrefs 5\n"
            "0 0 0 0.5 0.5\n1 0 1 0.5 0.5\n2 1 0 0.5 0.5\n3 1 1 0.5 0.5\n4 2 0 0.5 0.5\nkids 0\n")
    s = read_ac3d(_write(tmp_path / "strip.acc", text))
    np.testing.assert_array_equal(s.faces, [[0, 1, 2], [2, 1, 3], [2, 3, 4]])
    n = np.cross(s.vertices[s.faces[:, 1]] - s.vertices[s.faces[:, 0]],
                 s.vertices[s.faces[:, 2]] - s.vertices[s.faces[:, 0]])
    assert (n[:, 2] < 0).all()  # one winding for the whole strip
    np.testing.assert_allclose(s.uv[1, 2], [1, 1])  # the first uv pair of each reference
    assert s.missing_textures == ["a.rgb"]  # the base texture only


def test_malformed_files_name_file_and_line(tmp_path):
    with pytest.raises(MeshError, match="x.ac.*not an AC3D file"):
        read_ac3d(_write(tmp_path / "x.ac", "OBJECT world\n"))
    bad = quad_ac().replace("1 -1 0\n", "1 oops 0\n", 1)
    with pytest.raises(MeshError, match=r"bad.ac: line 1[0-9]: vertex"):
        read_ac3d(_write(tmp_path / "bad.ac", bad))
    oob = quad_ac().replace("3 0 1\n", "9 0 1\n")
    with pytest.raises(MeshError, match="oob.ac.*out of range"):
        read_ac3d(_write(tmp_path / "oob.ac", oob))
    cut = quad_ac()[:quad_ac().index("refs 4") + 12]
    with pytest.raises(MeshError, match="cut.ac.*end of file"):
        read_ac3d(_write(tmp_path / "cut.ac", cut))
    only_lines = ("AC3Db\nOBJECT world\nkids 1\nOBJECT poly\nnumvert 2\n0 0 0\n1 0 0\nnumsurf 1\n"
                  "SURF 0x2\nrefs 2\n0 0 0\n1 0 0\nkids 0\n")
    with pytest.raises(MeshError, match="lines.ac: empty mesh.*'lines': 1"):
        load_mesh(_write(tmp_path / "lines.ac", only_lines))
    # fewer kids than announced: what is there is read
    text, _ = cube_ac(np.eye(3), [0, 0, 0], [0, 0, 0])
    s = read_ac3d(_write(tmp_path / "short.ac", text.replace("OBJECT world\nkids 1",
                                                             "OBJECT world\nkids 3")))
    assert len(s.faces) == 12 and s.skipped["missing_kids"] == 1


def test_sources_and_listing(tmp_path):
    for rel, kind in (("flightgear/AI/Aircraft/a/Models/a.ac", "flightgear"),
                      ("torcs/cars/b/b.acc", "torcs"), ("cars/c/c.acc", "torcs"),
                      ("misc/d.ac", "ac3d")):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        text, _ = cube_ac(np.eye(3), [0, 0, 0], [0, 0, 0])
        p.write_text(text)
        assert detect_source(p) == kind
    found = list_meshes(tmp_path)
    assert sorted(p.suffix for p in found) == [".ac", ".ac", ".acc", ".acc"]
    # FlightGear: nose (−x) → canonical −y; TORCS: front (+x) → canonical −y; both y up
    fg = load_mesh(tmp_path / "flightgear/AI/Aircraft/a/Models/a.ac")
    np.testing.assert_allclose(_unit(fg.to_canonical[:3, :3] @ [-1, 0, 0]), [0, -1, 0], atol=1e-12)
    np.testing.assert_allclose(_unit(fg.to_canonical[:3, :3] @ [0, 1, 0]), [0, 0, 1], atol=1e-12)
    tc = load_mesh(tmp_path / "torcs/cars/b/b.acc")
    np.testing.assert_allclose(_unit(tc.to_canonical[:3, :3] @ [1, 0, 0]), [0, -1, 0], atol=1e-12)


def test_quads_convex_and_concave(tmp_path):
    # a convex quad and a dart (one reflex corner), both in z = 0, counter-clockwise
    convex = [(0, 0), (2, 0), (2.5, 2), (0, 1)]
    dart = [(4, 0), (6, 1), (4, 3), (4.8, 1)]  # the reflex corner is (4.8, 1)
    pts = convex + dart
    text = ("AC3Db\nOBJECT world\nkids 1\nOBJECT poly\nnumvert 8\n"
            + "".join(f"{x} {y} 0\n" for x, y in pts)
            + "numsurf 2\nSURF 0x0\nrefs 4\n" + "".join(f"{i} 0 0\n" for i in range(4))
            + "SURF 0x0\nrefs 4\n" + "".join(f"{i} 0 0\n" for i in range(4, 8)) + "kids 0\n")
    s = read_ac3d(_write(tmp_path / "quads.ac", text))
    assert s.faces.shape == (4, 3)
    xy = s.vertices[:, :2]
    for face_rows, outline in ((s.faces[:2], convex), (s.faces[2:], dart)):
        areas = [_polygon_area(xy[f]) for f in face_rows]
        assert all(a > 0 for a in areas)  # the outline's (counter-clockwise) winding
        assert sum(areas) == pytest.approx(_polygon_area(np.array(outline, float)))
        for f in face_rows:
            assert _inside(xy[f].mean(0), np.array(outline, float))
