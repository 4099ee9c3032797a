"""Per-stage timing: the upload and download stages next to the others in
``edgewatch_stage_seconds``, observed only for a backend that splits its call, and read back
by ``bench e2e`` in path order."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from bench.e2e import backend_totals, stage_means
from daemon.infer.backend import TransferTimes
from daemon.monitor.metrics import STAGES, DaemonMetrics
from tests.harness.daemon import metric_value


def _scrape(metrics: DaemonMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def _stage(text: str, kind: str, stage: str) -> float | None:
    return metric_value(text, f"edgewatch_stage_seconds_{kind}", f'stage="{stage}"')


def test_every_stage_is_exported_in_path_order() -> None:
    text = _scrape(DaemonMetrics())
    for stage in STAGES:
        assert _stage(text, "count", stage) == 0.0, stage
    assert STAGES.index("preprocess") < STAGES.index("upload") < STAGES.index("inference")
    assert STAGES.index("inference") < STAGES.index("download") < STAGES.index("decode_nms")


def test_a_backend_without_a_split_observes_neither_transfer() -> None:
    metrics = DaemonMetrics()
    metrics.observe_inference(0.25, 4, None)
    text = _scrape(metrics)
    assert _stage(text, "count", "inference") == 1.0
    assert _stage(text, "sum", "inference") == 0.25
    for stage in ("upload", "download"):
        assert _stage(text, "count", stage) == 0.0, stage
    assert metric_value(text, "edgewatch_backend_batch_latency_seconds_sum") == 0.25
    assert metric_value(text, "edgewatch_backend_batch_size_sum") == 4.0


def test_a_split_call_observes_upload_compute_and_download() -> None:
    metrics = DaemonMetrics()
    metrics.observe_inference(0.0125, 8, TransferTimes(0.003, 0.007, 0.0015))
    text = _scrape(metrics)
    assert _stage(text, "sum", "upload") == 0.003
    assert _stage(text, "sum", "inference") == 0.007
    assert _stage(text, "sum", "download") == 0.0015
    # The batch histogram keeps the whole call, host overhead included.
    assert metric_value(text, "edgewatch_backend_batch_latency_seconds_sum") == 0.0125


def test_bench_e2e_reports_the_transfer_stages_beside_the_others() -> None:
    metrics = DaemonMetrics()
    before = backend_totals(lambda: _scrape(metrics))
    for _ in range(2):
        metrics.observe_inference(0.0125, 8, TransferTimes(0.003, 0.007, 0.0015))
        metrics.observe_stage("preprocess", 0.002)
        metrics.observe_stage("decode_nms", 0.001)
    means = stage_means(before, backend_totals(lambda: _scrape(metrics)))
    assert list(means) == ["preprocess", "upload", "inference", "download", "decode_nms"]
    assert means["upload"] == pytest.approx(3.0)
    assert means["download"] == pytest.approx(1.5)


def test_bench_e2e_leaves_out_transfers_a_cpu_backend_never_had() -> None:
    metrics = DaemonMetrics()
    before = backend_totals(lambda: _scrape(metrics))
    metrics.observe_inference(0.25, 4, None)
    means = stage_means(before, backend_totals(lambda: _scrape(metrics)))
    assert means == {"inference": 250.0}
