"""A picture of the learnt features: a 2D embedding of encoder codes coloured by viewpoint (the
paper's observation that the features are viewpoint-sensitive).

Features: the network's encoder output for each ``(3, S, S)`` image (``(256, S/16, S/16)``),
flattened and L2-normalised. Embedding: PCA to ``min(50, N−1)`` dimensions, then exact t-SNE
(van der Maaten & Hinton, 2008; written here: Gaussian affinities with a per-point bandwidth found
by bisection to match ``perplexity``, symmetrised ``P = (P_j|i + P_i|j) / 2N``, Student-t
``Q``, gradient ``4 Σ_j (p_ij − q_ij)(y_i − y_j)/(1 + ‖y_i − y_j‖²)``, early exaggeration 12 for
the first 100 iterations, momentum 0.5 → 0.8), seeded; or PCA alone (``method="pca"``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["encoder_features", "pca", "tsne", "embed_features", "plot_embedding"]


def encoder_features(net, images, batch_size: int = 64) -> np.ndarray:
    """``(N, 3, S, S)`` float images in [0, 1] → ``(N, D)`` L2-normalised flattened encoder
    codes."""
    feats = []
    net = net.eval()
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size]
            dev = next(net.parameters()).device
            feats.append(net.encode(x.to(dev)).flatten(1).float().cpu())
    f = torch.cat(feats).numpy().astype(np.float64)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def pca(x: np.ndarray, k: int) -> np.ndarray:
    """Project the rows of ``x`` on their top ``k`` principal directions (centred)."""
    x = np.asarray(x, np.float64)
    xc = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    k = min(k, u.shape[1])
    return u[:, :k] * s[:k]


def _affinities(x: np.ndarray, perplexity: float) -> np.ndarray:
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    n = len(x)
    target = np.log(perplexity)
    p = np.zeros((n, n))
    for i in range(n):
        lo, hi, beta = 0.0, np.inf, 1.0
        di = np.delete(d[i], i)
        for _ in range(60):
            w = np.exp(-(di - di.min()) * beta)
            sw = w.sum()
            pi = w / sw
            h = -np.sum(pi * np.log(np.maximum(pi, 1e-300)))
            if abs(h - target) < 1e-5:
                break
            if h > target:
                lo = beta
                beta = beta * 2 if hi == np.inf else (beta + hi) / 2
            else:
                hi = beta
                beta = (beta + lo) / 2
        p[i, np.arange(n) != i] = pi
    return (p + p.T) / (2 * n)


def tsne(x: np.ndarray, perplexity: float = 20.0, n_iter: int = 600,
         learning_rate: float | None = None, seed: int = 0) -> np.ndarray:
    """Exact t-SNE of the rows of ``x`` to 2D (see module doc). ``N`` up to a few thousand.
    ``learning_rate`` default: ``max(N / 12, 10)`` (larger steps diverge for small N)."""
    x = np.asarray(x, np.float64)
    n = len(x)
    if learning_rate is None:
        learning_rate = max(n / 12.0, 10.0)
    if n < 3:
        raise ValueError(f"t-SNE needs at least 3 points, got {n}")
    perplexity = min(perplexity, (n - 1) / 3.0)
    P = np.maximum(_affinities(x, perplexity), 1e-12)
    rng = np.random.default_rng(seed)
    y = rng.normal(scale=1e-4, size=(n, 2))
    vel = np.zeros_like(y)
    gains = np.ones_like(y)
    for it in range(n_iter):
        exag = 12.0 if it < 100 else 1.0
        diff = y[:, None, :] - y[None, :, :]
        num = 1.0 / (1.0 + (diff ** 2).sum(-1))
        np.fill_diagonal(num, 0.0)
        Q = np.maximum(num / num.sum(), 1e-12)
        W = (exag * P - Q) * num
        grad = 4.0 * (W[:, :, None] * diff).sum(1)
        gains = np.where(np.sign(grad) != np.sign(vel), gains + 0.2, gains * 0.8).clip(0.01)
        mom = 0.5 if it < 250 else 0.8
        vel = mom * vel - learning_rate * gains * grad
        y = y + vel
        y -= y.mean(0)
    return y


def embed_features(features: np.ndarray, method: str = "tsne", seed: int = 0,
                   perplexity: float = 20.0) -> np.ndarray:
    """``(N, D)`` → ``(N, 2)``: ``"pca"`` or ``"tsne"`` (PCA to 50 dims first)."""
    f = np.asarray(features, np.float64)
    if method == "pca":
        return pca(f, 2)
    if method == "tsne":
        return tsne(pca(f, min(50, len(f) - 1)), perplexity=perplexity, seed=seed)
    raise ValueError(f"embedding method must be 'pca' or 'tsne', got {method!r}")


def plot_embedding(xy: np.ndarray, path, values=None, labels=None, title: str = "",
                   thumbnails=None, cyclic: bool = True) -> Path:
    """Scatter plot of a 2D embedding, coloured by a continuous ``values`` (e.g. azimuth in
    degrees, cyclic colour map) and/or marked by categorical ``labels`` (e.g. VOC pose tags);
    optional small ``thumbnails`` (``H×W×3`` uint8 per point) drawn at the points. Saves a PNG."""
    import matplotlib  # on use: heavy, and pyplot must come after the Agg backend is chosen

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    xy = np.asarray(xy, np.float64)
    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    if thumbnails is not None:
        from matplotlib.offsetbox import AnnotationBbox, OffsetImage  # with pyplot, above

        for (x, y), im in zip(xy, thumbnails):
            ab = AnnotationBbox(OffsetImage(im, zoom=0.18), (x, y), frameon=False, zorder=1)
            ax.add_artist(ab)
    if values is not None:
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=np.asarray(values, np.float64),
                        cmap="twilight" if cyclic else "viridis", s=22, zorder=2,
                        vmin=0 if cyclic else None, vmax=360 if cyclic else None,
                        edgecolors="k", linewidths=0.3)
        fig.colorbar(sc, ax=ax, label="azimuth (deg)" if cyclic else "value")
    if labels is not None:
        labels = np.asarray(labels)
        markers = "osD^v<>P*Xh"
        for k, lab in enumerate(sorted(set(labels.tolist()))):
            sel = labels == lab
            ax.scatter(xy[sel, 0], xy[sel, 1], marker=markers[k % len(markers)], s=26,
                       facecolors="none" if values is not None else None,
                       edgecolors="k" if values is not None else None, label=str(lab), zorder=3)
        ax.legend(fontsize=8, loc="best")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
