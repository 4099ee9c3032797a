"""Generate the Ultralytics reference fixtures in ``tests/data/`` (needs ultralytics + torch).

Not part of the test suite: run it wherever the ``export`` extra is installed (a GPU box is
not needed; the committed fixtures were made on CPU so they compare with our CPU path)::

    YOLO_OFFLINE=1 python tests/reference/generate_ultralytics.py \
        --shared ../shared --out tests/data --device cpu

``--shared`` is a folder with ``models/yolov8n.pt``, ``models/yolov8n.onnx``,
``datasets/coco_eval/{images,labels}`` and ``datasets/coco80.names`` (the layout of
``../shared``). It writes:

* ``ultralytics_predict_coco_eval.json``: ``YOLO.predict`` of yolov8n.pt on every coco_eval
  image at conf 0.25 / iou 0.7 / imgsz 640, once with Ultralytics' default minimal-padding
  ("rect") letterbox and once with the square 640x640 letterbox the daemon uses.
* ``ultralytics_val_coco_eval.json``: ``YOLO.val`` metrics (mAP50-95, mAP50, per-class AP)
  for yolov8n.pt and yolov8n.onnx under several batch/rect settings.
* ``ultralytics_val_predictions_coco_eval.json``: the predictions ``val`` itself scored
  (conf 0.001, multi-label NMS, its dataset loader's resize) in the square batch-1 pt
  run, whose preprocessing is closest to the daemon's: for debugging the evaluator.

Rows are compact: ``[x1, y1, x2, y2, confidence, class_id]`` in original image pixels.

The committed fixtures were made on a CUDA box without Ultralytics installed (the 2-core dev
machine has no CPU PyTorch build): the ultralytics 8.4.190 wheel was installed with
``pip install --no-deps --target`` (its other needs were already there; thop, polars and
ultralytics-platform are optional for predict/val), ``YOLO_OFFLINE=1`` so nothing is
fetched, and ``--device cpu`` (torch 2.11.0+cu130, Python 3.12.3): each fixture's ``meta``
records this. The whole run takes about 40 s on 16 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

IMGSZ = 640
PREDICT_CONF = 0.25
VAL_CONF = 0.001
IOU = 0.7
MAX_DET = 300


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def _meta(args: argparse.Namespace, models: list[Path]) -> dict[str, Any]:
    import torch
    import ultralytics

    return {
        "generator": "tests/reference/generate_ultralytics.py",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "ultralytics": ultralytics.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": args.device,
        "device_name": torch.cuda.get_device_name(0)
        if args.device != "cpu" and torch.cuda.is_available()
        else _cpu_name(),
        "models": {m.name: {"sha256": _sha256(m)} for m in models},
        "dataset": "coco_eval (first 128 COCO val2017 images, YOLO labels)",
        "row_format": ["x1", "y1", "x2", "y2", "confidence", "class_id"],
    }


def _rows(result: Any) -> list[list[float]]:
    boxes = result.boxes
    xyxy = boxes.xyxy.cpu().numpy().tolist()
    conf = boxes.conf.cpu().numpy().tolist()
    cls = boxes.cls.cpu().numpy().tolist()
    return [
        [round(v, 2) for v in b] + [round(s, 5), int(c)]
        for b, s, c in zip(xyxy, conf, cls, strict=True)
    ]


def _predict(
    model: Any, images: list[Path], conf: float, rect: bool, device: str
) -> dict[str, Any]:
    out: dict[str, list[list[float]]] = {}
    for path in images:
        (result,) = model.predict(
            str(path),
            conf=conf,
            iou=IOU,
            imgsz=IMGSZ,
            max_det=MAX_DET,
            rect=rect,
            device=device,
            verbose=False,
        )
        out[path.name] = _rows(result)
    settings = {
        "conf": conf,
        "iou": IOU,
        "imgsz": IMGSZ,
        "max_det": MAX_DET,
        "rect": rect,
        "batch": 1,
        "letterbox": "minimal padding to stride 32" if rect else "square 640",
    }
    return {"settings": settings, "num_detections": sum(map(len, out.values())), "images": out}


def _val(
    model_path: Path,
    data_yaml: Path,
    *,
    batch: int,
    rect: bool | None,
    device: str,
    project: Path,
    want_preds: bool,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    from ultralytics import YOLO

    model = YOLO(str(model_path), task="detect")
    captured: dict[str, Any] = {}

    def on_val_end(validator: Any) -> None:
        captured["jdict"] = list(validator.jdict)
        captured["class_map"] = list(validator.class_map)
        captured["args"] = {
            k: getattr(validator.args, k, None)
            for k in ("imgsz", "batch", "conf", "iou", "rect", "half", "max_det", "device")
        }

    model.add_callback("on_val_end", on_val_end)
    kwargs: dict[str, Any] = {
        "data": str(data_yaml),
        "imgsz": IMGSZ,
        "conf": VAL_CONF,
        "iou": IOU,
        "batch": batch,
        "device": device,
        "plots": False,
        "save_json": want_preds,
        "project": str(project),
        "name": f"{model_path.stem}_{model_path.suffix[1:]}_b{batch}_{rect}",
        "exist_ok": True,
        "verbose": False,
    }
    if rect is not None:
        kwargs["rect"] = rect
    metrics = model.val(**kwargs)
    box = metrics.box
    names = metrics.names
    per_class = {
        str(int(c)): {
            "name": names[int(c)],
            "ap50_95": round(float(box.all_ap[i].mean()), 5),
            "ap50": round(float(box.all_ap[i, 0]), 5),
        }
        for i, c in enumerate(box.ap_class_index)
    }
    run = {
        "model": model_path.name,
        "settings_requested": {"batch": batch, "rect": "default" if rect is None else rect},
        "settings_effective": captured.get("args", {}),
        "map50_95": round(float(box.map), 5),
        "map50": round(float(box.map50), 5),
        "map75": round(float(box.map75), 5),
        "precision": round(float(box.mp), 5),
        "recall": round(float(box.mr), 5),
        "per_class": per_class,
        "speed_ms_per_image": {k: round(float(v), 2) for k, v in metrics.speed.items()},
    }
    preds = None
    if want_preds and "jdict" in captured:
        class_map = captured["class_map"]
        images: dict[str, list[list[float]]] = {}
        for d in captured["jdict"]:
            x, y, w, h = d["bbox"]
            images.setdefault(d["file_name"], []).append(
                [
                    round(x, 2),
                    round(y, 2),
                    round(x + w, 2),
                    round(y + h, 2),
                    d["score"],
                    class_map.index(d["category_id"]),
                ]
            )
        preds = {
            "settings": {
                **run["settings_requested"],
                **captured["args"],
                "nms": "multi_label=True (val)",
            },
            "model": model_path.name,
            "images": images,
        }
    return run, preds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-val", action="store_true")
    args = parser.parse_args()

    from ultralytics import YOLO

    pt = args.shared / "models" / "yolov8n.pt"
    onnx = args.shared / "models" / "yolov8n.onnx"
    coco = (args.shared / "datasets" / "coco_eval").resolve()
    names = (args.shared / "datasets" / "coco80.names").read_text().split("\n")
    names = [n for n in names if n.strip()]
    images = sorted((coco / "images").glob("*.jpg"))
    args.out.mkdir(parents=True, exist_ok=True)
    meta = _meta(args, [pt, onnx])

    model = YOLO(str(pt), task="detect")
    predict = {
        "meta": {**meta, "what": "YOLO.predict of yolov8n.pt, one image at a time"},
        "predictions": _predict(model, images, PREDICT_CONF, True, args.device),
        "predictions_square": _predict(model, images, PREDICT_CONF, False, args.device),
    }
    (args.out / "ultralytics_predict_coco_eval.json").write_text(json.dumps(predict))
    print("predict done", predict["predictions"]["num_detections"], flush=True)
    if args.skip_val:
        return 0

    work = Path(tempfile.mkdtemp(prefix="ew_val_"))
    data_yaml = work / "coco_eval.yaml"
    data_yaml.write_text(
        json.dumps(
            {"path": str(coco), "train": "images", "val": "images", "names": dict(enumerate(names))}
        )
    )
    runs: list[dict[str, Any]] = []
    val_preds: dict[str, Any] = {}
    plan: list[tuple[Path, int, bool | None, str | None]] = [
        (pt, 16, None, None),
        (pt, 1, None, None),
        (pt, 1, False, "pt_square_b1"),
        (onnx, 16, None, None),
        (onnx, 1, None, None),
        (onnx, 1, False, None),
    ]
    for model_path, batch, rect, preds_key in plan:
        try:
            run, preds = _val(
                model_path,
                data_yaml,
                batch=batch,
                rect=rect,
                device=args.device,
                project=work / "runs",
                want_preds=preds_key is not None,
            )
        except Exception as exc:  # record and go on: one failed setting must not lose the rest
            runs.append(
                {"model": model_path.name, "batch": batch, "rect": rect, "error": repr(exc)}
            )
            print("val failed", model_path.name, batch, rect, repr(exc), flush=True)
            continue
        runs.append(run)
        if preds is not None and preds_key is not None:
            val_preds[preds_key] = preds
        print("val", model_path.name, batch, rect, run["map50_95"], run["map50"], flush=True)

    common = {
        "imgsz": IMGSZ,
        "conf": VAL_CONF,
        "iou": IOU,
        "max_det": MAX_DET,
        "plots": False,
        "split": "val = coco_eval/images, labels from coco_eval/labels",
    }
    (args.out / "ultralytics_val_coco_eval.json").write_text(
        json.dumps(
            {"meta": {**meta, "what": "YOLO.val metrics", "settings_common": common}, "runs": runs},
            indent=1,
        )
    )
    (args.out / "ultralytics_val_predictions_coco_eval.json").write_text(
        json.dumps(
            {
                "meta": {**meta, "what": "predictions val scored in its square batch-1 pt run"},
                **val_preds,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
