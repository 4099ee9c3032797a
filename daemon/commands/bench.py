"""``edgewatch bench backend|e2e|track``: the benchmarks (see bench/README.md).

The benchmark code (``bench/``) and the local broker and RTSP server it starts live in the
source checkout, not in the installed package: each handler imports them when it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from daemon.commands.config_file import load_or_report
from daemon.commands.exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, usage_error
from daemon.commands.run import serve_reporting

_REPO = Path(__file__).resolve().parents[2]
# Same override as the tests: the shared data folder beside the checkout unless told otherwise.
_SHARED = Path(os.environ.get("EDGEWATCH_SHARED", _REPO.parent / "shared"))
_DEFAULT_ONNX = _SHARED / "models" / "yolov8n.onnx"
_DEFAULT_PT = _SHARED / "models" / "yolov8n.pt"
_DEFAULT_VIDEOS = _SHARED / "videos"
_DEFAULT_ULTRA_PY = _REPO / ".venv-ultra" / "bin" / "python"


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _hw(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        h, w = (int(parts[0]), int(parts[-1]))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW or S, got {text!r}") from None
    return h, w


def register(sub: Any) -> None:
    """Add ``bench`` and its kinds."""
    bench: argparse.ArgumentParser = sub.add_parser(
        "bench", help="benchmarks: backend ceiling, end-to-end vs Ultralytics",
        description="Reproducible benchmarks; see bench/README.md.",
    )  # fmt: skip
    kinds = bench.add_subparsers(dest="bench_command", required=True, metavar="KIND")
    backends = [k.value for k in _backend_kinds()]

    b = kinds.add_parser("backend", help="bare backend images/s and latency per batch size")
    b.add_argument("--model", type=Path, default=_DEFAULT_ONNX)
    b.add_argument("--backend", choices=backends, default="onnxruntime")
    b.add_argument("--batch", type=_int_list, default=[1, 4, 8], help="e.g. 1,4,8")
    b.add_argument("--seconds", type=float, default=5.0, help="timed seconds per point")
    b.add_argument("--imgsz", type=_hw, default=None, help="input HxW (default: the model's)")
    b.add_argument("--videos", type=Path, default=_DEFAULT_VIDEOS, help="real frames from here")
    b.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads")
    b.add_argument("--json", type=Path, default=None, help="write the results here")
    b.set_defaults(handler=_from_checkout(_backend))

    e = kinds.add_parser("e2e", help="end-to-end multi-camera run, optionally vs Ultralytics")
    e.add_argument("--cameras", type=int, default=4)
    e.add_argument("--sweep", type=_int_list, default=None, help="camera counts, e.g. 1,2,4,8,16")
    e.add_argument("--duration", type=float, default=30.0, help="measured seconds per run")
    e.add_argument(
        "--warmup", type=float, default=5.0, help="seconds after every camera delivered a result"
    )
    e.add_argument("--model", type=Path, default=_DEFAULT_ONNX, help="our ONNX model")
    e.add_argument("--pt-model", type=Path, default=_DEFAULT_PT, help="Ultralytics weights")
    e.add_argument("--backend", choices=backends, default="onnxruntime")
    e.add_argument("--max-batch", type=int, default=None, help="default: cameras, at most 16")
    e.add_argument(
        "--inflight", type=int, default=None, help="GPU batches in flight (model.inflight_batches)"
    )
    e.add_argument("--workers", type=int, default=None, help="pipeline processes (model.workers)")
    e.add_argument(
        "--decoder", choices=["ffmpeg", "nvdec"], default="ffmpeg", help="every camera's decoder"
    )
    e.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads")
    e.add_argument("--source", choices=["rtsp", "file"], default="rtsp")
    e.add_argument("--videos", type=Path, default=_DEFAULT_VIDEOS)
    e.add_argument("--baseline", choices=["ultralytics"], default=None)
    e.add_argument("--ultralytics-python", type=Path, default=_DEFAULT_ULTRA_PY)
    e.add_argument("--baseline-device", default="cpu", help="Ultralytics device: cpu, 0, ...")
    e.add_argument("--baseline-half", action="store_true", help="Ultralytics FP16 (GPU)")
    e.add_argument("--backend-seconds", type=float, default=5.0, help="0 skips the ceiling")
    e.add_argument("--tracking", action="store_true", help="our daemon with tracking on")
    e.add_argument("--json", type=Path, default=None)
    e.add_argument("--plot", type=Path, default=None, help="PNG of a --sweep")
    e.add_argument("--workdir", type=Path, default=None, help="keep configs and logs here")
    e.set_defaults(handler=_from_checkout(_e2e))

    t = kinds.add_parser("track", help="object tracker cost per camera-frame")
    t.add_argument("--boxes", type=int, default=50, help="objects in view")
    t.add_argument("--frames", type=int, default=2000)
    t.add_argument("--cameras", type=int, default=1, help="cameras per batch (own scenes)")
    t.add_argument("--json", type=Path, default=None)
    t.set_defaults(handler=_from_checkout(_track))

    d = kinds.add_parser("demo", help="the sample cameras against a local broker (make demo)")
    d.add_argument("--config", type=Path, default=_REPO / "configs" / "demo.yaml")
    d.add_argument("--duration", type=float, default=60.0, help="seconds to run")
    d.set_defaults(handler=_from_checkout(_demo))


def _from_checkout(
    handler: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """``handler``, refused with a usage error where ``bench/`` is not importable (an
    installed package without the source checkout)."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        if find_spec("bench") is None:
            return usage_error("edgewatch bench: the benchmarks run from a source checkout")
        return handler(args)

    return run


def _demo(args: argparse.Namespace) -> int:
    from bench.demo import run_demo

    config = load_or_report(args.config)
    if config is None:
        return EXIT_USAGE
    return serve_reporting(lambda: run_demo(config, args.duration))


def _track(args: argparse.Namespace) -> int:
    from bench.e2e import write_json
    from bench.track import render_track_table, run_track_bench, track_report_json

    if args.boxes < 1 or args.frames < 10 or args.cameras < 1:
        return usage_error(
            "edgewatch bench track: need --boxes >= 1, --frames >= 10 and --cameras >= 1"
        )
    rows = run_track_bench(args.boxes, args.frames, args.cameras)
    print(render_track_table(rows))
    if args.json:
        write_json(args.json, track_report_json(rows))
    return EXIT_OK


def _backend_kinds() -> list[Any]:
    from daemon.config.model import BackendKind

    return list(BackendKind)


def _videos(folder: Path) -> list[Path]:
    videos = sorted(folder.glob("*.mp4")) if folder.is_dir() else []
    if not videos:
        print(f"edgewatch bench: no .mp4 videos in {folder}", file=sys.stderr)
    return videos


def _backend(args: argparse.Namespace) -> int:
    from bench.backend import render_backend_table, run_backend_bench
    from bench.e2e import write_json
    from daemon.config.model import BackendKind
    from daemon.infer.backend import BackendError

    videos = _videos(args.videos)
    if not videos:
        return EXIT_USAGE
    try:
        report = run_backend_bench(
            args.model, BackendKind(args.backend), args.batch, args.seconds, videos,
            input_hw=args.imgsz, intra_op_threads=args.threads,
        )  # fmt: skip
    except BackendError as err:
        return usage_error(f"edgewatch bench: model: {err}")
    print(render_backend_table(report))
    if args.json:
        write_json(args.json, report.to_json())
    return EXIT_OK


def _e2e(args: argparse.Namespace) -> int:
    from bench.e2e import BenchError, E2EOptions, render_e2e_table, run_e2e, write_json
    from daemon.config.model import BackendKind

    videos = _videos(args.videos)
    if not videos:
        return EXIT_USAGE
    for path in (args.model, *([args.pt_model] if args.baseline else [])):
        if not path.is_file():
            return usage_error(f"edgewatch bench: model file not found: {path}")
    counts = args.sweep or [args.cameras]
    base = E2EOptions(
        cameras=counts[0], duration_s=args.duration, warmup_s=args.warmup,
        onnx_model=args.model.resolve(), pt_model=args.pt_model.resolve(),
        videos=tuple(v.resolve() for v in videos), backend=BackendKind(args.backend),
        max_batch=args.max_batch, inflight_batches=args.inflight, workers=args.workers,
        decoder=args.decoder, source=args.source,
        baseline=args.baseline,
        ultralytics_python=args.ultralytics_python, baseline_device=args.baseline_device,
        baseline_half=args.baseline_half, backend_seconds=args.backend_seconds,
        intra_op_threads=args.threads, tracking=args.tracking,
    )  # fmt: skip
    reports = []
    try:
        for count in counts:
            workdir = args.workdir / f"cams{count}" if args.workdir else None
            report = run_e2e(dataclasses.replace(base, cameras=count), workdir)
            print(render_e2e_table(report), flush=True)
            reports.append(report)
    except BenchError as err:
        print(f"edgewatch bench: {err}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        data: dict[str, object] = reports[0].to_json() if len(reports) == 1 else {
            "kind": "e2e-sweep", "runs": [r.to_json() for r in reports]
        }  # fmt: skip
        write_json(args.json, data)
    if args.plot:
        from bench.plot import plot_sweep

        plot_sweep(reports, args.plot)
    return EXIT_OK
