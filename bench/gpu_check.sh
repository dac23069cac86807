#!/usr/bin/env bash
# The device check for a session lent a GPU, as one command sized to its 15 minutes (bench/README.md):
# here first `bash bench/gpu_wheels.sh`; then device run(carry=[".whl"], timeout_s=540,
# command="bash bench/gpu_check.sh"). It installs the carried wheels, runs the CUDA tests (every packed-attention
# kernel against per-span SDPA), then bench/gpu.py's rows; logs and the table land in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider -rs -m cuda tests/unit 2>&1 | grep -v DEBUG | tee "$OUT/tests.log" | tail -15
timeout 420 python3 bench/gpu.py --samples "${SAMPLES:-512}" --out "$OUT/gpu_last_run.md" 2>&1 | tee "$OUT/bench.log" | grep -v "Writing model" | tail -25
