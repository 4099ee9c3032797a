"""Config checks only the loaded model can make: class filters naming classes it lacks."""

from __future__ import annotations

from collections.abc import Iterable

from daemon.config.model import CameraConfig
from daemon.config.tracking import TrackingConfig
from daemon.postprocess.filters import resolve_filter
from daemon.track.stage import CameraTracking


def filter_problems(
    cameras: Iterable[CameraConfig],
    names: tuple[str, ...],
    tracking: TrackingConfig | None = None,
) -> list[str]:
    """Class filters naming classes the model lacks: config mistakes only the model reveals.

    ``tracking`` is the top-level tracking block: with it, the class filters of each
    tracking camera's tracker, zones and lines are checked too."""
    problems = []
    for camera in cameras:
        try:
            resolve_filter(camera, 0.0, names)
            settings = camera.tracking or tracking
            if settings is not None and settings.enabled:
                CameraTracking(camera, settings, names)
        except ValueError as exc:
            problems.append(str(exc))
    return problems
