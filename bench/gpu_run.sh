#!/usr/bin/env bash
# The GPU numbers of bench/README.md, as run on the lent H200 machine (no RTSP server, no
# mosquitto, no pip there). Expects, carried beside the tree in .carry/bench/:
#   whl/      paho-mqtt (and, for BASELINE=1, ultralytics, ultralytics-thop and polars) wheels
#   mosq/     Debian's mosquitto binary + its libraries, behind a wrapper script
#   shared/   videos/*.mp4 and models/yolov8n.{onnx,pt} copied from ../shared
# Usage: bash bench/gpu_run.sh OUTDIR [CAMERA_COUNTS] [SECONDS]
set -euo pipefail
out=${1:?output folder}
counts=${2:-16,32,64,96,128}
seconds=${3:-10}
carry=$PWD/.carry/bench
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$carry"/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PATH=$carry/mosq/bin:$PATH EDGEWATCH_SHARED=$carry/shared
export YOLO_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$out"
{ date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc
  python3 -c 'import torch, torchvision; print("torch", torch.__version__, torchvision.__version__)'
} | tee "$out/machine.txt"
common=(--source file --backend torch --videos "$carry/shared/videos"
        --model "$carry/shared/models/yolov8n.onnx" --warmup 8)
baseline=()
if [[ ${BASELINE:-0} == 1 ]]; then
    baseline=(--baseline ultralytics --baseline-device 0 --baseline-half
              --ultralytics-python "$(command -v python3)")
fi
# The first run on a freshly started machine is slower than the ones after it, whatever the
# tree (cold page cache and clocks): one short run first, thrown away.
python3 -m daemon.cli --log-level warning bench e2e "${common[@]}" --cameras 16 --duration 5 \
    --backend-seconds 0 > "$out/settle.txt" 2>&1
plot=()
python3 -c 'import matplotlib' 2>/dev/null && plot=(--plot "$out/gpu_sweep.png")
python3 -m daemon.cli --log-level warning bench e2e "${common[@]}" "${baseline[@]}" \
    --backend-seconds 3 --sweep "$counts" --duration "$seconds" --json "$out/gpu_e2e.json" "${plot[@]}" \
    --workdir /tmp/bench-work 2>&1 | tee "$out/gpu_e2e.txt"
