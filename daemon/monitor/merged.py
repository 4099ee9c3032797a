"""The metric families of several processes' registries, exposed as one.

Each pipeline worker process keeps its own ``CollectorRegistry`` and sends what it collected
to the service process; the service's ``/metrics`` adds them up. Samples with the same name
and labels are summed: histogram buckets, sums and counts, counters, and per-camera gauges
(each camera lives in one worker, so its series come from one snapshot). A ``_created``
sample keeps the earliest time instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

Snapshot = list[Metric]


class MergedMetrics(Collector):
    """A collector over ``snapshots()``: the latest collected families of each process."""

    def __init__(self, snapshots: Callable[[], Iterable[Snapshot]]) -> None:
        self._snapshots = snapshots

    def collect(self) -> Iterator[Metric]:
        yield from merge(self._snapshots())


def merge(snapshots: Iterable[Snapshot]) -> list[Metric]:
    """One family per name, with the samples of every snapshot added up (see module)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], Sample]] = {}
    for snapshot in snapshots:
        for family in snapshot:
            if family.name not in families:
                families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
                values[family.name] = {}
            merged = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                seen = merged.get(key)
                if seen is None:
                    merged[key] = sample
                elif sample.name.endswith("_created"):
                    merged[key] = seen._replace(value=min(seen.value, sample.value))
                else:
                    merged[key] = seen._replace(value=seen.value + sample.value)
    for name, family in families.items():
        family.samples = list(values[name].values())
    return list(families.values())
