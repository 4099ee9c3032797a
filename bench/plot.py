"""The sweep plot of ``bench e2e --sweep``: total fps and p95 latency against camera count."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.e2e import E2EReport


def plot_sweep(reports: Sequence[E2EReport], path: Path) -> None:
    """Two panels (total processed fps, p95 latency), ours and the baseline where measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cams = [r.cameras for r in reports]
    fig, (ax_fps, ax_lat) = plt.subplots(1, 2, figsize=(10, 4))
    series = [("edgewatch", [r.ours for r in reports])]
    if all(r.theirs is not None for r in reports):
        series.append(("ultralytics", [r.theirs for r in reports if r.theirs is not None]))
    for label, results in series:
        ax_fps.plot(cams, [s.stream.total_fps for s in results], marker="o", label=label)
        ax_lat.plot(
            cams,
            [_or_nan(s.stream.latency_ms_p95) for s in results],
            marker="o",
            label=label,
        )
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
