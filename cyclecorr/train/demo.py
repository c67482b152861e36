"""The end-to-end demo on embedded data (``cyclecorr demo --out DIR``): no downloads.

1. Build a few procedural CAD models (:func:`procedural_car`: a body box, a cabin box and four
   cylinder wheels with random proportions and colours; :func:`procedural_chair`: a seat, a back
   and four legs).
2. Make quartets from renders: one model plays the "real" instance (random lights and textured
   backgrounds stand in for photos) seen from viewpoints v1, v2 → r1, r2; another model is the
   "CAD model" rendered from the same two viewpoints → s1, s2, with the exact ground truth
   ``~F_s1s2``, ``~M_s1s2`` from :func:`cyclecorr.render.correspondence_between`.
3. Train a small network a few steps of each stage (``demo`` preset) on them.
4. Match a held-out pair with the demo model (and with the shipped model where present) and
   write pictures (flow colours, warps, matchability, transferred points) and an HTML page that
   explains them: that the demo model is tiny, its validation numbers beside the zero flow's,
   the training quartets, and an interactive viewer per match.
"""
from __future__ import annotations

import html
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from tqdm.auto import tqdm

from cyclecorr.checkpoint import shipped_model_path
from cyclecorr.matcher import Matcher
from cyclecorr.render import Mesh, Viewpoint, correspondence_between, default_renderer, random_light
from cyclecorr.train.config import load_config
from cyclecorr.train.loop import train
from cyclecorr.viz import (
    flow_to_color,
    model_summary,
    page_flow_scale,
    save_png,
    write_html_page,
    write_pair_pictures,
)

__all__ = ["procedural_car", "procedural_chair", "build_demo_quartets", "run_demo"]


def _box(center, extent):
    m = trimesh.creation.box(extents=extent)
    m.apply_translation(center)
    return m


def _wheel(center, radius, width):
    m = trimesh.creation.cylinder(radius=radius, height=width, sections=20)
    rot = trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0])  # axis along x
    m.apply_transform(rot)
    m.apply_translation(center)
    return m


def _assemble(parts_colours):
    """trimesh parts with colours → a canonical :class:`cyclecorr.render.Mesh` with coloured
    parts (centred, bounding-box diagonal 1; z up, front −y)."""
    parts = []
    for m, col in parts_colours:
        m = m.copy()
        m.visual.face_colors = np.tile(np.asarray(list(col) + [255], np.uint8), (len(m.faces), 1))
        parts.append(m)
    verts = np.concatenate([p.vertices for p in parts])
    faces, off = [], 0
    for p in parts:
        faces.append(p.faces + off)
        off += len(p.vertices)
    mesh = Mesh.from_arrays(verts, np.concatenate(faces), normalize=True)
    T = mesh.to_canonical
    for p in parts:
        p.apply_transform(T)
    mesh.parts = parts
    return mesh


def procedural_car(rng: np.random.Generator):
    """A box-and-wheels car with random proportions and colours (canonical frame: z up, the
    front towards −y)."""
    L = rng.uniform(0.9, 1.2)
    W = rng.uniform(0.40, 0.50)
    H = rng.uniform(0.18, 0.28)
    clear = rng.uniform(0.06, 0.10)
    cab_l = L * rng.uniform(0.35, 0.6)
    cab_h = rng.uniform(0.12, 0.2)
    cab_y = rng.uniform(-0.05, 0.2) * L
    r = rng.uniform(0.09, 0.13)
    body = rng.uniform(40, 230, 3)
    glass = np.array([40, 50, 70]) + rng.uniform(0, 30, 3)
    tyre = np.array([25, 25, 25])
    parts = [(_box([0, 0, clear + H / 2], [W, L, H]), body),
             (_box([0, cab_y, clear + H + cab_h / 2], [W * 0.9, cab_l, cab_h]), glass),
             (_box([0, -L / 2 + 0.01, clear + H * 0.6], [W * 0.8, 0.03, H * 0.25]),
              np.array([230, 230, 200]))]  # head lights: an asymmetric front
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append((_wheel([sx * (W / 2), sy * L * 0.32, r], r, 0.08), tyre))
    return _assemble(parts)


def procedural_chair(rng: np.random.Generator):
    """A chair from boxes: seat, back (on the +y side; the front faces −y) and four legs."""
    sw, sd = rng.uniform(0.4, 0.55), rng.uniform(0.4, 0.55)
    sh, th = rng.uniform(0.4, 0.5), rng.uniform(0.04, 0.08)
    bh = rng.uniform(0.35, 0.6)
    leg = rng.uniform(0.03, 0.06)
    wood = rng.uniform(60, 200, 3)
    cloth = rng.uniform(40, 230, 3)
    parts = [(_box([0, 0, sh], [sw, sd, th]), cloth),
             (_box([0, sd / 2 - th / 2, sh + bh / 2], [sw, th, bh]), cloth)]
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append((_box([sx * (sw / 2 - leg), sy * (sd / 2 - leg), sh / 2],
                               [leg, leg, sh]), wood))
    return _assemble(parts)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    img = torch.zeros(1, 3, size, size)
    for i, s in enumerate((2, 4, 8, 16)):
        noise = torch.from_numpy(rng.uniform(0, 1, (1, 3, s, s)).astype(np.float32))
        img += F.interpolate(noise, size=(size, size), mode="bilinear",
                             align_corners=False) / 1.6 ** i
    img = (img - img.min()) / (img.max() - img.min() + 1e-6)
    return (img[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def _t(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0


def build_demo_quartets(n: int, size: int = 64, seed: int = 0, category: str = "car",
                        n_models: int = 6, progress: bool = True) -> list[dict]:
    """``n`` quartets from procedural models (see the module docstring); a list of dicts with the
    training keys plus ``mask_s1``. Deterministic for a given seed."""
    make = {"car": procedural_car, "chair": procedural_chair}.get(category)
    if make is None:
        raise ValueError(f"demo category must be 'car' or 'chair', got {category!r}")
    rng = np.random.default_rng(seed)
    models = [make(rng) for _ in range(n_models)]
    r = default_renderer()
    out = []
    bar = tqdm(total=n, desc="rendering quartets", unit="quartet", disable=not progress)
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 20 * n:
            raise RuntimeError(f"could only build {len(out)} of {n} valid demo quartets")
        i_s, i_r = rng.choice(len(models), 2, replace=False)
        a1 = rng.uniform(0, 360)
        v1 = Viewpoint(a1, rng.uniform(5, 30), 0.0, rng.uniform(2.2, 3.0))
        v2 = Viewpoint(a1 + rng.uniform(-40, 40), rng.uniform(5, 30), 0.0, rng.uniform(2.2, 3.0))
        s1 = r.render(models[i_s], v1, size)
        s2 = r.render(models[i_s], v2, size)
        gt = correspondence_between(s1, s2)
        if gt.matchability.sum() < 0.2 * max(s1.mask.sum(), 1):
            continue
        light = random_light(rng)
        r1 = r.render(models[i_r], v1, size, light=light, background=_background(rng, size),
                      margin=rng.uniform(0.0, 0.1))
        r2 = r.render(models[i_r], v2, size, light=light, background=_background(rng, size),
                      margin=rng.uniform(0.0, 0.1))
        out.append({"s1": _t(s1.rgb), "s2": _t(s2.rgb), "r1": _t(r1.rgb), "r2": _t(r2.rgb),
                    "flow_s1s2": torch.from_numpy(gt.flow.astype(np.float32)),
                    "match_s1s2": torch.from_numpy(gt.matchability.astype(np.float32))[None],
                    "mask_s1": torch.from_numpy(s1.mask.astype(np.float32))[None]})
        bar.update(1)
    bar.close()
    return out


def _preview(quartets, path: Path, n: int = 4, max_flow: float | None = None):
    """``n`` quartets, one per row: s1, s2, r1, r2, the exact flow s1→s2 (colours at
    ``max_flow`` px, black where unmatched) and its matchability (white = 1)."""
    rows = []
    for q in quartets[:n]:
        ims = [(q[k].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
               for k in ("s1", "s2", "r1", "r2")]
        f = q["flow_s1s2"].numpy().copy()
        f[:, q["match_s1s2"].numpy()[0] < 0.5] = np.nan  # unknown: black
        ims.append(flow_to_color(f, max_flow))
        ims.append(np.repeat((q["match_s1s2"][0].numpy() * 255).astype(np.uint8)[..., None], 3, -1))
        rows.append(np.concatenate(ims, 1))
    save_png(path, np.concatenate(rows, 0))


def run_demo(out: str | Path, quartets: int = 48, category: str = "car", seed: int = 0,
             overrides: list[str] | None = None, progress: bool = True,
             shipped: bool = True) -> dict:
    """Run the whole demo into ``out``; returns a summary dict (also written to
    ``out/summary.json``)."""
    t0 = time.perf_counter()
    out = Path(out)
    cfg = load_config("demo", [f"seed={seed}", f"category={category}"] + list(overrides or []))
    out.mkdir(parents=True, exist_ok=True)
    size = cfg.network().image_size
    n_val = max(2, cfg.data.val_count)
    data = build_demo_quartets(quartets + n_val, size, seed, category, progress=progress)
    train_q, val_q = data[:quartets], data[quartets:]

    scale = page_flow_scale([(size, size)])
    _preview(data, out / "quartets.png", max_flow=scale)
    t_data = time.perf_counter() - t0
    run = out / "run"
    if (run / "last.json").exists():  # a previous demo in this folder: start over

        shutil.rmtree(run)
    res = train(cfg, run, quartets=[{k: v for k, v in q.items() if k != "mask_s1"}
                                    for q in train_q],
                val_quartets=val_q, progress=progress)
    t_train = time.perf_counter() - t0 - t_data
    # match a held-out "real" pair (r1 → r2 of a validation quartet)
    q = val_q[0]
    img = lambda t: (t.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)  # noqa: E731
    a, b = img(q["r1"]), img(q["r2"])
    Image = __import__("PIL.Image", fromlist=["Image"])
    Image.fromarray(a).save(out / "pair_source.png")
    Image.fromarray(b).save(out / "pair_target.png")
    entries = []
    models = [("demo model (trained just now)", res.final_model, "match_demo_model")]
    if shipped:
        try:
            models.append(("car model shipped with cyclecorr", shipped_model_path("car"),
                           "match_shipped_model"))
        except FileNotFoundError:
            pass

    for name, path, sub in models:
        m = Matcher.from_checkpoint(path, device="cpu")
        r = m.match(a, b)
        e = write_pair_pictures(out / sub, a, b, r["flow"], r["matchability"], max_flow=scale,
                                title=f"The held-out pair, matched by the {name}")
        e["model"] = model_summary(path, name=name)
        entries.append(e)
    seconds = {"render": round(t_data, 1), "train": round(t_train, 1)}
    summary = {"out": str(out), "category": category, "quartets": quartets,
               "image_size": size, "final_model": str(res.final_model),
               "validation": res.validation,
               "zero_flow_validation": zero_flow_validation(val_q, cfg.validation.pck_alpha),
               "page": str(out / "index.html"), "seconds": seconds,
               "matched_with": [str(p) for _, p, _ in models]}
    intro = _demo_intro(summary, cfg, seed, scale, n_val=len(val_q))
    page = write_html_page(out / "index.html", entries, title="cyclecorr demo",
                           intro_html=intro, raw={"summary": summary})
    seconds["total"] = round(time.perf_counter() - t0, 1)
    summary["page"] = str(page)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def zero_flow_validation(quartets, pck_alpha: float) -> dict:
    """What the zero flow (every pixel stays in place) scores on the held-out quartets, with the
    validation's definitions: EPE and PCK of s1→s2 on the pixels matchable in the ground truth,
    and the matchability accuracy of calling every pixel matchable."""
    err = n = ok = acc = tot = 0.0
    for q in quartets:
        m = q["match_s1s2"][0].numpy() >= 0.5
        e = np.linalg.norm(q["flow_s1s2"].numpy(), axis=0)
        size = e.shape[-1]
        err += float(e[m].sum())
        ok += float((e[m] < pck_alpha * size).sum())
        n += float(m.sum())
        acc += float(m.sum())
        tot += m.size
    return {"direct_epe": err / max(n, 1e-6), "direct_pck": ok / max(n, 1e-6),
            "match_acc": acc / max(tot, 1), "pck_alpha": pck_alpha}


def _demo_intro(summary: dict, cfg, seed: int, scale: float, n_val: int) -> str:
    """The demo page's explanation: what ran, that the model is tiny, its validation numbers
    beside the zero flow's, and the training quartets."""
    v = summary.get("validation") or {}
    z = summary["zero_flow_validation"]
    size = summary["image_size"]
    s1, s2 = cfg.stage1.iterations, cfg.stage2.iterations
    alpha = v.get("pck_alpha", z["pck_alpha"])

    def num(x, f="{:.2f}"):
        return "–" if x is None else f.format(x)

    rows = [("flow error s1→s2, predicted directly (EPE, px; lower is better)",
             v.get("direct_epe"), z["direct_epe"]),
            ("flow error of the composed cycle s1→r1→r2→s2 (EPE, px)", v.get("cycle_epe"), None),
            (f"share of pixels within {alpha * size:g} px (PCK@{alpha}, direct; higher is better)",
             v.get("direct_pck"), z["direct_pck"]),
            ("matchability right (share of pixels; the zero flow column calls every pixel "
             "matchable)", v.get("match_acc"), z["match_acc"])]
    d, z0 = v.get("direct_epe"), z["direct_epe"]
    if d is not None and abs(d - z0) <= 0.05 * z0:
        verdict = ("its flow error is that of the zero flow (within 5 %): it has not learnt to "
                   "match yet.")
    else:
        verdict = "compare its numbers below with the zero flow's."
    table = "".join(f"<tr><td>{html.escape(name)}</td><td>{num(a)}</td><td>{num(b)}</td></tr>"
                    for name, a, b in rows)
    return (
        f"<p><b>What ran.</b> <code>cyclecorr demo</code> built procedural {summary['category']}s "
        f"(boxes and wheels), rendered {summary['quartets']} training quartets and {n_val} "
        f"held-out ones at {size}×{size} px ({summary['seconds']['render']:.0f} s, seed {seed}), "
        f"and trained a <b>tiny network</b> on them (the <code>demo</code> preset: width "
        f"{cfg.net.width}, {s1} stage-1 and {s2} stage-2 iterations, "
        f"{summary['seconds']['train']:.0f} s on this machine). It exists to show every step of "
        f"the method running end to end on a CPU, not to match well: {verdict} The model worth "
        f"looking at is the shipped one, at the bottom, and <code>cyclecorr match</code> on "
        f"your own photos.</p>"
        f"<h3>Training data</h3><div class='row'><figure class='wide'><img src='quartets.png' "
        f"alt='training quartets' style='height:{min(4, summary['quartets']) * 90}px'>"
        f"<figcaption>Four training quartets, one per row. Columns: s1 and s2, renders of one "
        f"car (the “CAD model”) from two viewpoints; r1 and r2, another car from the same two "
        f"viewpoints with random light and a textured background, standing in for two real "
        f"photos; the exact flow s1→s2 that the renderer knows (colour key below, full colour "
        f"at {scale:g} px, black: no match); its matchability (white: visible in both). "
        f"Training asks the composed flow s1→r1→r2→s2 to equal that exact flow.</figcaption>"
        f"</figure></div>"
        f"<h3>Validation on the {n_val} held-out quartets</h3><table><tr><th>measure</th>"
        f"<th>demo model</th><th>zero flow</th></tr>{table}</table>"
        f"<p>The held-out pair below is r1→r2 of a held-out quartet: two renders of one "
        f"procedural car from two viewpoints.</p>")
