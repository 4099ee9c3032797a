"""ByteTrack's constant-velocity Kalman filter over ``(cx, cy, aspect, height)``, batched.

The state is ``[cx, cy, a, h, vcx, vcy, va, vh]`` for N tracks at once (``mean`` N x 8,
``cov`` N x 8 x 8). ByteTrack tunes its noise per frame at 30 fps; here time is measured in
units of ``TIME_UNIT_S`` (1/30 s) and the process noise grows with the elapsed time, so a
camera running at 30 fps behaves exactly like ByteTrack and one that drops to 15 fps (or
skips frames under backpressure) predicts twice as far with twice the uncertainty instead of
being treated as if no time had passed.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]

TIME_UNIT_S: Final = 1.0 / 30.0
# ByteTrack's noise weights, relative to the box height.
_STD_POSITION: Final = 1.0 / 20
_STD_VELOCITY: Final = 1.0 / 160
_EYE4: Final = np.eye(4)
_DIAG8: Final = np.arange(8)
_DIAG4: Final = np.arange(4)
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


def xyxy_to_xyah(boxes: F64) -> F64:
    """``[x1, y1, x2, y2]`` rows -> ``[cx, cy, w / h, h]`` measurements."""
    wh = boxes[:, 2:] - boxes[:, :2]
    out = np.empty_like(boxes)
    out[:, :2] = boxes[:, :2] + wh / 2
    out[:, 2] = wh[:, 0] / np.maximum(wh[:, 1], 1e-9)
    out[:, 3] = wh[:, 1]
    return out


def xyah_to_xyxy(mean: F64) -> F64:
    """The box part of states (``mean[:, :4]``) as ``[x1, y1, x2, y2]`` rows."""
    h = mean[:, 3]
    w = mean[:, 2] * h
    out = np.empty((mean.shape[0], 4))
    out[:, 0] = mean[:, 0] - w / 2
    out[:, 1] = mean[:, 1] - h / 2
    out[:, 2] = out[:, 0] + w
    out[:, 3] = out[:, 1] + h
    return out


def initiate(measurements: F64) -> tuple[F64, F64]:
    """New states at the measured boxes with zero velocity and ByteTrack's initial spread."""
    n = measurements.shape[0]
    mean = np.zeros((n, 8))
    mean[:, :4] = measurements
    std = measurements[:, 3:4] * _INIT_WEIGHT + _INIT_FLOOR
    cov = np.zeros((n, 8, 8))
    cov[:, _DIAG8, _DIAG8] = std * std
    return mean, cov


def predict(mean: F64, cov: F64, elapsed_s: float) -> tuple[F64, F64]:
    """States ``elapsed_s`` later: constant velocity, process noise proportional to time."""
    k = max(elapsed_s, 0.0) / TIME_UNIT_S
    std = mean[:, 3:4] * _MOTION_WEIGHT + _MOTION_FLOOR
    motion = np.eye(8)
    motion[:4, 4:] = k * _EYE4
    new_mean = mean @ motion.T
    new_cov = motion @ cov @ motion.T
    new_cov[:, _DIAG8, _DIAG8] += std * std * k
    return new_mean, new_cov


def update(mean: F64, cov: F64, measurements: F64) -> tuple[F64, F64]:
    """Correct each state with its measured box (rows match)."""
    std = mean[:, 3:4] * _MEASURE_WEIGHT + _MEASURE_FLOOR
    innovation_cov = cov[:, :4, :4].copy()
    innovation_cov[:, _DIAG4, _DIAG4] += std * std
    # Kalman gain, transposed: S^-1 H P (P is symmetric, so H P is its first four rows).
    gain_t = np.linalg.solve(innovation_cov, cov[:, :4, :])
    innovation = measurements - mean[:, :4]
    new_mean = mean + np.einsum("ni,nij->nj", innovation, gain_t)
    new_cov = cov - cov[:, :, :4] @ gain_t
    return new_mean, new_cov
