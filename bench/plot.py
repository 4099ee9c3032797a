"""The sweep plot of ``bench e2e``: total fps and p95 latency against camera count.

From the reports of one ``--sweep`` run (``plot_sweep``), or from the JSON files of separate
runs (``python -m bench.plot OUT.png RUN.json...``: a device call is too short for a whole
sweep in one process, so its points are run one by one).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.e2e import E2EReport

# One line: a system's (cameras, total fps, p95 ms or None) points.
_Series = tuple[str, list[tuple[int, float, float | None]]]


def plot_sweep(reports: Sequence[E2EReport], path: Path) -> None:
    """Two panels (total processed fps, p95 latency), ours and the baseline where measured."""
    series: list[_Series] = [
        ("edgewatch", [(r.cameras, r.ours.stream.total_fps, r.ours.stream.latency_ms_p95)
                       for r in reports]),
    ]  # fmt: skip
    theirs = [(r.cameras, r.theirs) for r in reports if r.theirs is not None]
    if len(theirs) == len(reports):
        series.append(("ultralytics", [(n, t.stream.total_fps, t.stream.latency_ms_p95)
                                       for n, t in theirs]))  # fmt: skip
    _draw(series, path)


def plot_json(runs: Sequence[Path], path: Path) -> None:
    """The same plot from ``bench e2e --json`` files, one camera count each (or a sweep)."""
    docs = []
    for run in runs:
        loaded = json.loads(run.read_text())
        docs.extend(loaded if isinstance(loaded, list) else [loaded])
    docs.sort(key=lambda d: int(d["cameras"]))
    series: list[_Series] = []
    for system in ("ours", "theirs"):
        points = [(int(d["cameras"]), float(d[system]["total_fps"]),
                   d[system]["latency_ms"]["p95"]) for d in docs if d.get(system)]  # fmt: skip
        if points:
            series.append((docs[0][system]["system"], points))
    _draw(series, path)


def _draw(series: Sequence[_Series], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_fps, ax_lat) = plt.subplots(1, 2, figsize=(10, 4))
    for label, points in series:
        cams = [p[0] for p in points]
        ax_fps.plot(cams, [p[1] for p in points], marker="o", label=label)
        ax_lat.plot(cams, [_or_nan(p[2]) for p in points], marker="o", label=label)
    ax_fps.set(xlabel="cameras", ylabel="total processed fps", title="throughput")
    ax_lat.set(xlabel="cameras", ylabel="p95 capture->receipt ms", title="latency")
    for ax in (ax_fps, ax_lat):
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _or_nan(value: float | None) -> float:
    """A gap in the line where nothing was measured (no frame in the window), not a zero."""
    return float("nan") if value is None else value


if __name__ == "__main__":
    plot_json([Path(a) for a in sys.argv[2:]], Path(sys.argv[1]))
