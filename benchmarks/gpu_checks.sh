#!/usr/bin/env bash
# The GPU checks in one call (torch and numpy only): the training-loop benchmark, then a
# 20,000-iteration architecture 1 training on a Flowers-17 64 px tensor cache, timed end to end.
#
#   bash benchmarks/gpu_checks.sh data/flowers17/cache/<hash> OUT_DIR
set -uo pipefail
cache=$1 out=$2
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
python3 benchmarks/train.py 2>&1 | tee "$out/benchmark.txt"
start=$(date +%s%N)
python3 -m flower_pipeline.training --cache "$cache" --arch arch1 --out /tmp/arch1-20k --no-resume 2>&1 \
    | tee "$out/training.txt"
echo "wall: $(( ($(date +%s%N) - start) / 1000000 )) ms (process start to exit)" | tee -a "$out/training.txt"
cp /tmp/arch1-20k/final_grid.png /tmp/arch1-20k/curves.png /tmp/arch1-20k/history.json "$out/"
