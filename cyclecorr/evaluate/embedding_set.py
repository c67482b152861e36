"""The feature-embedding picture of a model (the paper: learnt features are viewpoint-sensitive).

Two image sets, each embedded with t-SNE of the encoder codes (:mod:`cyclecorr.viz.embedding`):

- *synthetic*: renders of the PASCAL3D+ car CAD models at ``n`` azimuths spaced evenly over 360°
  (elevation 10°, models cycled), coloured by azimuth;
- *real*: VOC 2007 car crops (``real/voc2007/car``) with a coarse VOC pose tag (Frontal, Rear,
  Left, Right), up to ``n/4`` per tag, cropped to their box at 128×128, marked by tag.

Numbers (a check that the picture shows what it claims): for renders, the mean absolute azimuth
difference (degrees, on the circle) between each image and its nearest neighbour in feature space
(chance ≈ 90°); for real crops, leave-one-out 5-nearest-neighbour accuracy of the pose tag
(cosine similarity of codes; chance = the largest tag's share).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cyclecorr.data import ImageFolder, crop_sample
from cyclecorr.evaluate.benchmarks import resize_image
from cyclecorr.evaluate.datasets import resolve_dataset_dir
from cyclecorr.render import Viewpoint, default_renderer, load_mesh
from cyclecorr.viz.embedding import embed_features, encoder_features, plot_embedding

__all__ = ["feature_embedding_pictures"]


def _nn_azimuth_error(feats: np.ndarray, az: np.ndarray) -> float:
    sim = feats @ feats.T
    np.fill_diagonal(sim, -np.inf)
    nn = sim.argmax(1)
    d = np.abs(az - az[nn]) % 360
    return float(np.mean(np.minimum(d, 360 - d)))


def _knn_accuracy(feats: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    sim = feats @ feats.T
    np.fill_diagonal(sim, -np.inf)
    idx = np.argsort(-sim, axis=1)[:, :k]
    correct = 0
    for i, row in enumerate(idx):
        vals, counts = np.unique(labels[row], return_counts=True)
        correct += vals[counts.argmax()] == labels[i]
    return float(correct / len(labels))


def feature_embedding_pictures(method, data_root, out_dir, n: int = 120, seed: int = 0) -> dict:
    """Write ``embedding-synthetic-<name>.png`` and ``embedding-voc-<name>.png`` into ``out_dir``;
    returns the file names, the two numbers above and the protocol."""
    out = Path(out_dir)
    net = method.net
    res: dict = {"files": {}}
    # synthetic renders
    cad = resolve_dataset_dir(data_root, "cad", "pascal3d", marker="*.json")
    files = sorted(cad.glob("car[0-9]*.json"))
    if not files:
        raise FileNotFoundError(f"no PASCAL3D+ car models in {cad}")
    meshes = [load_mesh(f) for f in files]
    r = default_renderer()
    az = np.arange(n) * 360.0 / n
    imgs = []
    for k, a in enumerate(az):
        v = r.render(meshes[k % len(meshes)], Viewpoint(azimuth=float(a), elevation=10.0), 128)
        imgs.append(v.rgb)
    x = torch.stack([resize_image(i, method.size) for i in imgs])
    f = encoder_features(net, x.to(memory_format=torch.contiguous_format))
    xy = embed_features(f, "tsne", seed=seed)
    name = f"embedding-synthetic-{method.name}.png"
    plot_embedding(xy, out / name, values=az, thumbnails=imgs,
                   title=f"{method.name}: encoder codes of {n} car renders (t-SNE), "
                         "colour = azimuth")
    res["files"]["synthetic"] = name
    res["synthetic_nn_azimuth_error_deg"] = _nn_azimuth_error(f, az)
    # real VOC crops with pose tags
    try:
        voc = ImageFolder(resolve_dataset_dir(data_root, "real", "voc2007", "car",
                                              marker="boxes.tsv"))
        per = max(2, n // 4)
        chosen: dict[str, list[int]] = {}
        for i in range(len(voc)):
            p = voc.pose(i)
            if p in ("Frontal", "Rear", "Left", "Right") and len(chosen.get(p, [])) < per:
                chosen.setdefault(p, []).append(i)
        idx = [i for v in chosen.values() for i in v]
        labels = np.array([voc.pose(i) for i in idx])
        crops = [crop_sample(voc[i], size=method.size).image for i in idx]
        x = torch.stack([resize_image(c, method.size) for c in crops])
        f = encoder_features(net, x)
        xy = embed_features(f, "tsne", seed=seed)
        name = f"embedding-voc-{method.name}.png"
        plot_embedding(xy, out / name, labels=labels, thumbnails=crops,
                       title=f"{method.name}: encoder codes of {len(idx)} VOC car crops (t-SNE), "
                             "marker = VOC pose tag")
        res["files"]["voc"] = name
        res["voc_pose_knn5_accuracy"] = _knn_accuracy(f, labels)
        _, counts = np.unique(labels, return_counts=True)
        res["voc_pose_chance"] = float(counts.max() / counts.sum())
    except FileNotFoundError as e:
        res["voc"] = f"skipped: {e}"
    res["protocol"] = {"task": "feature embedding (t-SNE of L2-normalised encoder codes)",
                       "synthetic": f"{n} renders of PASCAL3D+ cars, azimuth every "
                                    f"{360 / n:g} deg, "
                                    "elevation 10", "voc": "VOC2007 car crops with pose tags, up "
                                    f"to {max(2, n // 4)} per tag", "seed": seed,
                       "method": method.describe()}
    return res
