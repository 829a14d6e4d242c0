"""cameras.guard: the joint loop may refine the cameras only while the feature tracks agree.

The photometric loss pulls the cameras towards whatever explains the field's current colours,
which on a good start (a bundle adjustment of the tracks) is a worse camera as often as a better
one. The tracks are an independent witness: every guard_every steps while the cameras learn,
the tracks are triangulated with the current cameras and re-projected (sfm.scoring.track_fit,
the same score cameras.init auto ranks its candidates by). The best-fitting cameras so far are
kept aside; when the current ones fit clearly worse than those (fewer observations within 2 px
by more than WITHIN_TOLERANCE, or a median error more than MEDIAN_TOLERANCE higher), they are
restored and the cameras stop learning for the rest of the run. So a refinement that helps
goes on, and one that drifts ends where it was best. "Clearly" scales with the misfit: a start
far from the tracks is noisier to score, and a small dip there is no drift.

A poor start (under POOR_WITHIN_2PX of the observations within 2 px: noisy or re-registered
cameras) is first adjusted on the tracks by Ceres (sfm.initialise.track_adjustment) before the
cameras learn: the track term minimised by Adam in the loop walks the weakly curved directions
of a bundle adjustment for thousands of steps, where Levenberg-Marquardt converges in seconds
(CHANGELOG.md has the measurement). The loop then refines from there, guarded as above.
"""

from __future__ import annotations

import numpy as np
import torch

from sfm.scoring import MEDIAN_TOLERANCE, WITHIN_TOLERANCE, track_fit

MISFIT_TOLERANCE = 0.05  # of the observations outside 2 px, when larger than WITHIN_TOLERANCE
POOR_WITHIN_2PX = 0.5  # good starts fit 85-98% of the observations within 2 px


def camera_fit(trainer) -> dict:
    """The model's current cameras scored on the run's tracks (track_fit)."""
    cams = trainer.model.cam_param
    with torch.no_grad():
        c2w = cams.c2w().double().cpu().numpy()
        focal = cams.focal_px().double().cpu().numpy()
        principal = cams.principal.double().cpu().numpy()
    fit = track_fit(c2w, focal, principal, np.ones(cams.n, bool), trainer.tracks, trainer.W)
    return {"within_2px": fit["within_2px"], "median_px": fit["median_px"]}


def worse(fit: dict, than: dict) -> bool:
    tolerance = max(WITHIN_TOLERANCE, MISFIT_TOLERANCE * (1 - than["within_2px"]))
    return fit["within_2px"] < than["within_2px"] - tolerance or fit["median_px"] > than[
        "median_px"
    ] * (1 + MEDIAN_TOLERANCE)


def poor(fit: dict) -> bool:
    return fit["within_2px"] < POOR_WITHIN_2PX


def better(fit: dict, than: dict) -> bool:
    return (fit["within_2px"], -fit["median_px"]) > (than["within_2px"], -than["median_px"])
