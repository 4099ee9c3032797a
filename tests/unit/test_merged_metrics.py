"""The service's ``/metrics`` with pipeline workers: each worker's registry, collected in the
worker and sent over, summed into one exposition (``daemon.monitor.merged``)."""

from __future__ import annotations

import pickle

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from daemon.monitor.merged import MergedMetrics
from daemon.monitor.metrics import STAGES, DaemonMetrics


def _worker(stage_seconds: list[float], batches: list[int]) -> DaemonMetrics:
    metrics = DaemonMetrics()
    for seconds in stage_seconds:
        metrics.observe_stage("preprocess", seconds)
    for size in batches:
        metrics.batch_size.observe(size)
    return metrics


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_workers_histograms_are_summed_bucket_by_bucket() -> None:
    a = _worker([0.001, 0.004], [4, 16])
    b = _worker([0.03], [8])
    # What crosses the pipe: the collected families, pickled.
    snapshots = [pickle.loads(pickle.dumps(list(m.registry.collect()))) for m in (a, b)]
    service = CollectorRegistry(auto_describe=False)
    service.register(MergedMetrics(lambda: snapshots))
    one = _worker([0.001, 0.004, 0.03], [4, 16, 8])

    merged, expected = _samples(service), _samples(one.registry)
    summed = {k: v for k, v in merged.items() if not k[0].endswith("_created")}
    assert summed == {k: v for k, v in expected.items() if not k[0].endswith("_created")}
    stage = ("edgewatch_stage_seconds_count", (("stage", "preprocess"),))
    assert merged[stage] == 3
    # Every stage series of both workers is there once, not twice.
    counts = [k for k in merged if k[0] == "edgewatch_stage_seconds_count"]
    assert len(counts) == len(STAGES)
    # A _created sample keeps the earliest time, not a sum of timestamps.
    created = ("edgewatch_backend_batch_size_created", ())
    assert merged[created] == min(_samples(a.registry)[created], _samples(b.registry)[created])


def test_no_worker_reported_yet_exposes_nothing() -> None:
    service = CollectorRegistry(auto_describe=False)
    service.register(MergedMetrics(list))
    assert generate_latest(service) == b""
