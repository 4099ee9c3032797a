#!/usr/bin/env bash
# The GPU numbers of bench/README.md, as run on the lent H100/H200 machine (no RTSP server,
# no mosquitto, no pip there). Expects, carried beside the tree in .carry/bench/:
#   whl/      paho-mqtt, ultralytics, ultralytics-thop wheels (py3-none-any)
#   mosq/     Debian's mosquitto binary + its libraries, behind a wrapper script
#   shared/   videos/*.mp4 and models/yolov8n.{onnx,pt} copied from ../shared
# Usage: bash bench/gpu_run.sh OUTDIR [CAMERA_COUNTS] [SECONDS]
set -euo pipefail
out=${1:?output folder}
counts=${2:-8,16}
seconds=${3:-20}
carry=$PWD/.carry/bench
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    "$carry"/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PATH=$carry/mosq/bin:$PATH EDGEWATCH_SHARED=$carry/shared
export YOLO_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$out"
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc
  python3 -c 'import torch, ultralytics; print("torch", torch.__version__, "ultralytics", ultralytics.__version__)'
} | tee "$out/machine.txt"
python3 -m daemon.cli --log-level warning bench e2e --source file --backend torch \
    --baseline ultralytics --baseline-device 0 --baseline-half \
    --ultralytics-python "$(command -v python3)" --sweep "$counts" --duration "$seconds" \
    --warmup 10 --json "$out/gpu_e2e.json" --plot "$out/gpu_sweep.png" --workdir /tmp/bench-work \
    2>&1 | tee "$out/gpu_e2e.txt"
tar -czf "$out/logs.tgz" -C /tmp/bench-work .
