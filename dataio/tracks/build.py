"""Stage 4 of the feature tracks: build them from the stages before, cache them, report them.

Pipeline (CPU, no downloaded weights), run once per experiment and cached in its tracks/ folder
(or tracks.cache_dir):
1. features.py: SIFT on the feature images, exhaustive matching with two-view verification,
   the verified matches and F read back from the pycolmap database;
2. flow.py (tracks.flow): dense optical-flow correspondences, forward-backward and epipolar
   checked;
3. chaining.py: union-find over observations into tracks with at most one observation per
   image, then (tracks.epipolar_check) the epipolar check of every pair inside a track;
4. here: the Tracks of the training views, the npz cache and the log summary.

Keypoints are scaled from the extraction image to the training image about the top-left image
corner (uv_train = uv_src * W_train / W_src), which keeps the +0.5 pixel-centre convention that
COLMAP's keypoints share with ours (docs/conventions.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dataio.scene import SceneData
from dataio.tracks.chaining import epipolar_filter, tracks_from_labels, union_find_tracks
from dataio.tracks.features import (
    TRACKS_VERSION,
    FeatureSet,
    cache_key,
    feature_database,
    read_verified_matches,
    track_settings,
)
from dataio.tracks.flow import FlowObservations, flow_observations
from geometry.epipolar import scale_fundamental
from utils.errors import DataError
from utils.io import write_atomic


@dataclass
class Tracks:
    """Observations of feature tracks in the training views, sorted by track (each contiguous).

    obs_image: (M,) long, index into the training views (position in scene.train_ids).
    obs_uv:    (M, 2) float32, keypoint (u, v) in pixels of the training images (W x H), pixel
               centres at +0.5, sub-pixel.
    obs_track: (M,) long, track id in 0..n_tracks-1, non-decreasing.
    n_tracks:  number of tracks (each with >= 2 observations, at most one per image).
    stats:     json-able summary of how they were built.
    """

    obs_image: torch.Tensor
    obs_uv: torch.Tensor
    obs_track: torch.Tensor
    n_tracks: int
    stats: dict = field(default_factory=dict)

    def lengths(self) -> torch.Tensor:
        """(n_tracks,) long: observations per track."""
        return torch.bincount(self.obs_track, minlength=self.n_tracks)

    def keep_views(self, views: list[int], n_views: int) -> Tracks:
        """The tracks of the training views `views` (positions among the n_views), renumbered
        0..len(views)-1: observations in other views go, and so do tracks left with fewer
        than two observations."""
        new_index = torch.full((n_views,), -1, dtype=torch.long)
        new_index[torch.as_tensor(views, dtype=torch.long)] = torch.arange(len(views))
        image = new_index[self.obs_image.cpu()]
        keep = image >= 0
        long_enough = torch.bincount(self.obs_track.cpu()[keep], minlength=self.n_tracks) >= 2
        keep &= long_enough[self.obs_track.cpu()]
        track_index = torch.cumsum(long_enough.long(), 0) - 1
        return Tracks(
            obs_image=image[keep].to(self.obs_image.device),
            obs_uv=self.obs_uv[keep.to(self.obs_uv.device)],
            obs_track=track_index[self.obs_track.cpu()[keep]].to(self.obs_track.device),
            n_tracks=int(long_enough.sum()),
            stats=self.stats,
        )

    def to(self, device) -> Tracks:
        return Tracks(
            obs_image=self.obs_image.to(device),
            obs_uv=self.obs_uv.to(device),
            obs_track=self.obs_track.to(device),
            n_tracks=self.n_tracks,
            stats=self.stats,
        )


def stats_log_lines(stats: dict) -> list[str]:
    """The log lines of a Tracks.stats: a one-line summary, and a WARN naming training images
    left without a track."""
    hist = " ".join(f"{k}:{v}" for k, v in stats["length_histogram"].items())
    lines = [
        f"tracks: {stats['images']} images, {stats['verified_pairs']}/{stats['pairs']} verified "
        f"pairs ({stats['sift_matches']} SIFT matches"
        + (
            f", flow {stats['flow_matches']} on {stats['flow_pairs']} pairs"
            if stats["flow"]
            else ""
        )
        + f"), {stats['tracks']} tracks, {stats['observations']} observations "
        f"(sift {stats['sources']['sift']}, flow {stats['sources']['flow']}), "
        f"lengths {hist or '-'}, epipolar check dropped {stats['epipolar_dropped']}, "
        f"{stats['seconds']:.1f} s"
    ]
    if stats["images_without_track"]:
        lines.append(
            f"WARN tracks: no track in {len(stats['images_without_track'])} training image(s): "
            f"{', '.join(stats['images_without_track'])}"
        )
    return lines


def _build(scene: SceneData, s: dict, features: FeatureSet) -> Tracks:
    t0 = time.perf_counter()
    n = len(scene.train_ids)
    names = [scene.image_names[i] for i in scene.train_ids]
    train_from_src = features.train_from_src(scene)
    keypoints, pairs = read_verified_matches(features, s["min_num_inliers"])

    # Observations: every keypoint of every view (SIFT), then flow points appended.
    offsets = np.cumsum([0] + [len(k) for k in keypoints])
    obs_image = [np.full(len(k), v, dtype=np.int64) for v, k in enumerate(keypoints)]
    obs_uv = [k * train_from_src[v] for v, k in enumerate(keypoints)]
    obs_source = [np.zeros(offsets[-1], dtype=np.int8)]  # 0 sift, 1 flow
    edges = [np.stack([m[:, 0] + offsets[a], m[:, 1] + offsets[b]], 1) for a, b, m, _ in pairs]
    F_pairs = {
        (a, b): scale_fundamental(F, train_from_src[a], train_from_src[b])
        for a, b, _, F in pairs
        if F is not None
    }
    n_obs = int(offsets[-1])

    flow = FlowObservations()
    if s["flow"]:
        flow = flow_observations(scene.images[scene.train_ids].numpy(), F_pairs, s, n_obs)
        obs_image += flow.obs_image
        obs_uv += flow.obs_uv
        obs_source += [np.ones(len(v), dtype=np.int8) for v in flow.obs_image]
        # Flow is weaker evidence than SIFT: merged after every SIFT match.
        edges += flow.edges
        F_pairs.update(flow.F_pairs)

    obs_image = np.concatenate(obs_image)
    obs_uv = np.concatenate(obs_uv).astype(np.float64)
    obs_source = np.concatenate(obs_source)
    edges = np.concatenate(edges) if edges else np.zeros((0, 2), dtype=np.int64)
    labels = union_find_tracks(obs_image, edges)
    in_edge = np.zeros(len(labels), dtype=bool)
    in_edge[edges.ravel()] = True
    keep = in_edge.copy()
    if s["epipolar_check"]:
        keep &= epipolar_filter(obs_image, obs_uv, labels, F_pairs, s["epipolar_max_error"])
    idx, track = tracks_from_labels(labels, keep)
    dropped = int(len(tracks_from_labels(labels, in_edge)[0]) - len(idx))

    n_tracks = int(track.max()) + 1 if len(track) else 0
    lengths = np.bincount(track, minlength=n_tracks)
    seen = np.zeros(n, dtype=bool)
    seen[obs_image[idx]] = True
    sources = obs_source[idx]
    stats = {
        "images": n,
        "feature_images": features.description,
        "pairs": n * (n - 1) // 2,
        "verified_pairs": len(pairs),
        "sift_matches": int(sum(len(p[2]) for p in pairs)),
        "flow": bool(s["flow"]),
        "flow_pairs": flow.n_pairs,
        "flow_matches": flow.n_matches,
        "tracks": n_tracks,
        "observations": len(idx),
        "length_histogram": {
            str(k): int(v) for k, v in enumerate(np.bincount(lengths)) if v and k >= 2
        },
        "images_without_track": [names[k] for k in np.flatnonzero(~seen)],
        "sources": {"sift": int((sources == 0).sum()), "flow": int((sources == 1).sum())},
        "epipolar_dropped": dropped,
        "extract_match_seconds": round(features.seconds, 2),
        "seconds": 0.0,
    }
    if n_tracks == 0:
        raise DataError(
            f"no feature tracks in the {n} training views of scene {scene.name!r} "
            f"({len(pairs)} verified image pairs); lower tracks.min_num_inliers or "
            "tracks.peak_threshold, turn on tracks.flow, or set training.w_track 0."
        )
    stats["seconds"] = round(features.seconds + time.perf_counter() - t0, 2)
    return Tracks(
        obs_image=torch.from_numpy(obs_image[idx].astype(np.int64)),
        obs_uv=torch.from_numpy(obs_uv[idx].astype(np.float32)),
        obs_track=torch.from_numpy(track.astype(np.int64)),
        n_tracks=n_tracks,
        stats=stats,
    )


def _save(tracks: Tracks, path: Path) -> None:
    write_atomic(
        path,
        lambda f: np.savez(
            f,
            obs_image=tracks.obs_image.numpy(),
            obs_uv=tracks.obs_uv.numpy(),
            obs_track=tracks.obs_track.numpy(),
            n_tracks=np.int64(tracks.n_tracks),
            stats=np.array(json.dumps(tracks.stats)),
        ),
    )


def _load(path: Path) -> Tracks:
    with np.load(path) as z:
        return Tracks(
            obs_image=torch.from_numpy(z["obs_image"]),
            obs_uv=torch.from_numpy(z["obs_uv"]),
            obs_track=torch.from_numpy(z["obs_track"]),
            n_tracks=int(z["n_tracks"]),
            stats=json.loads(str(z["stats"])),
        )


def build_tracks(scene: SceneData, cfg: Mapping, cache_dir: Path, log: Callable = print) -> Tracks:
    """Feature tracks of the training views (see the module docstring), built once and cached.

    cfg: the config's tracks section as utils.config.load_config gives it (its data-side keys
    resolution .. flow_fb_max_error are read; base.yaml holds their defaults). The tracks are
    cached in cache_dir as tracks-<key>.npz, the key hashing the training images (names, size,
    feature sources) and every data-side setting; the SIFT database is keyed by the extraction
    and matching settings only, so a changed track setting rebuilds the tracks without
    extracting again. Logs a summary and a WARN naming training images left without a track.
    Raises DataError when no track exists."""
    s = track_settings(cfg)
    cache_dir = Path(cache_dir)
    features = feature_database(scene, s, cache_dir, log)
    key = cache_key({"database": features.db_path.name, "version": TRACKS_VERSION, **s})
    path = cache_dir / f"tracks-{key}.npz"
    if path.is_file():
        tracks = _load(path)
        log(f"tracks: reusing {path}")
    else:
        tracks = _build(scene, s, features)
        _save(tracks, path)
    for line in stats_log_lines(tracks.stats):
        log(line)
    return tracks
