"""``edgewatch detect --model M.onnx IMAGE_OR_DIR... --json OUT``: run still images through the
daemon's own pre/post-processing (to sanity-check a model, and to compare with Ultralytics)."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from daemon.commands.exit_codes import EXIT_FAILURE, EXIT_OK, usage_error
from daemon.config.model import BackendKind


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "detect",
        help="detect objects in still images",
        description="Detect objects in images (files or folders) and write them as JSON.",
    )
    parser.add_argument("--model", required=True, type=Path, help="YOLOv8 ONNX model")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE_OR_DIR")
    parser.add_argument("--json", required=True, type=Path, metavar="OUT", help="output file")
    parser.add_argument("--conf", type=_unit_float, default=0.25, help="confidence threshold")
    parser.add_argument("--iou", type=_unit_float, default=0.7, help="NMS IoU threshold")
    parser.add_argument("--max-det", type=int, default=300, help="detections per image")
    parser.add_argument("--imgsz", type=int, default=640, help="input size for dynamic models")
    parser.add_argument(
        "--backend",
        default=BackendKind.ONNXRUNTIME.value,
        choices=[k.value for k in BackendKind],
    )
    parser.add_argument(
        "--square",
        action="store_true",
        help="letterbox every image to the full input size, exactly as the daemon does "
        "(default: Ultralytics predict's minimal padding, where the model allows it)",
    )
    parser.add_argument(
        "--providers",
        default="CPUExecutionProvider",
        help="comma-separated onnxruntime execution providers, in priority order",
    )
    parser.set_defaults(handler=_detect)


def _unit_float(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within 0..1, got {text}")
    return value


def _detect(args: argparse.Namespace) -> int:
    from daemon.config.model import ModelConfig
    from daemon.infer.backend import BackendError
    from daemon.infer.factory import load_backend
    from daemon.progress import Progress
    from daemon.publish.payloads import detection_records
    from daemon.stills import ImageError, detect_images, list_images

    config = ModelConfig(
        path=args.model,
        backend=BackendKind(args.backend),
        input_size=args.imgsz,
        max_batch=1,
        providers=tuple(p.strip() for p in args.providers.split(",") if p.strip()),
    )
    try:
        paths = list_images(args.images)
        backend = load_backend(config)
    except (ImageError, BackendError) as err:
        return usage_error(f"edgewatch detect: {err}")
    records: list[dict[str, object]] = []
    counts: Counter[str] = Counter()
    try:
        with Progress("detecting", total=len(paths), unit="img") as progress:
            for path, dets in detect_images(
                backend, paths, args.conf, args.iou, args.max_det, rect=not args.square
            ):
                found = detection_records(dets, backend.class_names)
                counts.update(str(d["name"]) for d in found)
                records.append({"image": path.name, "detections": found})
                progress.advance()
    except ImageError as err:
        return usage_error(f"edgewatch detect: {err}")
    except BackendError as err:
        print(f"edgewatch detect: {err}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        backend.close()
    try:
        # One image per line: readable and diffable without spreading every box over 6 lines.
        args.json.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    except OSError as err:
        return usage_error(f"edgewatch detect: cannot write {args.json}: {err.strerror}")
    top = ", ".join(f"{name} {n}" for name, n in counts.most_common(5))
    print(
        f"{len(records)} images, {counts.total()} detections ({backend.name})"
        + (f": {top}" if top else "")
        + f" -> {args.json}"
    )
    return EXIT_OK
