#!/usr/bin/env bash
# benchmarks/gpu_check.sh: the CUDA checks in one go (prepared on CPU; run on a GPU machine).
#
#   bash benchmarks/gpu_check.sh          # ~6 minutes on one A100/H100-class GPU
#
# 1. the CUDA-marked tests: bf16 training, QLoRA on bitsandbytes' CUDA kernels, and the
#    plan against torch.cuda.max_memory_allocated on SmolLM2 (lora, full, qlora);
# 2. the plan for this GPU beside a real run (tunesmith plan --device cuda --calibrate 5);
# 3. benchmarks/vs_trl.py on the GPU (tunesmith side and TRL side, same data).
# Copy the printed figures into docs/plan.md ("Measured on CUDA").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print(torch.cuda.get_device_name(0))"

echo "== CUDA-marked tests"
timeout 240 $PY -m pytest -q -m cuda tests/plan/test_cuda.py -s -p no:cacheprovider

echo "== plan on this GPU, calibrated"
DATA=examples/data/support_requests.train.jsonl
timeout 120 $PY -m tunesmith.cli plan --data "$DATA" --device cuda --calibrate 5 \
  --set output.dir=/tmp/gpu-check-runs

echo "== vs_trl on the GPU"
timeout 200 $PY benchmarks/vs_trl.py --examples 64
