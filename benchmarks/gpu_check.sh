#!/bin/bash
# The device checks of issue 14 in one call (a CUDA machine; nothing installed: the repo on PYTHONPATH).
# Writes under ${OUT:-runs/gpu}: the throughput suite's JSON and log, and a CUDA smoke bench.
# SELECT (a pytest -k expression) limits the suite to some rows, e.g.
#   SELECT="hundred_samples and bf16" bash benchmarks/gpu_check.sh
set -o pipefail
OUT=${OUT:-runs/gpu}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
timeout "${SUITE_TIMEOUT:-420}" python3 -m pytest benchmarks/test_throughput.py -p no:cacheprovider -s -q \
    ${SELECT:+-k "$SELECT"} --benchmark-json "$OUT/throughput-cuda.json" 2>&1 | tee "$OUT/throughput-cuda.log"
[ -n "$SELECT" ] && exit 0
timeout 120 python3 -m ambiseg bench --methods atfm,cimd --preset smoke --device cuda --no-progress \
    --out "$OUT/smoke-cuda" 2>&1 | tail -20 | tee "$OUT/smoke-cuda.log"
