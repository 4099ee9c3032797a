"""The compact Kalman filter equals ByteTrack's full 8 x 8 filter (textbook matrices)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from daemon.track.bytetrack import (
    MEAN,
    POS,
    STATE_SIZE,
    TIME_UNIT_S,
    VEL,
    kalman_initiate,
    kalman_predict,
    kalman_update,
    measure,
    state_box,
)

F64 = npt.NDArray[np.float64]
W_POS, W_VEL = 1 / 20, 1 / 160


def _full_initiate(z: F64) -> tuple[F64, F64]:
    h = z[3]
    std = [2 * W_POS * h, 2 * W_POS * h, 1e-2, 2 * W_POS * h]
    std += [10 * W_VEL * h, 10 * W_VEL * h, 1e-5, 10 * W_VEL * h]
    return np.r_[z, np.zeros(4)], np.diag(np.square(std))


def _full_predict(mean: F64, cov: F64, k: float) -> tuple[F64, F64]:
    h = mean[3]
    motion = np.eye(8)
    motion[:4, 4:] = k * np.eye(4)
    std = [W_POS * h, W_POS * h, 1e-2, W_POS * h, W_VEL * h, W_VEL * h, 1e-5, W_VEL * h]
    return motion @ mean, motion @ cov @ motion.T + np.diag(np.square(std)) * k


def _full_update(mean: F64, cov: F64, z: F64) -> tuple[F64, F64]:
    h = mean[3]
    project = np.eye(4, 8)
    noise = np.diag(np.square([W_POS * h, W_POS * h, 1e-1, W_POS * h]))
    innovation_cov = project @ cov @ project.T + noise
    gain = cov @ project.T @ np.linalg.inv(innovation_cov)
    return mean + gain @ (z - project @ mean), cov - gain @ innovation_cov @ gain.T


def _as_blocks(full: F64) -> F64:
    i = np.arange(4)
    return np.stack([full[i, i], full[i, i + 4], full[i + 4, i + 4]])


def test_compact_filter_matches_the_full_matrices_over_irregular_time_steps() -> None:
    rng = np.random.default_rng(3)
    z0 = np.array([[320.0, 200.0, 0.45, 120.0], [40.0, 400.0, 1.8, 30.0]])
    states = np.empty((2, STATE_SIZE))
    for state, z in zip(states, z0, strict=True):
        kalman_initiate(state, *z)
    full = [_full_initiate(z) for z in z0]
    for step in range(40):
        elapsed = float(rng.choice([1 / 30, 2 / 30, 1 / 15 + 0.013, 0.2]))
        for state in states:
            kalman_predict(state, elapsed)
        full = [_full_predict(m, c, elapsed / TIME_UNIT_S) for m, c in full]
        if step % 5 != 4:  # some frames without a detection
            z = z0 + step * np.array([[6.0, -2.0, 0.0, 1.0], [-3.0, 1.0, 0.01, 0.0]])
            z += rng.normal(0, 1.5, size=z.shape) * [1, 1, 0.01, 1]
            for state, zi in zip(states, z, strict=True):
                kalman_update(state, *zi)
            full = [_full_update(m, c, zi) for (m, c), zi in zip(full, z, strict=True)]
        for state, (m, c) in zip(states, full, strict=True):
            mean = state[MEAN : MEAN + 8]
            np.testing.assert_allclose(mean, m, rtol=1e-9, atol=1e-9)
            blocks = state[POS : VEL + 4].reshape(3, 4)
            np.testing.assert_allclose(blocks, _as_blocks(c), rtol=1e-9, atol=1e-12)
            # Nothing outside the 2 x 2 blocks ever becomes non-zero.
            assert np.count_nonzero(c) == 16


def test_box_and_measurement_convert_both_ways() -> None:
    corners = np.array([10.0, 20.0, 50.0, 100.0])
    cx, cy, a, h = measure(corners)
    assert (cx, cy, a, h) == (30.0, 60.0, 0.5, 80.0)
    state = np.empty(STATE_SIZE)
    kalman_initiate(state, cx, cy, a, h)
    assert state_box(state) == (10.0, 20.0, 50.0, 100.0)
