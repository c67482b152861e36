"""Which way a car faces: a HOG vote against reference models whose front is known.

A model whose up axis and length axis are known but whose front may point either way along the
length axis is loaded once, with a guessed front (canonical −y), and rendered (geometry only,
uniform grey, default :class:`~cyclecorr.render.Light`, black background, cropped to its box at
128×128, as the retrieval bank) at every viewpoint of :data:`VOTE_VIEWS` (azimuth every 30°,
elevations 10° and 25°). The model turned by 180° about z seen from azimuth ``a`` is the
original seen from ``a + 180°``, so the same renders give both candidate orientations:

- ``keep``: the render at view ``v`` is compared with the references rendered at ``v``;
- ``flip``: the render at ``v + 180°`` is compared with the references rendered at ``v``.

Distance of a candidate at a view: the mean of the ``k`` smallest Euclidean HOG distances
(:func:`~cyclecorr.data.retrieval.hog_descriptor`) to the references' renders at that view.
Each view votes for the candidate nearer to the references; the majority decides (ties: the
smaller summed distance). ``margin`` = (votes for the winner − votes for the loser) / views.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cyclecorr.data.retrieval import _sq_dists, hog_descriptor, render_bank_views, viewpoint_grid
from cyclecorr.render import Mesh

__all__ = ["VOTE_VIEWS", "FrontVote", "flip_views", "view_descriptors", "front_vote",
           "turn_around", "geometry_only"]

#: (V, 2) azimuth/elevation grid of the vote (azimuth every 30°, elevations 10° and 25°).
VOTE_VIEWS = viewpoint_grid(30.0, (10, 25))


def flip_views(viewpoints: np.ndarray) -> np.ndarray:
    """(V,) index of the view at azimuth + 180°, same elevation (raises if a grid lacks it)."""
    vp = np.asarray(viewpoints, np.float64)
    out = np.empty(len(vp), np.int64)
    for i, (a, e) in enumerate(vp):
        d = np.abs(((vp[:, 0] - (a + 180.0)) + 180.0) % 360.0 - 180.0) + np.abs(vp[:, 1] - e)
        j = int(np.argmin(d))
        if d[j] > 1e-6:
            raise ValueError(f"viewpoint grid has no view at azimuth {a + 180:.1f}, "
                             f"elevation {e:.1f}")
        out[i] = j
    return out


def geometry_only(mesh):
    """The mesh without materials or textures (uniform grey when rendered)."""
    return Mesh(mesh.vertices, mesh.faces, mesh.keypoints, mesh.source, mesh.kind,
                mesh.to_canonical, None)


def turn_around(mesh):
    """The mesh turned by 180° about the canonical z axis (front −y ↔ +y), geometry only."""
    R = np.diag([-1.0, -1.0, 1.0])
    T = np.eye(4)
    T[:3, :3] = R
    kps = {k: R @ p for k, p in mesh.keypoints.items()}
    return Mesh(mesh.vertices * np.array([-1, -1, 1], np.float32), mesh.faces, kps,
                mesh.source, mesh.kind, T @ mesh.to_canonical, None)


def view_descriptors(mesh, viewpoints: np.ndarray = VOTE_VIEWS, size: int = 128,
                     distance: float = 2.5, renderer=None, textured: bool = False) -> np.ndarray:
    """HOG (V, D) of ``mesh`` rendered at each (azimuth, elevation) row of ``viewpoints``
    (geometry only unless ``textured``)."""
    m = mesh if textured else geometry_only(mesh)
    return np.stack([hog_descriptor(im)
                     for im in render_bank_views(m, viewpoints, size, distance, renderer)])


@dataclass
class FrontVote:
    """Outcome of :func:`front_vote`.

    Attributes:
        keep_votes, flip_votes: views voting for each candidate (ties vote for neither).
        dist_keep, dist_flip: (V,) per-view distance of each candidate to the references.
    """

    keep_votes: int
    flip_votes: int
    dist_keep: np.ndarray
    dist_flip: np.ndarray

    @property
    def flip(self) -> bool:
        """True when the model faces +y (turn it around to face −y)."""
        if self.keep_votes != self.flip_votes:
            return self.flip_votes > self.keep_votes
        return float(self.dist_flip.sum()) < float(self.dist_keep.sum())

    @property
    def margin(self) -> float:
        """(winner's votes − loser's votes) / views, in [0, 1]."""
        return abs(self.keep_votes - self.flip_votes) / max(1, len(self.dist_keep))

    @property
    def distance_gap(self) -> float:
        """Mean over views of (loser's distance − winner's distance); ≥ 0 unless the majority
        and the summed distances disagree."""
        g = float((self.dist_flip - self.dist_keep).mean())
        return -g if self.flip else g


def front_vote(descriptors: np.ndarray, references: np.ndarray,
               viewpoints: np.ndarray = VOTE_VIEWS, k: int = 5,
               exclude: int | None = None) -> FrontVote:
    """Vote on whether a model (rendered with its guessed front at −y) faces −y or +y.

    Args:
        descriptors: (V, D) HOG of the model's renders at ``viewpoints``.
        references: (M, V, D) HOG of reference models (front −y) at the same viewpoints.
        viewpoints: (V, 2) azimuth/elevation; each view's azimuth + 180° must be in the grid.
        k: distance to the references = mean of the ``k`` smallest.
        exclude: a reference index to leave out (leave-one-out validation).
    """
    desc = np.asarray(descriptors, np.float32)
    ref = np.asarray(references, np.float32)
    if exclude is not None:
        ref = np.delete(ref, int(exclude), axis=0)
    M, V, D = ref.shape
    if desc.shape != (V, D):
        raise ValueError(f"descriptors must be ({V}, {D}) like the references, got {desc.shape}")
    kk = max(1, min(int(k), M))
    fl = flip_views(viewpoints)
    dk = np.empty(V, np.float64)
    df = np.empty(V, np.float64)
    for v in range(V):
        d = np.sqrt(_sq_dists(desc[[v, fl[v]]], ref[:, v, :]))  # (2, M)
        d = np.sort(d, axis=1)[:, :kk].mean(1)
        dk[v], df[v] = d
    return FrontVote(int((dk < df).sum()), int((df < dk).sum()), dk, df)
