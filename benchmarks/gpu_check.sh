#!/usr/bin/env bash
# bash benchmarks/gpu_check.sh            (CUDA machine; writes $OUT/gpu_check.json, or benchmarks/results/)
#
# Packed-vs-separate logits on each CUDA attention backend, then tokens/s and peak memory per batching
# method for a ~0.55B random-init Llama at 16k tokens per pack, then a 3-step `longalign train` run, then
# (only when 2 or more GPUs are visible; skipped with a message on one) sequence parallelism over 2 GPUs.
# Random-init models only (nothing is downloaded); each part is guarded and written to the JSON file as
# soon as it finishes; the whole check stops starting new work after ~7.3 minutes.
# Options are passed on to benchmarks/gpu_check.py, e.g. --pack-tokens 32768 --steps 8.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
export LONGALIGN_CACHE="${LONGALIGN_CACHE:-$OUT/.cache}"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true) > "$OUT/gpu_info.txt" 2>&1
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  >> "$OUT/gpu_info.txt" 2>&1 || true
NGPU=$(python -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "${NGPU:-0}" -lt 2 ]; then
  echo "sequence-parallel check will be skipped: it needs 2 GPUs, ${NGPU:-0} visible"
fi
timeout 465 python benchmarks/gpu_check.py --out "$OUT/gpu_check.json" "$@" 2>&1 | tee "$OUT/gpu_check.log"
rc=${PIPESTATUS[0]}
echo "gpu_check.py exit code $rc (124 = stopped by the time limit; finished parts are in $OUT/gpu_check.json)"
exit "$rc"
