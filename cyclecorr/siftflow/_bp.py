"""Numba kernels of SIFT flow's dual-layer loopy belief propagation (one pyramid level).

Model (Liu, Yuen, Torralba, TPAMI 2011, eq. 1), for an integer flow ``w(p) = (u(p), v(p))``:

    E(w) = Σ_p D_p(u_p, v_p)                                    data (L1 between SIFT descriptors)
         + Σ_p γ (|u_p| + |v_p|)                                small displacement ("range" term)
         + Σ_(p,q)∈N  min(α|u_p − u_q|, d) + min(α|v_p − v_q|, d)   truncated L1, 4-neighbours

Each pixel holds two nodes, one for ``u`` (plane 0) and one for ``v`` (plane 1), each with
``S = 2w + 1`` labels: label ``l`` means displacement ``offset(p) + l − w`` (the offset comes from
the coarser pyramid level). Spatial messages run inside a plane and use the O(S) distance
transform of the truncated L1 cost; the "dual" message between the two nodes of a pixel minimises
over the data term ``D_p(u, v)``. The sweep schedule is the sequential one of Liu's release
(BP-S): iteration ``t`` updates plane ``t mod 2``; forward raster sweeps (messages to the right
and down) when ``t mod 4 < 2``, backward sweeps (to the left and up) otherwise; dual messages
when ``t mod 8 < 4``.

Array layout: ``D[y, x, lv, lu]`` (float32), ``rng[k, y, x, l]``, ``off[k, y, x]`` (int32),
spatial messages ``M[k, y, x, j, l]`` = message *into* (y, x) from its neighbour on side ``j``
(0 left, 1 right, 2 top, 3 bottom), ``dual[k, y, x, l]`` = message into plane k from the other
plane.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, fastmath=True, nogil=True)
def _smooth_row(img, y, g, row):
    # row[x, ch] = the 5-tap Gaussian along x of img's row y (edges replicated)
    w, c = img.shape[1], img.shape[2]
    for x in range(w):
        for ch in range(c):
            row[x, ch] = 0.0
        for t in range(5):
            xx = min(max(x + t - 2, 0), w - 1)
            for ch in range(c):
                row[x, ch] += g[t] * img[y, xx, ch]


@njit(cache=True, fastmath=True, nogil=True)
def downsample(img):
    """Gaussian σ = 0.67 (5 taps, edges replicated), then 2×2 averaging; (H, W, C) float32.

    Output ``(ceil(H/2), ceil(W/2), C)``; coarse pixel i has its centre at fine coordinate 2i + 0.5.
    The separable passes run row by row through small buffers (the horizontal pass's last five
    rows, two vertically smoothed rows) instead of two full-size temporaries, whose first touch
    cost more than the arithmetic; the sums are the same, in the same order.
    """
    h, w, c = img.shape
    g = np.exp(-0.5 * (np.arange(-2, 3) / 0.67) ** 2)
    g = (g / g.sum()).astype(np.float32)
    ring = np.empty((5, w, c), np.float32)  # horizontally smoothed row r at slot r % 5
    done = -1  # the last row in the ring
    sm = np.empty((2, w, c), np.float32)  # vertically smoothed rows 2y and 2y + 1
    hc, wc = (h + 1) // 2, (w + 1) // 2
    out = np.empty((hc, wc, c), np.float32)
    for y in range(hc):
        for k in range(2):
            yy0 = min(2 * y + k, h - 1)
            while done < min(yy0 + 2, h - 1):
                done += 1
                _smooth_row(img, done, g, ring[done % 5])
            for x in range(w):
                for ch in range(c):
                    sm[k, x, ch] = 0.0
                for t in range(5):
                    yy = min(max(yy0 + t - 2, 0), h - 1)
                    for ch in range(c):
                        sm[k, x, ch] += g[t] * ring[yy % 5, x, ch]
        for x in range(wc):
            x0, x1 = 2 * x, min(2 * x + 1, w - 1)
            for ch in range(c):
                out[y, x, ch] = 0.25 * (sm[0, x0, ch] + sm[0, x1, ch] + sm[1, x0, ch]
                                        + sm[1, x1, ch])
    return out


@njit(cache=True, fastmath=True, nogil=True)
def data_term(s1, s2, off_x, off_y, w):
    """``D[y, x, lv, lu] = Σ_c |s1[y, x, c] − s2[y + oy + lv − w, x + ox + lu − w, c]|``.

    −1 where the candidate lies outside image b.
    """
    h, wd, c = s1.shape
    h2, w2 = s2.shape[0], s2.shape[1]
    n = 2 * w + 1
    out = np.empty((h, wd, n, n), np.float32)
    for y in range(h):
        for x in range(wd):
            for lv in range(n):
                yb = y + off_y[y, x] + lv - w
                for lu in range(n):
                    xb = x + off_x[y, x] + lu - w
                    if 0 <= xb < w2 and 0 <= yb < h2:
                        acc = np.float32(0.0)
                        for ch in range(c):
                            acc += abs(s1[y, x, ch] - s2[yb, xb, ch])
                        out[y, x, lv, lu] = acc
                    else:
                        out[y, x, lv, lu] = -1.0
    return out


@njit(cache=True, fastmath=True, nogil=True)
def _send_spatial(M, dual, rng, off, k, y, x, direction, w, alpha, d, buf):
    h = M.shape[1]
    wd = M.shape[2]
    n = 2 * w + 1
    if direction == 0:
        if x == wd - 1:
            return
        y1, x1, skip = y, x + 1, 1
    elif direction == 1:
        if x == 0:
            return
        y1, x1, skip = y, x - 1, 0
    elif direction == 2:
        if y == h - 1:
            return
        y1, x1, skip = y + 1, x, 3
    else:
        if y == 0:
            return
        y1, x1, skip = y - 1, x, 2
    # incoming evidence at the sender, excluding what came from the receiver
    for l in range(n):
        v = dual[k, y, x, l] + rng[k, y, x, l]
        for j in range(4):
            if j != skip:
                v += M[k, y, x, j, l]
        buf[l] = v
    mn = buf[0]
    for l in range(1, n):
        if buf[l] < mn:
            mn = buf[l]
    # distance transform of alpha*|.| (lower envelope of cones)
    for l in range(1, n):
        if buf[l - 1] + alpha < buf[l]:
            buf[l] = buf[l - 1] + alpha
    for l in range(n - 2, -1, -1):
        if buf[l + 1] + alpha < buf[l]:
            buf[l] = buf[l + 1] + alpha
    cap = mn + d
    # the receiver: the message is indexed by the receiver's labels (its own offset)
    shift = off[k, y1, x1] - off[k, y, x]
    # side that the receiver sees: message into (y1, x1) from the sender's side
    side = direction  # 0: from left, 1: from right, 2: from top, 3: from bottom
    mmin = 1e30
    for l1 in range(n):
        i = l1 + shift
        if i < 0:
            val = buf[0] + alpha * (-i)
        elif i >= n:
            val = buf[n - 1] + alpha * (i - n + 1)
        else:
            val = buf[i]
        if val > cap:
            val = cap
        M[k, y1, x1, side, l1] = val
        if val < mmin:
            mmin = val
    for l1 in range(n):
        M[k, y1, x1, side, l1] -= mmin


@njit(cache=True, fastmath=True, nogil=True)
def _send_dual(M, dual, rng, D, k, y, x, w, buf):
    n = 2 * w + 1
    for l in range(n):
        v = rng[k, y, x, l]
        for j in range(4):
            v += M[k, y, x, j, l]
        buf[l] = v
    mmin = 1e30
    if k == 0:  # u plane -> v plane: out[lv] = min_lu D[lv, lu] + h[lu]
        for lv in range(n):
            best = 1e30
            for lu in range(n):
                t = D[y, x, lv, lu] + buf[lu]
                if t < best:
                    best = t
            dual[1, y, x, lv] = best
            if best < mmin:
                mmin = best
        for lv in range(n):
            dual[1, y, x, lv] -= mmin
    else:  # v plane -> u plane: out[lu] = min_lv D[lv, lu] + h[lv]
        for lu in range(n):
            best = 1e30
            for lv in range(n):
                t = D[y, x, lv, lu] + buf[lv]
                if t < best:
                    best = t
            dual[0, y, x, lu] = best
            if best < mmin:
                mmin = best
        for lu in range(n):
            dual[0, y, x, lu] -= mmin


@njit(cache=True, fastmath=True, nogil=True)
def _decode(M, dual, rng, labels):
    n = M.shape[4]
    for k in range(2):
        for y in range(M.shape[1]):
            for x in range(M.shape[2]):
                best = 1e30
                arg = 0
                for l in range(n):
                    v = rng[k, y, x, l] + dual[k, y, x, l]
                    for j in range(4):
                        v += M[k, y, x, j, l]
                    if v < best:
                        best = v
                        arg = l
                labels[k, y, x] = arg


@njit(cache=True, fastmath=True, nogil=True)
def energy(D, rng, off, labels, w, alpha, d):
    """SIFT flow energy (module docstring) of the labelling ``labels[k, y, x]``."""
    h, wd = D.shape[0], D.shape[1]
    e = 0.0
    for y in range(h):
        for x in range(wd):
            lu = labels[0, y, x]
            lv = labels[1, y, x]
            e += D[y, x, lv, lu] + rng[0, y, x, lu] + rng[1, y, x, lv]
            for k in range(2):
                u = off[k, y, x] + labels[k, y, x]
                if x < wd - 1:
                    s = alpha * abs(u - off[k, y, x + 1] - labels[k, y, x + 1])
                    e += s if s < d else d
                if y < h - 1:
                    s = alpha * abs(u - off[k, y + 1, x] - labels[k, y + 1, x])
                    e += s if s < d else d
    return e


@njit(cache=True, fastmath=True, nogil=True)
def belief_propagation(D, rng, off, w, alpha, d, n_iter, energies, M, dual):
    """Run ``n_iter`` BP-S iterations; return the lowest-energy labelling ``(2, H, W)`` int32 seen.

    ``M`` ``(2, H, W, 4, S)`` and ``dual`` ``(2, H, W, S)`` float32 hold the initial messages
    (zeros, or those handed down by the multigrid level) and are updated in place. ``energies[t]``
    receives the energy of the labelling decoded after iteration ``t``.
    """
    h, wd = D.shape[0], D.shape[1]
    n = 2 * w + 1
    buf = np.empty(n, np.float32)
    labels = np.empty((2, h, wd), np.int32)
    best_labels = np.empty((2, h, wd), np.int32)
    # starting point: every label at the window centre, i.e. the flow handed down by the coarser
    # level (or zero at the top); BP keeps a labelling only if it has a lower energy
    for k in range(2):
        for y in range(h):
            for x in range(wd):
                best_labels[k, y, x] = w
    best_e = energy(D, rng, off, best_labels, w, alpha, d)
    for t in range(n_iter):
        k = t % 2
        do_dual = (t % 8) < 4
        if (t % 4) < 2:
            for y in range(h):
                for x in range(wd):
                    _send_spatial(M, dual, rng, off, k, y, x, 0, w, alpha, d, buf)
                    _send_spatial(M, dual, rng, off, k, y, x, 2, w, alpha, d, buf)
                    if do_dual:
                        _send_dual(M, dual, rng, D, k, y, x, w, buf)
        else:
            for y in range(h - 1, -1, -1):
                for x in range(wd - 1, -1, -1):
                    _send_spatial(M, dual, rng, off, k, y, x, 1, w, alpha, d, buf)
                    _send_spatial(M, dual, rng, off, k, y, x, 3, w, alpha, d, buf)
                    if do_dual:
                        _send_dual(M, dual, rng, D, k, y, x, w, buf)
        _decode(M, dual, rng, labels)
        e = energy(D, rng, off, labels, w, alpha, d)
        energies[t] = e
        if e < best_e:
            best_e = e
            for kk in range(2):
                for yy in range(h):
                    for xx in range(wd):
                        best_labels[kk, yy, xx] = labels[kk, yy, xx]
    return best_labels


def coarser_problem(D, off, gamma, w):
    """Multigrid level of Liu's BP (``nHierarchy``): a half-resolution MRF with the same labels.

    Node (i, j) stands for the pixels (2i…2i+1, 2j…2j+1): its data term is the sum of theirs (label
    by label), its offset their mean offset (rounded), its small-displacement weight ``γ/2``; the
    smoothness parameters are unchanged. Returns ``(D_c, off_c, gamma_c, rng_c)``.
    """
    h, wd = D.shape[:2]
    hc, wc = (h + 1) // 2, (wd + 1) // 2
    n = 2 * w + 1
    Dc = np.zeros((hc, wc, n, n), np.float32)
    offc = np.zeros((2, hc, wc), np.float64)
    cnt = np.zeros((hc, wc), np.float64)
    for dy in range(2):
        for dx in range(2):
            sub = D[dy::2, dx::2]
            Dc[:sub.shape[0], :sub.shape[1]] += sub
            offc[:, :sub.shape[0], :sub.shape[1]] += off[:, dy::2, dx::2]
            cnt[:sub.shape[0], :sub.shape[1]] += 1
    offc = np.round(offc / cnt).astype(np.int32)
    gc = gamma / 2.0
    rngc = (gc * np.abs(offc[:, :, :, None] + (np.arange(n) - w))).astype(np.float32)
    return Dc, offc, gc, rngc


def multigrid_bp(D, rng, off, gamma, w, alpha, d, n_iter, n_hier, n_sub_iter=20):
    """Liu's BP with multigrid message initialisation.

    With ``n_hier > 0`` a coarser MRF (:func:`coarser_problem`) is solved first with ``n_sub_iter``
    iterations (recursively, ``n_hier − 1`` further levels) and its messages initialise this level's
    (each node gets its parent's messages). Returns ``(labels (2, H, W), energies, M, dual)`` where
    ``energies[0]`` is the energy of the starting labelling (the offsets, i.e. the flow handed down
    by the coarser pyramid level) and ``energies[t + 1]`` that after BP iteration ``t``; ``labels``
    is the lowest-energy labelling among them.
    """
    h, wd = D.shape[:2]
    n = 2 * w + 1
    M = np.zeros((2, h, wd, 4, n), np.float32)
    dual = np.zeros((2, h, wd, n), np.float32)
    if n_hier > 0 and min(h, wd) >= 2:
        Dc, offc, gc, rngc = coarser_problem(D, off, gamma, w)
        _, _, Mc, dualc = multigrid_bp(Dc, rngc, offc, gc, w, alpha, d, n_sub_iter, n_hier - 1,
                                       n_sub_iter)
        M[:] = np.repeat(np.repeat(Mc, 2, axis=1), 2, axis=2)[:, :h, :wd]
        dual[:] = np.repeat(np.repeat(dualc, 2, axis=1), 2, axis=2)[:, :h, :wd]
    energies = np.zeros(n_iter, np.float64)
    start = np.full((2, h, wd), w, np.int32)
    e0 = energy(D, rng, off, start, w, float(alpha), float(d))
    labels = belief_propagation(D, rng, off, w, float(alpha), float(d), int(n_iter), energies,
                                M, dual)
    return labels, np.concatenate([[e0], energies]), M, dual
