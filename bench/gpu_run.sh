#!/usr/bin/env bash
# The GPU numbers of bench/README.md, as run on the lent H200 machine (no RTSP server, no
# mosquitto, no pip there). Expects, carried beside the tree in .carry/bench/:
#   whl/      paho-mqtt (and, for BASELINE=1, ultralytics and ultralytics-thop) wheels
#   mosq/     Debian's mosquitto binary + its libraries, behind a wrapper script
#   shared/   videos/*.mp4 and models/yolov8n.{onnx,pt} copied from ../shared
# and, for DECODER=nvdec, PyNvVideoCodec unpacked into /tmp/site by an earlier call (its wheel
# and the rest do not fit one call's 64 MiB).
# Usage: [WORKERS=2] [DECODER=ffmpeg|nvdec] [BASELINE=1] bash bench/gpu_run.sh OUTDIR [CAMERA_COUNTS] [SECONDS]
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
# One invocation per camera count: a device call is too short for every count in one, and
# a count that runs past its limit then costs only its own point.
runs=()
for count in ${counts//,/ }; do
    timeout 300 python3 -m daemon.cli --log-level warning bench e2e "${common[@]}" "${baseline[@]}" \
        --workers "${WORKERS:-2}" --decoder "${DECODER:-ffmpeg}" --backend-seconds 3 --cameras "$count" --duration "$seconds" \
        --json "$out/gpu_e2e_$count.json" --workdir "/tmp/bench-work-$count" 2>&1 \
        | tee "$out/gpu_e2e_$count.txt" || true
    [[ -f $out/gpu_e2e_$count.json ]] && runs+=("$out/gpu_e2e_$count.json")
done
if python3 -c 'import matplotlib' 2>/dev/null && (( ${#runs[@]} )); then
    python3 -m bench.plot "$out/gpu_sweep.png" "${runs[@]}"
fi
