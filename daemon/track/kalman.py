"""ByteTrack's constant-velocity Kalman filter over ``(cx, cy, aspect, height)``, batched.

The state is ``[cx, cy, a, h, vcx, vcy, va, vh]`` for N tracks at once, one row per
component and one column per track (``mean`` 8 x N). ByteTrack's filter never mixes the
four coordinates: its initial covariance, process noise and measurement noise are diagonal,
and the motion couples each coordinate only with its own velocity. Its 8 x 8 covariance is
therefore four independent 2 x 2 blocks, stored here as their distinct entries, ``cov``
3 x 4 x N: variance of each coordinate, its covariance with its velocity, variance of the
velocity. The same filter in a handful of element-wise operations instead of batched 8 x 8
products and solves.

Tracks on the last axis: each operation's inner loop runs over the tracks on contiguous
rows and a value per track broadcasts over the leading axes, where a row per track makes
numpy loop over 4 or 8 values at a time, several times slower at tracker sizes; the layout
changes no element's arithmetic. Boxes go in and out the same way: ``[x1, y1, x2, y2]``
rows of N columns.

ByteTrack tunes its noise per frame at 30 fps; here time is measured in units of
``TIME_UNIT_S`` (1/30 s) and the process noise grows with the elapsed time, so a camera
running at 30 fps behaves exactly like ByteTrack and one that drops to 15 fps (or skips
frames under backpressure) predicts twice as far with twice the uncertainty instead of
being treated as if no time had passed.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]

TIME_UNIT_S: Final = 1.0 / 30.0
# ByteTrack's noise weights, relative to the box height.
_STD_POSITION: Final = 1.0 / 20
_STD_VELOCITY: Final = 1.0 / 160
# Standard deviations per state component: ``height * _X_WEIGHT + _X_FLOOR``, as columns
# that broadcast over the tracks.
_INIT_WEIGHT: Final = (
    np.array([2, 2, 0, 2, 0, 0, 0, 0]) * _STD_POSITION
    + np.array([0, 0, 0, 0, 10, 10, 0, 10]) * _STD_VELOCITY
)[:, None]
_INIT_FLOOR: Final = np.array([0, 0, 1e-2, 0, 0, 0, 1e-5, 0])[:, None]
_MOTION_WEIGHT: Final = (
    np.array([1, 1, 0, 1, 0, 0, 0, 0]) * _STD_POSITION
    + np.array([0, 0, 0, 0, 1, 1, 0, 1]) * _STD_VELOCITY
)[:, None]
_MOTION_FLOOR: Final = _INIT_FLOOR
_MEASURE_WEIGHT: Final = (np.array([1, 1, 0, 1]) * _STD_POSITION)[:, None]
_MEASURE_FLOOR: Final = np.array([0, 0, 1e-1, 0])[:, None]


def xyxy_to_xyah(corners: F64) -> F64:
    """``[x1, y1, x2, y2]`` rows -> ``[cx, cy, w / h, h]`` measurement rows."""
    wh = corners[2:] - corners[:2]
    out = np.empty((4, corners.shape[1]))
    # Written through ``out=``: the tracker converts every frame and the copies add up.
    np.add(corners[:2], wh / 2, out=out[:2])
    np.divide(wh[0], np.maximum(wh[1], 1e-9), out=out[2])
    out[3] = wh[1]
    return out


def xyah_to_xyxy(mean: F64) -> F64:
    """The box part of states (``mean[:4]``) as ``[x1, y1, x2, y2]`` rows."""
    wh = mean[2:4].copy()
    wh[0] *= mean[3]
    out = np.empty((4, mean.shape[1]))
    np.subtract(mean[:2], wh / 2, out=out[:2])
    np.add(out[:2], wh, out=out[2:])
    return out


def initiate(measurements: F64, mean: F64, cov: F64) -> None:
    """Set ``mean`` and ``cov`` (written in place: the tracker's new track block) to states
    at the measured boxes with zero velocity and ByteTrack's initial spread."""
    mean[:4] = measurements
    mean[4:] = 0.0
    var = measurements[3] * _INIT_WEIGHT + _INIT_FLOOR
    var *= var
    cov[0] = var[:4]
    cov[1] = 0.0
    cov[2] = var[4:]


def predict(mean: F64, cov: F64, elapsed_s: float | npt.NDArray[np.floating[Any]]) -> None:
    """Move states ``elapsed_s`` on, in place: constant velocity, process noise proportional
    to time.

    ``elapsed_s`` is one time for every track or one per track; a track given 0 is left
    unchanged, so a caller can predict all columns at once instead of gathering a subset.
    In place because the tracker's states are views into its track block: no copies to
    write back."""
    k = np.maximum(elapsed_s, 0.0) / TIME_UNIT_S
    noise = mean[3] * _MOTION_WEIGHT + _MOTION_FLOOR
    noise *= noise * k
    mean[:4] += k * mean[4:]
    pos, both, vel = cov
    k_vel = k * vel
    pos += k * (2 * both + k_vel)
    pos += noise[:4]
    both += k_vel
    vel += noise[4:]


def update(mean: F64, cov: F64, measurements: F64) -> None:
    """Correct each state with its measured box (columns match), in place."""
    noise = mean[3] * _MEASURE_WEIGHT + _MEASURE_FLOOR
    innovation_var = cov[0] + noise * noise
    # gain[0] for the coordinates, gain[1] for their velocities.
    gain = cov[:2] / innovation_var
    # [2, 4, N]: the coordinates and their velocities, each corrected with its own gain.
    mean += (gain * (measurements - mean[:4])).reshape(8, -1)
    # The velocities' variance first: it reads the covariance the next line overwrites.
    cov[2] -= gain[1] * cov[1]
    cov[:2] -= gain[0] * cov[:2]
