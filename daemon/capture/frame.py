"""What every captured frame carries with it through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FrameMeta:
    camera_id: str
    seq: int
    # Wall-clock seconds (time.time()) when the frame was read from the source.
    capture_ts: float
    width: int
    height: int
