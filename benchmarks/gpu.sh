#!/usr/bin/env bash
# Every benchmark at the sizes issue 6 asks of a GPU, each under a time limit so one set fits one 10-minute
# device-tool command. Logs go to $OUT (the device tool's output folder) or benchmarks/out/.
# Needs ComfyUI at $COMFYUI_PATH (or ~/ComfyUI) with its requirements; set CUBIQ_PATH for the leading pack.
#
#   bash benchmarks/gpu.sh            the issue-6 set (attention, SDXL 1024 and SD1.5 512 steps, memory, encode)
#   bash benchmarks/gpu.sh dynamic    SDXL 1024 steps with ComfyUI's dynamic VRAM off, then on (issue 12); each
#                                     log's first line says whether it was really on ("dynamic VRAM on") or why
#                                     not (a ComfyUI without it, comfy-aimdo missing)
# Not yet run on a GPU: no device has been lent to this project so far.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
out="${OUT:-out}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
run() {
  local name=$1 limit=$2
  shift 2
  timeout "$limit" python "$@" > "$out/$name.txt" 2>&1
  echo "$name: exit $? ($(tail -n 1 "$out/$name.txt"))"
}
case "${1:-all}" in
  all)
    run attention 60 bench_attention.py
    run step_sdxl_1024 180 bench_forward.py sdxl 128 20
    run step_sd15_512 90 bench_forward.py sd15 64 20
    run memory 90 bench_memory.py
    run encode 60 bench_encode.py 5
    ;;
  dynamic)
    LIKENESS_DYNAMIC_VRAM=off run step_sdxl_1024_dynamic_off 240 bench_forward.py sdxl 128 15
    LIKENESS_DYNAMIC_VRAM=on run step_sdxl_1024_dynamic_on 240 bench_forward.py sdxl 128 15
    ;;
  *)
    echo "usage: gpu.sh [all|dynamic]" >&2
    exit 2
    ;;
esac
