"""Stage 3 of the feature tracks: chaining pairwise matches into tracks (pure numpy).

Union-find over observations (image, point), strongest pairs first, never merging two
components that share an image, so a track holds at most one observation per image; then,
optionally, an epipolar check of every pair inside a track against that pair's F.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from geometry.epipolar import epipolar_distance


def union_find_tracks(obs_image: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Chain pairwise matches into tracks without ever putting two observations of one image in
    one track.

    obs_image: (N,) int, the image of each observation. edges: (E, 2) int observation indices,
    strongest first: each edge merges its two components unless they already share an image
    (then the weaker edge is dropped). Returns (N,) int64 component labels (an observation's
    smallest member index); singleton components are observations no edge kept."""
    n = len(obs_image)
    parent = np.arange(n)
    images = {i: {int(obs_image[i])} for i in np.unique(edges)} if len(edges) else {}

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for a, b in np.asarray(edges, dtype=np.int64).tolist():
        ra, rb = find(a), find(b)
        if ra == rb:
            continue
        set_a, set_b = images[ra], images[rb]
        if not set_a.isdisjoint(set_b):
            continue
        if len(set_a) < len(set_b):
            ra, rb, set_a, set_b = rb, ra, set_b, set_a
        parent[rb] = ra
        set_a |= set_b
        del images[rb]
    roots = np.array([find(i) for i in range(n)], dtype=np.int64)
    # Label = smallest member, so labels do not depend on the union order's root choice.
    smallest = np.full(n, n, dtype=np.int64)
    np.minimum.at(smallest, roots, np.arange(n))
    return smallest[roots]


def epipolar_filter(
    obs_image: np.ndarray,
    obs_uv: np.ndarray,
    labels: np.ndarray,
    F_pairs: Mapping[tuple[int, int], np.ndarray],
    max_error: float,
) -> np.ndarray:
    """Check every pair of observations inside each track against its image pair's F and drop,
    track by track, the observation in most violations until none is left.

    obs_image (N,), obs_uv (N, 2) training pixels, labels (N,) track labels; F_pairs maps
    (a, b) with a < b to F (3, 3) in training pixels (x_b^T F x_a = 0); pairs without an F are
    not checked. Returns (N,) bool: observations kept."""
    keep = np.ones(len(labels), dtype=bool)
    if not F_pairs:
        return keep
    n_images = int(obs_image.max()) + 1
    F_table = np.zeros((n_images * n_images, 3, 3))
    has_F = np.zeros(n_images * n_images, dtype=bool)
    for (a, b), F in F_pairs.items():
        F_table[a * n_images + b] = F
        has_F[a * n_images + b] = True
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    lengths = np.diff(np.r_[starts, len(labels)])
    # Every pair (i, j) of observations inside a track, image of i < image of j.
    oi, oj = [], []
    for length in np.unique(lengths[lengths >= 2]):
        first = starts[lengths == length]
        iu, ju = np.triu_indices(length, k=1)
        oi.append(order[first[:, None] + iu[None, :]].ravel())
        oj.append(order[first[:, None] + ju[None, :]].ravel())
    if not oi:
        return keep
    oi, oj = np.concatenate(oi), np.concatenate(oj)
    swap = obs_image[oi] > obs_image[oj]
    oi, oj = np.where(swap, oj, oi), np.where(swap, oi, oj)
    pair = obs_image[oi] * n_images + obs_image[oj]
    checked = has_F[pair]
    oi, oj, pair = oi[checked], oj[checked], pair[checked]
    bad = epipolar_distance(F_table[pair], obs_uv[oi], obs_uv[oj]) > max_error
    bad_i, bad_j = oi[bad], oj[bad]
    by_track: dict[int, list[tuple[int, int]]] = {}
    for i, j in zip(bad_i.tolist(), bad_j.tolist()):
        by_track.setdefault(int(labels[i]), []).append((i, j))
    for violations in by_track.values():
        while violations:
            counts: dict[int, int] = {}
            for i, j in violations:
                counts[i] = counts.get(i, 0) + 1
                counts[j] = counts.get(j, 0) + 1
            # Ties go to the later observation: flow points come after SIFT keypoints.
            worst = max(counts, key=lambda o: (counts[o], o))
            keep[worst] = False
            violations = [(i, j) for i, j in violations if worst not in (i, j)]
    return keep


def tracks_from_labels(labels: np.ndarray, keep: np.ndarray):
    """Observations to keep (indices, sorted by track) and their track ids 0..T-1 for labels
    (N,) and a keep mask: tracks with fewer than two kept observations disappear."""
    idx = np.flatnonzero(keep)
    lab = labels[idx]
    _, inverse, counts = np.unique(lab, return_inverse=True, return_counts=True)
    valid = counts[inverse] >= 2
    idx, inverse = idx[valid], inverse[valid]
    _, track = np.unique(inverse, return_inverse=True)
    order = np.lexsort((idx, track))
    return idx[order], track[order]
