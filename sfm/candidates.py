"""cameras.init: auto: candidate starts, scored by one rule, the best one kept.

Candidates, cheapest first: for forward-facing captures, Ceres bundle adjustment of the tracks
from identity (tracks_ceres: pycolmap, SIMPLE_RADIAL, in rounds, sfm/track_ceres.py); for
captures around an object, rotation averaging of the tracks' two-view geometry, global
positioning and the same Ceres rounds (tracks_global, sfm/track_global.py); then COLMAP's global
mapper (GLOMAP) and COLMAP's incremental mapper (both pycolmap, on the tracks' feature database,
one SIMPLE_RADIAL camera refined by Ceres). Our own candidates come first because they share
only the features with COLMAP's mappers, so a mapper's misplaced or missing views have an
independent alternative. The runners live in sfm/runners.py, one candidate's handling in
sfm/candidate.py.

The rule, the same for every candidate (sfm/scoring.py): triangulate every verified track
(dataio/tracks) with the candidate's cameras (linear, from its registered views) and re-project
it; then
1. a candidate is usable when its focal is plausible (FOCAL_RATIO_RANGE of the image width, a
   field of view of about 11 to 118 degrees) and it registers at least MIN_REGISTERED of the
   views;
2. usable candidates rank by registered views, then by the fraction of track observations that
   re-project within 2 px, then by their median re-projection error, each counted only beyond
   the score's noise (sfm/scoring.py); candidates that fit alike are a tie, which the earlier
   one wins (our own first), so a capture keeps the same start from run to run;
3. the first candidate that registers every view with GOOD_WITHIN_2PX of the observations
   within 2 px ends the search (the costlier ones would not beat it by much; it keeps the total
   time near the cheapest mapper's).
Before a candidate is ranked, every view it placed goes through the per-view check
(sfm/view_check.py: leave-one-out re-projection and two-view rotations), which a view that fits
its own tracks but sits in the wrong place cannot pass; a view that fails it counts as not
registered, named in a warning. Views the kept candidate left out or misplaced are registered by
PnP (pycolmap, LO-RANSAC + refinement) against the tracks its other views triangulate and
checked again; a view PnP cannot place, or places where the check fails, is dropped from the
training views, named in a warning (sfm/start.py drops it wherever the scene is loaded); the
kept cameras are checked once more after the final adjustment. A
start's radial distortion (SIMPLE_RADIAL k1; candidates are scored with their own) is removed
from the photos once (sfm/distortion.py). A kept start other than tracks_ceres then gets one
more Ceres adjustment on every verified track (final_adjustment: the principal point and k2
where the even and the odd views agree on them). Every
candidate's score and cameras are written to <exp>/sfm/.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dataio.scene import SceneData
from models.cameras import Cameras
from sfm.candidate import (
    Candidate,
    park,
    pinhole_tracks,
    place_missing,
    score,
    screen,
)
from sfm.distortion import MIN_CORNER_SHIFT_PX, corner_shift_px
from sfm.distortion import save as save_distortion
from sfm.runners import CANDIDATES, OBJECT_CANDIDATES, RUNNERS, TRACK_CANDIDATES
from sfm.scoring import (
    FOCAL_RATIO_RANGE,
    MEDIAN_TOLERANCE,
    MIN_REGISTERED,
    WITHIN_TOLERANCE,
    track_fit,
    triangulated_tracks,
)
from sfm.view_check import LOO_MIN_AGREEING, LOO_PX, MAX_ROTATION_DISAGREEMENT_DEG
from utils.errors import DataError
from utils.io import write_atomic, write_json_atomic

GOOD_WITHIN_2PX = 0.95
PRINCIPAL_MAX_OFFSET = 0.1  # of the image width / height, from its centre
PRINCIPAL_SIGMAS = 3.0  # the halves' mean offset, in spreads, that refines the principal point
MIN_VIEWS_PER_HALF = 6
# A half re-adjusted from the other half's lens replaces its own result only when its final
# cost is lower by this fraction: restarts of the same half at the same lens end this far apart
# (other cameras and points move), and a lens that fits no better must not make the halves
# agree (started from the other's k2 in a flat valley, Ceres barely moves away from it).
RESTART_MARGIN = 0.03
SUMMARY_FILE = "candidates.json"


def choose_start(
    cfg,
    scene: SceneData,
    cameras: Cameras,
    tracks,
    cache_dir: Path,
    out_dir: Path | None = None,
    log: Callable[[str], object] = print,
    on_round: Callable[[int], object] | None = None,
    runners: dict | None = None,
) -> dict:
    """Run the candidates (see the module docstring), write the kept one into `cameras`
    (set_initial) and return the summary written to <out_dir>/candidates.json."""
    runners = RUNNERS if runners is None else runners
    names = [
        n
        for n in CANDIDATES
        if n not in (OBJECT_CANDIDATES if scene.forward_facing else TRACK_CANDIDATES)
    ]
    principal = cameras.principal.double().cpu().numpy()
    H, W = cameras.H, cameras.W
    tried: list[Candidate] = []
    for name in names:
        cand, t0 = Candidate(name), time.perf_counter()
        try:
            cand.c2w, cand.focal, cand.registered, cand.radial, cand.forward_facing = runners[name](
                cfg, scene, cameras, tracks, cache_dir, log, on_round
            )
            score(cand, principal, tracks, W)
            cand.failed_check = screen(cand, principal, tracks, H, W)
        except DataError as err:
            cand.failed = str(err)
        cand.seconds = time.perf_counter() - t0
        tried.append(cand)
        log(f"cameras.init auto: {describe(cand)}")
        if cand.usable and _good(cand):
            break
    usable = [c for c in tried if c.usable]
    if not usable:
        raise DataError(
            f"no camera start works for {scene.name}: "
            + "; ".join(f"{c.name}: {describe(c)}" for c in tried)
            + ". Check that the photos overlap, or use cameras.init identity with tracks."
        )
    kept = usable[0]  # in the candidates' order: a tie goes to the earlier one
    for c in usable[1:]:
        kept = c if c.beats(kept) else kept
    names_of = [scene.image_names[i] for i in scene.train_ids]
    for k, verdict in kept.failed_check.items():
        log(f"cameras.init auto: WARN {kept.name} misplaced {names_of[k]}: {verdict.why}")
    missing = [int(k) for k in np.flatnonzero(~kept.registered)]
    left = place_missing(kept, principal, tracks, H, W) if missing else []
    if missing:
        done = sorted(set(missing) - set(left))
        log(
            f"cameras.init auto: {kept.name} left out or misplaced {len(missing)} view(s); PnP "
            f"registered {', '.join(names_of[k] for k in done) or 'none'}"
            + (
                f"; WARN dropped {', '.join(names_of[k] for k in left)} from the training views "
                "(too few track correspondences with the others to place them, or placed where "
                "the view check fails)"
                if left
                else ""
            )
        )
    keep_focal = cfg is not None and cfg.cameras.focal_init == "gt"
    refined = None
    if kept.name not in TRACK_CANDIDATES and not keep_focal:  # they end with their own
        refined = final_adjustment(kept, principal, tracks, H, W, log)
        if refined is not None:
            principal = refined
    late = screen(kept, principal, tracks, H, W)  # the kept cameras as they will start
    for k, verdict in late.items():
        log(
            f"cameras.init auto: WARN dropped {names_of[k]} after the final adjustment: "
            f"{verdict.why}"
        )
    left = sorted({*left, *late})
    weak = {k: v.weak for k, v in kept.verdicts.items() if v.weak and k not in left}
    if weak:
        log(
            f"cameras.init auto: WARN {len(weak)} view(s) weakly placed (kept; their errors may "
            "be degrees): " + "; ".join(f"{names_of[k]}: {why}" for k, why in weak.items())
        )
    park(kept, left)
    cameras.set_initial(
        c2w_init=torch.from_numpy(kept.c2w).float(),
        focal=None if keep_focal else torch.from_numpy(kept.focal).float(),
        principal=None if refined is None else torch.from_numpy(refined).float(),
    )
    radial, focal, centre = _distortion(kept, principal)
    shift = corner_shift_px(radial, focal, centre, H, W)
    undistort = not keep_focal and shift >= MIN_CORNER_SHIFT_PX
    if undistort and out_dir is not None:
        save_distortion(Path(out_dir), radial, focal, centre)
        log(
            f"cameras.init auto: radial distortion k1 {radial[0]:.4f}, k2 {radial[1]:.4f} moves "
            f"the image corners {shift:.1f} px: the photos and keypoints are undistorted once "
            "(sfm/distortion.py)"
        )
    summary = {
        "kept": kept.name,
        "why": why(kept, tried, len(names)),
        "radial_k1_k2": list(radial),
        "corner_shift_px": shift,
        "undistorted": bool(undistort and out_dir is not None),
        "dropped": [names_of[k] for k in left],
        "view_check": {
            "failed": {names_of[k]: v.why for k, v in {**kept.failed_check, **late}.items()},
            "weak": {names_of[k]: why for k, why in weak.items()},
            "views": {  # the kept cameras' last check, every view it placed
                names_of[k]: {
                    "loo_agreeing": None if np.isnan(v.loo_agreeing) else v.loo_agreeing,
                    "loo_observations": v.loo_observations,
                    "rotation_median_deg": (
                        None if np.isnan(v.rotation_median_deg) else v.rotation_median_deg
                    ),
                    "n_neighbours": v.n_neighbours,
                    "n_disagreeing": v.n_disagreeing,
                }
                for k, v in kept.verdicts.items()
            },
            "rule": {
                "loo_px": LOO_PX,
                "loo_min_agreeing": LOO_MIN_AGREEING,
                "max_rotation_disagreement_deg": MAX_ROTATION_DISAGREEMENT_DEG,
            },
        },
        "forward_facing": bool(kept.forward_facing),
        "registered_by_pnp": [names_of[k] for k in missing if k not in left],
        "principal_refined": None if refined is None else [float(x) for x in refined[0]],
        "rule": {
            "good_within_2px": GOOD_WITHIN_2PX,
            "min_registered": MIN_REGISTERED,
            "focal_ratio_range": list(FOCAL_RATIO_RANGE),
        },
        "candidates": [
            {"name": c.name, "seconds": c.seconds, "failed": c.failed, **c.fit} for c in tried
        ],
    }
    if out_dir is not None:
        _write(Path(out_dir), tried, summary)
    log(f"cameras.init auto: kept {kept.name} ({summary['why']})")
    return summary


@dataclass
class HalvesAgreement:
    """What the even and the odd registered views, adjusted apart, agree on (see halves)."""

    refine_principal: bool
    offset: np.ndarray  # (2,) px: the halves' mean principal point from the image centre
    spread: float  # px: half the distance between the halves' principal points
    model: str  # RADIAL when the halves agree on k2, else SIMPLE_RADIAL
    k2: tuple  # the halves' k2
    radial: np.ndarray  # (2,) the halves' mean k1, k2: where the whole capture's RADIAL starts
    restarted: tuple = ()  # the halves (0 even, 1 odd) kept from the other's lens (halves)
    costs: tuple = ()  # each half's final Ceres cost


def halves(kept: Candidate, principal: np.ndarray, tracks, H: int, W: int) -> HalvesAgreement:
    """Whether the tracks pin down the principal point and the second radial term: the kept
    start is adjusted (RADIAL, principal point free) on the even and on the odd registered
    views apart (interleaved halves, each seeing the whole capture), and a quantity is trusted
    only when the halves' mean lies more than PRINCIPAL_SIGMAS spreads from its null value (the
    image centre; k2 = 0), the spread being half the distance between the two estimates (each
    half has twice the variance of the whole). Both trade with other parameters and fit the
    tracks almost equally well anywhere near their null value (the fraction within 2 px moves
    by 0.01% on the scenes below), so the fit cannot decide; agreement can.
    Captures with a calibrated off-centre principal point (DTU, the fox capture) give halves
    that agree far outside their spread; a synthetic pinhole's (lego) disagree, and refining it
    there would invent an offset. k2 is trusted the same way; photos that have no k2 (a pinhole,
    rectified DTU photos) give halves of opposite or far-apart values and get SIMPLE_RADIAL.
    Each half starts at k = 0; where their k2 disagree, each is adjusted once more from the
    other's lens and keeps that result when its final Ceres cost is lower by RESTART_MARGIN:
    a half can stop in a second minimum near k2 = 0 (one run of the fox capture from fresh
    SIFT: k2 -0.0009 against the other half's -0.085), which cost the whole capture its k2."""
    from sfm.colmap import adjust_on_tracks

    views = np.flatnonzero(kept.registered)
    if len(views) < 2 * MIN_VIEWS_PER_HALF:
        return HalvesAgreement(False, np.zeros(2), float("inf"), "SIMPLE_RADIAL", (), np.zeros(2))
    parts = [views[0::2], views[1::2]]
    starts = []
    for half in parts:
        reg = np.zeros_like(kept.registered)
        reg[half] = True
        points = triangulated_tracks(kept.c2w, kept.focal, principal, reg, tracks)
        starts.append((reg, points))

    def adjust(i: int, lens=None):
        reg, points = starts[i]
        return adjust_on_tracks(
            kept.c2w, kept.focal, principal, reg, tracks, H, W, points, True, True, "RADIAL",
            radial_start=lens,
        )  # fmt: skip

    fits = [adjust(i) for i in range(2)]
    restarted = []
    if not _agree(*(np.array([f.radial[h[0], 1]]) for f, h in zip(fits, parts)), np.zeros(1))[0]:
        # each half again from the other's lens: a half may stop in a second, worse minimum
        # (k2 ~ 0 where the other half and the whole capture find -0.085 on fox)
        others = [fits[1].radial[parts[1][0]], fits[0].radial[parts[0][0]]]
        for i in range(2):
            again = adjust(i, others[i])
            if again.cost < (1 - RESTART_MARGIN) * fits[i].cost:
                fits[i] = again
                restarted.append(i)
    centres = [f.principal[h[0]] for f, h in zip(fits, parts)]
    lens = [f.radial[h[0]] for f, h in zip(fits, parts)]
    k2 = [float(k[1]) for k in lens]
    pp_agree, offset, spread = _agree(*centres, null=np.array([W / 2, H / 2]))
    k2_agree, _, _ = _agree(*(np.array([k]) for k in k2), null=np.zeros(1))
    return HalvesAgreement(
        pp_agree,
        offset,
        spread,
        "RADIAL" if k2_agree else "SIMPLE_RADIAL",
        tuple(k2),
        np.mean(lens, axis=0),
        tuple(restarted),
        tuple(f.cost for f in fits),
    )


def _agree(a: np.ndarray, b: np.ndarray, null: np.ndarray) -> tuple[bool, np.ndarray, float]:
    """The halves' rule for one quantity estimated twice (a, b): trusted when their mean lies
    more than PRINCIPAL_SIGMAS spreads (half their distance) from its null value. Returns
    (trusted, mean - null, spread)."""
    offset = (a + b) / 2 - null
    spread = float(np.linalg.norm(a - b) / 2)
    return bool(np.linalg.norm(offset) > PRINCIPAL_SIGMAS * spread), offset, spread


def final_adjustment(kept: Candidate, principal: np.ndarray, tracks, H: int, W: int, log):
    """One more Ceres adjustment of the kept start on every verified track
    (sfm.colmap.adjust_on_tracks, Cauchy loss) with a RADIAL camera (k1, k2) when the halves
    agree on k2, else SIMPLE_RADIAL (k1), which around an object also refines the principal
    point when the tracks pin it down (halves; COLMAP's mappers hold it at the image centre).
    RADIAL starts from the halves' mean k1, k2: the two trade along a flat valley where the
    distortion moves the corners by a pixel or less (the fox capture at 135x240), and started
    at k = 0 Ceres stops partway along it (gradient tolerance) at a point that depends on the
    start's cameras, so the same capture ended at k1 0.016 or 0.06 on two runs and its
    rotations 0.2 or 0.12 deg from the truth; from the halves' mean every start reaches the
    same lens.
    A forward-facing capture keeps the centre: there a shift of the principal point and a common
    tilt of the cameras fit the tracks alike, so both halves can agree on an offset the tilt
    explains as well (LLFF's poses assume the centre). The adjustment is what takes a
    mapper's start to the accuracy of the track candidates (docs/results.md).
    Kept when the principal point stays within PRINCIPAL_MAX_OFFSET of the image size from the
    centre and the fit to the tracks is not clearly worse (no more than the score's noise,
    scoring.WITHIN_TOLERANCE and MEDIAN_TOLERANCE, fewer observations within 2 px or higher
    median: a start whose own lens fits better, e.g. a k2 the halves could not test, stays);
    updates `kept` in place and returns the refined principal points (n, 2), or None (the
    centre stays)."""
    from sfm.colmap import adjust_on_tracks

    agree = halves(kept, principal, tracks, H, W)
    offset, spread = agree.offset, agree.spread
    refine = agree.refine_principal and not kept.forward_facing
    if refine:
        principal_note = "refined"
    elif kept.forward_facing:
        principal_note = (
            "held at the centre (forward-facing: a shift of it and a common tilt of the cameras "
            "fit alike)"
        )
    else:
        principal_note = "held at the centre (the tracks do not pin it down)"
    log(
        "cameras.init auto: principal point from the even and the odd views: "
        f"({offset[0]:+.1f}, {offset[1]:+.1f}) px from the centre, spread {spread:.2f} px: "
        + principal_note
        + "; k2 "
        + " / ".join(f"{k:.4f}" for k in agree.k2)
        + (": RADIAL" if agree.model == "RADIAL" else ": the halves disagree, SIMPLE_RADIAL")
        + "".join(
            f" (the {('even', 'odd')[i]} half from the other's lens: a lower cost)"
            for i in agree.restarted
        )
    )
    reg = kept.registered
    points = triangulated_tracks(kept.c2w, kept.focal, principal, reg, tracks)
    c2w, focal, radial, centre, _ = adjust_on_tracks(
        kept.c2w, kept.focal, principal, reg, tracks, H, W, points, refine, True, agree.model,
        radial_start=agree.radial if agree.model == "RADIAL" else None,
    )  # fmt: skip
    off_centre = np.abs(centre[0] - (W / 2, H / 2)) / (W, H)
    after = Candidate(kept.name, c2w, focal, reg.copy(), radial, kept.forward_facing)
    fit = track_fit(c2w, focal, centre, reg, pinhole_tracks(after, centre, tracks), W)
    worse = fit["within_2px"] < kept.fit["within_2px"] - WITHIN_TOLERANCE or fit[
        "median_px"
    ] > kept.fit["median_px"] * (1 + MEDIAN_TOLERANCE)
    rejected = worse or off_centre.max() > PRINCIPAL_MAX_OFFSET
    log(
        f"cameras.init auto: final adjustment ({agree.model} camera"
        + (", principal point refined" if refine else "")
        + f"): ({centre[0, 0]:.1f}, {centre[0, 1]:.1f}) px, focal {focal[reg][0, 0]:.1f} px, "
        f"k1 {radial[0, 0]:.4f}, k2 {radial[0, 1]:.4f}, {100 * fit['within_2px']:.1f}% within 2 px "
        f"(was {100 * kept.fit['within_2px']:.1f}%), median {fit['median_px']:.3f} px "
        f"(was {kept.fit['median_px']:.3f})"
        + ("; not kept (principal point implausible or fit worse)" if rejected else "")
    )
    if rejected:
        return None
    kept.c2w, kept.focal, kept.radial = c2w, focal, radial
    return centre if refine else None


def _distortion(c: Candidate, principal: np.ndarray):
    """((k1, k2), focal (2,), principal (2,)) of the candidate's one physical camera (medians
    over its registered views)."""
    reg = c.registered
    return (
        tuple(float(x) for x in np.median(c.radial[reg], axis=0)),
        torch.from_numpy(np.median(c.focal[reg], axis=0)),
        torch.from_numpy(np.median(principal[reg], axis=0)),
    )


def _good(c: Candidate) -> bool:
    return c.fit["n_registered"] == c.fit["n_views"] and c.fit["within_2px"] >= GOOD_WITHIN_2PX


def describe(c: Candidate) -> str:
    if c.failed is not None:
        return f"{c.name} failed ({c.failed})"
    f = c.fit
    return (
        f"{c.name}: {f['n_registered']}/{f['n_views']} views, {100 * f['within_2px']:.1f}% of "
        f"{f['n_observations']} track observations within 2 px, median {f['median_px']:.2f} px, "
        f"focal {f['focal_ratio']:.3f} x width"
        + ("" if f["usable"] else " (not usable: focal or registered views)")
        + f", {c.seconds:.1f} s"
    )


def why(kept: Candidate, tried: list[Candidate], n_candidates: int) -> str:
    """Why `kept` was kept, among `tried` of the scene's n_candidates."""
    f = kept.fit
    text = (
        f"{f['n_registered']}/{f['n_views']} views, {100 * f['within_2px']:.1f}% within 2 px, "
        f"median {f['median_px']:.2f} px"
    )
    if kept is tried[-1] and _good(kept) and len(tried) < n_candidates:
        return text + "; good enough to skip the costlier candidates"
    others = [c.name for c in tried if c is not kept]
    return text + (f"; best of {', '.join([kept.name, *others])}" if others else "")


def _write(out_dir: Path, tried: list[Candidate], summary: dict) -> None:
    for c in tried:
        if c.failed is None:
            write_atomic(
                out_dir / f"{c.name}.npz",
                lambda f, c=c: np.savez(f, c2w=c.c2w, focal=c.focal, registered=c.registered),
            )
    write_json_atomic(out_dir / SUMMARY_FILE, summary)


def saved_summary(exp_dir: Path) -> dict | None:
    """<exp>/sfm/candidates.json (None when cameras.init auto did not run)."""
    path = Path(exp_dir) / "sfm" / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def views_block(exp_dir: Path) -> dict | None:
    """What the camera start did to the training views, for metrics.json: the views it dropped,
    re-registered by PnP and failed in the view check, with their counts (None without auto)."""
    summary = saved_summary(exp_dir)
    if summary is None:
        return None
    failed = summary.get("view_check", {}).get("failed", {})
    return {
        "kept": summary["kept"],
        "n_dropped": len(summary["dropped"]),
        "n_registered_by_pnp": len(summary["registered_by_pnp"]),
        "n_failed_view_check": len(failed),
        "dropped": summary["dropped"],
        "registered_by_pnp": summary["registered_by_pnp"],
        "failed_view_check": failed,
        "n_weak": len(summary.get("view_check", {}).get("weak", {})),
        "weak": summary.get("view_check", {}).get("weak", {}),
    }


def summary_line(exp_dir: Path) -> str | None:
    """One line on the kept start for the end of a run (None when auto did not run)."""
    summary = saved_summary(exp_dir)
    if summary is None:
        return None
    return f"cameras started from {summary['kept']}: {summary['why']}"
