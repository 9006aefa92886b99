#!/usr/bin/env bash
# bash benchmarks/gpu_check.sh [options of benchmarks/gpu_check.py]
#
# The GPU check on a CUDA machine: equality of packed and separate logits on every CUDA attention backend,
# the memory planner against the measured peak (and the longest pack that trains), a 3-step `longalign train`
# run, tokens/s per batching method, and (two or more GPUs only) sequence parallelism. Random-init models only
# (nothing is downloaded). Each part has its own time budget (7.5 minutes in all); the JSON file is rewritten
# after every unit of work, and this wrapper stops the check at 8 minutes whatever happens.
# Writes $OUT/gpu_check.json, $OUT/gpu_check.log and $OUT/gpu_info.txt (OUT defaults to benchmarks/results).
# Rehearsal without a GPU: python benchmarks/gpu_check.py --device cpu --tiny
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export LONGALIGN_CACHE="${LONGALIGN_CACHE:-$OUT/.cache}"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true) > "$OUT/gpu_info.txt" 2>&1
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  >> "$OUT/gpu_info.txt" 2>&1 || true
timeout 480 python benchmarks/gpu_check.py --out "$OUT/gpu_check.json" "$@" 2>&1 | tee "$OUT/gpu_check.log"
rc=${PIPESTATUS[0]}
echo "gpu_check.py exit code $rc (0: every part passed; 1: a part failed; 124: stopped at 8 minutes; the finished parts are in $OUT/gpu_check.json)"
exit "$rc"
