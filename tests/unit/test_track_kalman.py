"""The compact Kalman filter equals ByteTrack's full 8 x 8 filter (textbook matrices)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from daemon.track import kalman

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
    mean, cov = np.empty((8, 2)), np.empty((3, 4, 2))
    kalman.initiate(z0.T, mean, cov)
    full = [_full_initiate(z) for z in z0]
    for step in range(40):
        elapsed = float(rng.choice([1 / 30, 2 / 30, 1 / 15 + 0.013, 0.2]))
        kalman.predict(mean, cov, elapsed)
        full = [_full_predict(m, c, elapsed / kalman.TIME_UNIT_S) for m, c in full]
        if step % 5 != 4:  # some frames without a detection
            z = z0 + step * np.array([[6.0, -2.0, 0.0, 1.0], [-3.0, 1.0, 0.01, 0.0]])
            z += rng.normal(0, 1.5, size=z.shape) * [1, 1, 0.01, 1]
            kalman.update(mean, cov, z.T)
            full = [_full_update(m, c, zi) for (m, c), zi in zip(full, z, strict=True)]
        for i, (m, c) in enumerate(full):
            np.testing.assert_allclose(mean[:, i], m, rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(cov[..., i], _as_blocks(c), rtol=1e-9, atol=1e-12)
            # Nothing outside the 2 x 2 blocks ever becomes non-zero.
            assert np.count_nonzero(c) == 16


def test_predict_with_a_time_per_track_leaves_zero_time_tracks_unchanged() -> None:
    z = np.array([[320.0, 200.0, 0.45, 120.0], [40.0, 400.0, 1.8, 30.0], [90.0, 50.0, 1.0, 60.0]])
    mean, cov = np.empty((8, 3)), np.empty((3, 4, 3))
    kalman.initiate(z.T, mean, cov)
    kalman.predict(mean, cov, 0.1)
    kalman.update(mean, cov, z.T + 3.0)  # non-zero velocities
    per_mean, per_cov = mean.copy(), cov.copy()
    kalman.predict(per_mean, per_cov, np.array([0.05, 0.0, 0.2]))
    for i, elapsed in enumerate([0.05, 0.0, 0.2]):
        one_mean, one_cov = mean[:, i : i + 1].copy(), cov[..., i : i + 1].copy()
        kalman.predict(one_mean, one_cov, elapsed)
        assert np.array_equal(per_mean[:, i], one_mean[:, 0])
        assert np.array_equal(per_cov[..., i], one_cov[..., 0])
    assert np.array_equal(per_mean[:, 1], mean[:, 1])
    assert np.array_equal(per_cov[..., 1], cov[..., 1])
