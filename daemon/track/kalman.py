"""ByteTrack's constant-velocity Kalman filter over ``(cx, cy, aspect, height)``, batched.

The state is ``[cx, cy, a, h, vcx, vcy, va, vh]`` for N tracks at once (``mean`` N x 8).
ByteTrack's filter never mixes the four coordinates: its initial covariance, process noise
and measurement noise are diagonal, and the motion couples each coordinate only with its own
velocity. Its 8 x 8 covariance is therefore four independent 2 x 2 blocks, stored here as
their distinct entries, ``cov`` N x 3 x 4: variance of each coordinate, its covariance with
its velocity, variance of the velocity. The same filter in a handful of element-wise
operations instead of batched 8 x 8 products and solves.

The arithmetic runs on views with the tracks on the last axis (``mean.T``, ``_blocks(cov)``):
a value per track then broadcasts over the leading axes and each operation's inner loop runs
over the tracks, where the row layout makes numpy loop over 4 or 8 values per track, several
times slower at tracker sizes; the layout changes no element's arithmetic.

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
# Standard deviations per state component: ``height * _X_WEIGHT + _X_FLOOR``.
_INIT_WEIGHT: Final = (
    np.array([2, 2, 0, 2, 0, 0, 0, 0]) * _STD_POSITION
    + np.array([0, 0, 0, 0, 10, 10, 0, 10]) * _STD_VELOCITY
)
_INIT_FLOOR: Final = np.array([0, 0, 1e-2, 0, 0, 0, 1e-5, 0])
_MOTION_WEIGHT: Final = (
    np.array([1, 1, 0, 1, 0, 0, 0, 0]) * _STD_POSITION
    + np.array([0, 0, 0, 0, 1, 1, 0, 1]) * _STD_VELOCITY
)
_MOTION_FLOOR: Final = _INIT_FLOOR
_MEASURE_WEIGHT: Final = np.array([1, 1, 0, 1]) * _STD_POSITION
_MEASURE_FLOOR: Final = np.array([0, 0, 1e-1, 0])


def _blocks(cov: F64) -> F64:
    """``cov`` viewed as [3, 4, N], the tracks on the last axis: ``[0]`` the variance of each
    coordinate, ``[1]`` its covariance with its velocity, ``[2]`` the velocity's variance."""
    return cov.transpose(1, 2, 0)


def xyxy_to_xyah(boxes: F64) -> F64:
    """``[x1, y1, x2, y2]`` rows -> ``[cx, cy, w / h, h]`` measurements."""
    # Computed with the tracks last (module docstring), returned as a transposed view.
    corners = boxes.T
    wh = corners[2:] - corners[:2]
    out = np.empty((4, len(boxes)))
    # Written through ``out=``: the tracker converts every frame and the copies add up.
    np.add(corners[:2], wh / 2, out=out[:2])
    np.divide(wh[0], np.maximum(wh[1], 1e-9), out=out[2])
    out[3] = wh[1]
    return out.T


def xyah_to_xyxy(mean: F64) -> F64:
    """The box part of states (``mean[:, :4]``) as ``[x1, y1, x2, y2]`` rows."""
    # Computed with the tracks last (module docstring), returned as a transposed view.
    state = mean.T
    wh = state[2:4].copy()
    wh[0] *= state[3]
    out = np.empty((4, len(mean)))
    np.subtract(state[:2], wh / 2, out=out[:2])
    np.add(out[:2], wh, out=out[2:])
    return out.T


def initiate(measurements: F64) -> tuple[F64, F64]:
    """New states at the measured boxes with zero velocity and ByteTrack's initial spread."""
    n = measurements.shape[0]
    mean = np.zeros((n, 8))
    mean[:, :4] = measurements
    var = measurements[:, 3] * _INIT_WEIGHT[:, None] + _INIT_FLOOR[:, None]
    var *= var
    cov = np.zeros((n, 3, 4))
    blocks = _blocks(cov)
    blocks[0] = var[:4]
    blocks[2] = var[4:]
    return mean, cov


def predict(mean: F64, cov: F64, elapsed_s: float | npt.NDArray[np.floating[Any]]) -> None:
    """Move states ``elapsed_s`` on, in place: constant velocity, process noise proportional
    to time.

    ``elapsed_s`` is one time for every track or one per track; a track given 0 is left
    unchanged, so a caller can predict all rows at once instead of gathering a subset. In
    place because the tracker's states are views into its track records: no copies to write
    back."""
    k = np.maximum(elapsed_s, 0.0) / TIME_UNIT_S
    m, c = mean.T, _blocks(cov)
    noise = m[3] * _MOTION_WEIGHT[:, None] + _MOTION_FLOOR[:, None]
    noise *= noise * k
    m[:4] += k * m[4:]
    pos, both, vel = c
    k_vel = k * vel
    pos += k * (2 * both + k_vel)
    pos += noise[:4]
    both += k_vel
    vel += noise[4:]


def update(mean: F64, cov: F64, measurements: F64) -> tuple[F64, F64]:
    """Correct each state with its measured box (rows match)."""
    m, c = mean.T, _blocks(cov)
    noise = m[3] * _MEASURE_WEIGHT[:, None] + _MEASURE_FLOOR[:, None]
    pos, both = c[0], c[1]
    innovation_var = pos + noise * noise
    # gain[0] for the coordinates, gain[1] for their velocities.
    gain = c[:2] / innovation_var
    innovation = measurements.T - m[:4]
    new_mean, new_cov = mean.copy(), cov.copy()
    # [2, 4, N]: the coordinates and their velocities, each corrected with its own gain.
    halves = new_mean.reshape(-1, 2, 4).transpose(1, 2, 0)
    halves += gain * innovation
    new_c = _blocks(new_cov)
    new_c[:2] -= gain[0] * c[:2]
    new_c[2] -= gain[1] * both
    return new_mean, new_cov
