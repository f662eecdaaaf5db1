#!/usr/bin/env bash
# Everything that needs a GPU (for the lent H100/H200; see benchmarks/RESULTS.md):
#   bash benchmarks/gpu_suite.sh [OUTDIR] [STEP ...]
# STEP: setup, tests, kernels, e2e-smollm2 (fp32), e2e-smollm2-bf16, e2e-llama3-8b, incremental (Stage 2 from the first
# changed layer, batched: 16 candidates per forward, on vs off), stage2-dtype (bf16 prefixes vs fp32: same sets,
# Stage 2 seconds), stage1-dtype (the certified bf16 Stage 1 vs fp32: same answers, certified or not, seconds;
# default: all, in that order). The device tool allows
# 600 s per command: run `setup tests kernels` in one call and each e2e step in its own (prefixed by `setup` when
# the machine went cold between calls: it keeps build outputs only while warm).
# setup builds the CUDA ops (`pip install --no-build-isolation --no-deps -e .`, ACHILLES_FAST_BUILD_CUDA=1); if that
# fails, the ops run their PyTorch references on CPU and the Triton kernels on CUDA (backend_info() says which).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-/tmp/achilles_gpu}}
shift || true
STEPS=${*:-setup tests kernels e2e-smollm2 e2e-smollm2-bf16 e2e-llama3-8b incremental stage2-dtype stage1-dtype}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__, torch.cuda.get_device_name())"
for step in $STEPS; do
  echo "== $step ($(date -u +%H:%M:%S))"
  case $step in
    setup)
      nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
      ACHILLES_FAST_BUILD_CUDA=1 python3 -m pip install -q --no-build-isolation --no-deps --no-index -e . 2>&1 | tail -3
      python3 -c "import achilles_fast.ops as o; print(o.backend_info())" ;;
    tests)
      python3 -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" | tail -15 ;;
    kernels)
      python3 benchmarks/bench_kernels.py --device cuda --models all --out "$OUT/bench_kernels.csv" 2>&1 \
        | tee "$OUT/bench_kernels.log" | tail -40 ;;
    e2e-smollm2)
      python3 benchmarks/bench_find_critical.py --random smollm2-135m --device cuda --dtype float32 --tokens 115 \
        --k 100 --max-neurons 100 --repeats 3 --json "$OUT/e2e_smollm2.json" 2>&1 | tee "$OUT/e2e_smollm2.log" | tail -12 ;;
    e2e-smollm2-bf16)
      python3 benchmarks/bench_find_critical.py --random smollm2-135m --device cuda --dtype bfloat16 --tokens 115 \
        --k 100 --max-neurons 100 --repeats 3 --json "$OUT/e2e_smollm2_bf16.json" 2>&1 | tee "$OUT/e2e_smollm2_bf16.log" | tail -12 ;;
    e2e-llama3-8b)
      python3 benchmarks/bench_find_critical.py --random llama3-8b --device cuda --dtype bfloat16 --tokens 128 \
        --k 100 --max-neurons 100 --repeats 3 --json "$OUT/e2e_llama3_8b.json" 2>&1 | tee "$OUT/e2e_llama3_8b.log" | tail -12 ;;
    incremental)
      python3 benchmarks/search_strategies.py --model smollm2-135m --device cuda --scopes down_proj,paper \
        --strategies first,linear --batch-sizes 16 --incremental both --repeats 3 --out "$OUT/incremental_cuda.json" \
        2>&1 | tee "$OUT/incremental_cuda.log" | tail -12 ;;
    stage2-dtype)
      python3 benchmarks/stage2_dtype_agreement.py --models stories,smollm2 --device cuda \
        --out "$OUT/stage2_dtype_cuda.json" 2>&1 | tee "$OUT/stage2_dtype_cuda.log" | tail -12 ;;
    stage1-dtype)
      python3 benchmarks/stage2_dtype_agreement.py --stage 1 --models stories,smollm2 --device cuda \
        --out "$OUT/stage1_dtype_cuda.json" 2>&1 | tee "$OUT/stage1_dtype_cuda.log" | tail -12 ;;
    *) echo "unknown step $step (setup, tests, kernels, e2e-smollm2, e2e-smollm2-bf16, e2e-llama3-8b, incremental, stage2-dtype, stage1-dtype)"
       exit 2 ;;
  esac
done
