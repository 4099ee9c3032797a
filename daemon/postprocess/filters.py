"""Each camera's own output rules (confidence, classes) applied to the decoded detections.

The batch is decoded once at the lowest threshold any camera wants; each camera's filter then
keeps what that camera publishes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from daemon.config.model import CameraConfig
from daemon.postprocess.classes import resolve_classes
from daemon.postprocess.yolo import Detections


@dataclass(frozen=True, slots=True)
class CameraFilter:
    """Per-camera output rules resolved against the model's class names."""

    confidence: float
    class_ids: npt.NDArray[np.int64] | None

    def apply(self, detections: Detections) -> Detections:
        """The detections this camera publishes."""
        keep = detections.scores >= self.confidence
        if self.class_ids is not None:
            keep &= np.isin(detections.class_ids, self.class_ids)
        # A count, not keep.all(): count_nonzero skips a ufunc reduction's call overhead, several
        # times the cost on a frame's few detections, and this runs on every camera-frame.
        return detections if np.count_nonzero(keep) == len(keep) else detections.select(keep)


def resolve_filter(
    camera: CameraConfig, default_conf: float, names: tuple[str, ...]
) -> CameraFilter:
    """Turn a camera's class filter (names or ids) into ids; unknown classes are a config error."""
    class_ids = resolve_classes(camera.classes, names, f"cameras[{camera.id}].classes")
    conf = camera.confidence if camera.confidence is not None else default_conf
    return CameraFilter(conf, class_ids)
