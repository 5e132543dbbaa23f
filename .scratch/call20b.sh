#!/usr/bin/env bash
set -uo pipefail
cd "$(dirname "$0")/.."
cmake -S native -B build-gpu -G Ninja -DTENSOR_OPS_CUDA=ON -DTENSOR_OPS_TESTS=OFF -DCMAKE_CUDA_ARCHITECTURES=90a > $OUT/cmake.log 2>&1 && cmake --build build-gpu > $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }
export INFERENCE_PIO_LIB=$PWD/build-gpu/libtensor_ops.so PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD/core:$PWD/plugins/qwen3_coder_30b
python3 .scratch/moe_prof.py 12 2>&1 | tail -14
echo "--- PDL"
INFERENCE_PIO_CUDA_PDL=1 python3 .scratch/moe_prof.py 12 2>&1 | head -1
