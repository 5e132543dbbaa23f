#!/usr/bin/env bash
# GPU machine, one call: build with CUDA, register the Qwen3 plugins' entry points without pip
# (a .dist-info on PYTHONPATH: the GPU machine has no package index), then run the real command
# line: `inference-pio generate --device cuda` (greedy, --json) and `inference-pio bench --device
# cuda` on synthetic:qwen3-0.6b, and the same greedy generate on the CPU for comparison.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
t0=$(date +%s)
cmake -S native -B build-gpu -G Ninja -DTENSOR_OPS_CUDA=ON -DTENSOR_OPS_TESTS=OFF \
  -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-90a} > "$OUT/cmake.log" 2>&1 \
  && cmake --build build-gpu > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
SITE=$(mktemp -d)
for d in qwen3_0_6b qwen3_4b_instruct_2507; do
  info="$SITE/inference_pio_${d}-0.1.0.dist-info"; mkdir -p "$info"
  printf 'Metadata-Version: 2.1\nName: inference-pio-%s\nVersion: 0.1.0\n' "${d//_/-}" > "$info/METADATA"
  printf '[inference_pio]\n%s = inference_pio_%s.plugin\n' "$d" "$d" > "$info/entry_points.txt"
done
export INFERENCE_PIO_LIB=$PWD/build-gpu/libtensor_ops.so INFERENCE_PIO_CACHE=/tmp/pio-cache
export PYTHONPATH=$PWD/core:$PWD/plugins/qwen3_0_6b:$PWD/plugins/qwen3_4b_instruct_2507:$SITE
c=$(python3 -c "import glob,sys;p=[g for s in sys.path for g in glob.glob(s+'/nvidia/cu*/lib/libcublas.so.*')+glob.glob(s+'/nvidia/cublas/lib/libcublas.so.*')];print(p[0] if p else '')" 2>/dev/null)
[ -n "$c" ] && export INFERENCE_PIO_CUBLAS=$c
pio() { python3 -m inference_pio "$@"; }
pio plugins
pio generate --model synthetic:qwen3-0.6b --device cuda --prompt "The GPU says" --temperature 0 \
  --max-new-tokens 64 --json | tee "$OUT/gen_cuda.json"
pio generate --model synthetic:qwen3-0.6b --device cpu --prompt "The GPU says" --temperature 0 \
  --max-new-tokens 64 --json | tee "$OUT/gen_cpu.json"
python3 - "$OUT/gen_cuda.json" "$OUT/gen_cpu.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
same = next((i for i, (x, y) in enumerate(zip(a["token_ids"], b["token_ids"])) if x != y), None)
print("cuda vs cpu greedy tokens:", "identical" if same is None else f"first difference at {same}")
PY
pio bench --model synthetic:qwen3-0.6b --device cuda --prompt-tokens 2048 --new-tokens 128 --bandwidth --json | tee "$OUT/bench_cuda.json"
echo "total: $(( $(date +%s) - t0 )) s"
