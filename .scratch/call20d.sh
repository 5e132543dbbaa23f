#!/usr/bin/env bash
set -uo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
cmake -S native -B build-gpu -G Ninja -DTENSOR_OPS_CUDA=ON -DTENSOR_OPS_TESTS=OFF -DCMAKE_CUDA_ARCHITECTURES=90a > $OUT/cmake.log 2>&1 && cmake --build build-gpu > $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }
export INFERENCE_PIO_LIB=$PWD/build-gpu/libtensor_ops.so PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH=$PWD/core:$PWD/plugins/qwen3_0_6b:$PWD/plugins/qwen3_4b_instruct_2507:$PWD/plugins/qwen3_coder_30b
timeout 200 python3 -m pytest -q -p no:cacheprovider --timeout 120 tests/gpu/test_cuda_moe_model.py tests/gpu/test_cuda_model.py 2>&1 | tail -4
echo "tests: $(( $(date +%s) - t0 )) s"
timeout 300 python3 benchmarks/gpu_moe_bench.py --json $OUT/bench_moe.json ${MOE_ARGS:-} 2>&1 | tail -10
echo "total: $(( $(date +%s) - t0 )) s"
